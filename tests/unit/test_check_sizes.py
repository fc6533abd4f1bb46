"""tools/check_sizes.py finds long modules and functions and keeps its allow-list honest."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

TOOL = Path(__file__).resolve().parents[2] / "tools" / "check_sizes.py"


@pytest.fixture
def sizes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_sizes", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "check_sizes", module)  # dataclasses look it up
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "ALLOWLIST", tmp_path / "allow.txt")
    monkeypatch.chdir(tmp_path)
    return module


def function(name: str, body_lines: int, indent: str = "") -> str:
    body = "".join(f"{indent}    x = {i}\n" for i in range(body_lines))
    return f"{indent}def {name}() -> None:\n{body}"


def test_long_functions_methods_and_modules_are_found(sizes: ModuleType) -> None:
    Path("m.py").write_text(
        function("short", 79)  # 80 lines with its def: at the limit
        + function("long", 80)
        + "class C:\n"
        + function("method", 90, indent="    ")
        + "\n" * 500
    )
    found = {(o.name, o.lines) for o in sizes.oversized(Path("m.py"), "m.py")}
    assert found == {("m.py", 753), ("m.py::long", 81), ("m.py::C.method", 91)}
    assert sizes.main(["m.py"]) == 1


def test_allow_list_entries_pass_and_stale_ones_fail(
    sizes: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    Path("m.py").write_text(function("long", 100) + function("fine", 3))
    sizes.ALLOWLIST.write_text("# comment\nm.py::long  parser of a fixed table\n")
    assert sizes.main(["m.py"]) == 0
    sizes.ALLOWLIST.write_text("m.py::long  parser\nm.py::fine  no longer long\n")
    assert sizes.main(["m.py"]) == 1
    assert "m.py::fine: in allow.txt but within its limit now" in capsys.readouterr().err
    sizes.ALLOWLIST.write_text("m.py::long\n")
    with pytest.raises(SystemExit, match="needs a reason"):
        sizes.main(["m.py"])
