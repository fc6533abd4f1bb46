"""The package layering docs/architecture.md describes, checked from the source's imports.

Imports are read with ``ast`` (nothing is imported), including those inside functions and under
``TYPE_CHECKING``: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "lmaas"


def _top(module: str) -> str | None:
    """``lmaas.store.blobs`` -> ``store``; ``lmaas.keys`` -> ``keys``; other roots -> None."""
    parts = module.split(".")
    if parts[0] != "lmaas" or len(parts) < 2:
        return None
    return parts[1]


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _package_of(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".py")


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    files = sorted(SRC.rglob("*.py"))
    assert files, SRC
    for path in files:
        package = _package_of(path)
        for module in _imports(path):
            target = _top(module)
            if target is None or target == package:
                continue
            if (SRC / target).is_dir() or (SRC / f"{target}.py").is_file():
                graph[package].add(target)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_graph_sees_the_known_dependencies() -> None:
    graph = _graph()
    # A reader that found nothing would make every check below pass.
    assert {"db", "errors"} <= graph["store"]
    assert "engine" in graph["controller"]
    assert "gateway" in graph["cli"]


def test_no_cycle_between_top_level_packages() -> None:
    assert _cycle(_graph()) is None


def test_lower_layers_do_not_import_upper_ones() -> None:
    graph = _graph()
    rules = {
        "engine": {"controller", "gateway", "cli", "state", "worker"},
        "store": {"keys", "records", "controller", "gateway", "cli", "state", "engine"},
        "db": {"store", "keys", "records", "controller", "gateway", "cli", "state"},
        "protocol": {"gateway", "controller", "engine", "worker", "store", "cli", "state"},
        "worker": {"gateway", "controller", "cli", "state", "store", "records", "keys"},
        "records": {"gateway", "controller", "cli", "state", "store"},
        "jobs": {"gateway", "controller", "cli", "state", "engine", "worker"},
        # A library the job runner calls: no jobs, serving or deployment machinery in it.
        "training": {"gateway", "jobs", "controller", "engine", "cli", "state", "worker"},
        # Training pulls in torch and peft; the gateway stays free of them.
        "gateway": {"training"},
    }
    broken = {pkg: sorted(graph[pkg] & banned) for pkg, banned in rules.items()}
    assert {pkg: bad for pkg, bad in broken.items() if bad} == {}


def test_the_gateway_never_imports_a_model_library() -> None:
    offenders = []
    for path in sorted((SRC / "gateway").rglob("*.py")):
        for module in _imports(path):
            if module.split(".")[0] in {"torch", "llama_cpp", "transformers", "peft"}:
                offenders.append(f"{path.relative_to(SRC)}: {module}")
    assert offenders == []
