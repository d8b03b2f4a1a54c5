"""The layout's rules, checked over the source: imports run one way, functions stay short.

``pgtraffic`` (the application) may import ``replay`` and ``capture``; ``replay`` may
import ``capture``; ``capture`` imports neither. No function body is longer than 80
lines, tests included.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = {"capture": {"replay", "pgtraffic"}, "replay": {"pgtraffic"}}
"""Package -> the packages it must never import."""
MAX_BODY_LINES = 80


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _imported(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_imports_run_one_way(package: str) -> None:
    offenders = []
    for path in _modules(package):
        wrong = _imported(ast.parse(path.read_text())) & LAYERS[package]
        if wrong:
            offenders.append(f"{path.relative_to(ROOT)} imports {sorted(wrong)}")
    assert not offenders, offenders


def _long_functions(path: Path, root: Path = ROOT) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            end = node.end_lineno or node.lineno
            length = end - node.body[0].lineno + 1
            if length > MAX_BODY_LINES:
                out.append(f"{path.relative_to(root)}:{node.lineno} {node.name} ({length} lines)")
    return out


def test_no_function_body_over_80_lines() -> None:
    found = [
        entry
        for package in ("capture", "replay", "pgtraffic", "scenarios", "tests", "bench")
        for path in _modules(package)
        for entry in _long_functions(path)
    ]
    assert not found, found


def test_the_checks_see_the_tree(tmp_path: Path) -> None:
    """The rules above would pass on an empty tree: make sure they read the real one."""
    assert len(_modules("capture")) > 10
    assert "capture" in _imported(ast.parse((ROOT / "replay" / "engine.py").read_text()))
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n" + "    x = 1\n" * 81)
    assert _long_functions(sample, tmp_path) == ["sample.py:1 f (81 lines)"]
    sample.write_text("def f():\n" + "    x = 1\n" * 80)
    assert _long_functions(sample, tmp_path) == []
