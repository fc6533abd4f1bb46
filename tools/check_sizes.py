"""Fail when a module or a function outgrows the sizes STYLE.md sets.

A module may have at most ``MAX_MODULE_LINES`` lines, a function (or method) at most
``MAX_FUNCTION_LINES``, counted from its ``def`` line to its last line (decorators excluded).
Existing offenders are named, each with a reason, in ``tools/size_allowlist.txt``; an entry that
no longer exceeds its limit is reported too, so the list only shrinks.

Usage: ``python tools/check_sizes.py [paths...]`` (default: ``src``). Exit status 1 on a finding.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80
ALLOWLIST = Path(__file__).with_name("size_allowlist.txt")


@dataclass(frozen=True)
class Oversize:
    """``name`` is ``path`` for a module, ``path::Qual.name`` for a function."""

    name: str
    lines: int
    limit: int


def functions(tree: ast.AST, prefix: str = "") -> Iterator[tuple[str, ast.AST]]:
    """Every function and method under ``tree`` with its qualified name."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield prefix + node.name, node
            yield from functions(node, f"{prefix}{node.name}.")
        elif isinstance(node, ast.ClassDef):
            yield from functions(node, f"{prefix}{node.name}.")
        else:
            yield from functions(node, prefix)


def oversized(path: Path, shown: str) -> Iterator[Oversize]:
    source = path.read_text(encoding="utf-8")
    total = len(source.splitlines())
    if total > MAX_MODULE_LINES:
        yield Oversize(shown, total, MAX_MODULE_LINES)
    for qualname, node in functions(ast.parse(source, filename=str(path))):
        assert isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        lines = (node.end_lineno or node.lineno) - node.lineno + 1
        if lines > MAX_FUNCTION_LINES:
            yield Oversize(f"{shown}::{qualname}", lines, MAX_FUNCTION_LINES)


def read_allowlist(path: Path) -> dict[str, str]:
    """``name -> reason`` from lines ``<name>  <reason>``; ``#`` starts a comment line."""
    allowed: dict[str, str] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, _, reason = line.partition(" ")
        if not reason.strip():
            raise SystemExit(f"{path}:{number}: '{name}' needs a reason after the name")
        allowed[name] = reason.strip()
    return allowed


def python_files(paths: list[str]) -> Iterator[Path]:
    for arg in paths:
        root = Path(arg)
        yield from sorted(root.rglob("*.py")) if root.is_dir() else [root]


def main(argv: list[str]) -> int:
    allowed = read_allowlist(ALLOWLIST) if ALLOWLIST.exists() else {}
    files = [file.as_posix() for file in python_files(argv or ["src"])]
    found = {o.name: o for file in files for o in oversized(Path(file), file)}
    problems = [
        f"{o.name}: {o.lines} lines (limit {o.limit})"
        for o in found.values()
        if o.name not in allowed
    ]
    problems += [
        f"{name}: in {ALLOWLIST.name} but within its limit now; remove the entry"
        for name in allowed
        if name.partition("::")[0] in files and name not in found
    ]
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(
            f"{len(problems)} size problem(s): split the code, or name it in {ALLOWLIST} with why",
            file=sys.stderr,
        )
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
