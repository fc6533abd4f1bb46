"""Read a GGUF file's metadata in a child process with memory and CPU limits.

    python -m lmaas.store.probe FILE      -> one JSON object on stdout

The parser checks every size against the file, but it still reads untrusted input, so the
server runs it here: a hostile file can at worst exhaust this child, never the gateway.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

from lmaas.errors import InvalidRequestError

MEMORY_LIMIT = 512 << 20
CPU_SECONDS = 20


def _limit_child() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    resource.setrlimit(resource.RLIMIT_CPU, (CPU_SECONDS, CPU_SECONDS))


def probe_gguf(path: Path, *, timeout: float = 30.0) -> dict[str, Any]:
    """The catalog fields of a GGUF file; ``InvalidRequestError`` if it is not a valid one."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", "lmaas.store.probe", str(path)],
            capture_output=True,
            text=True,
            timeout=timeout,
            preexec_fn=_limit_child,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise InvalidRequestError("the GGUF file took too long to read", param="file") from exc
    if done.returncode != 0:
        reason = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
        message = json.loads(reason).get("error") if reason.startswith("{") else None
        raise InvalidRequestError(
            f"not a valid GGUF file: {message or 'the reader was stopped'}",
            param="file",
            code="invalid_model_file",
        )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def main(argv: list[str]) -> int:
    from lmaas.store.gguf import GGUFError, kv_bytes_per_token, read_gguf_metadata

    try:
        meta = read_gguf_metadata(Path(argv[0]))
    except (GGUFError, OSError) as exc:
        print(json.dumps({"error": str(exc)[:500]}))
        return 1
    print(
        json.dumps(
            {
                "architecture": meta.architecture,
                "parameter_count": meta.parameter_count,
                "context_length": meta.context_length,
                "quantization": meta.quantization,
                "name": meta.name,
                "has_chat_template": meta.chat_template is not None,
                "kv_bytes_per_token": kv_bytes_per_token(meta.metadata),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
