"""STYLE.md's size rules, checked: one concept per module (under ~500 lines), functions
under 60 lines, or a docstring that says why one is longer (it mentions "60 lines")."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60


def test_modules_stay_under_500_lines() -> None:
    long = {
        str(p.relative_to(ROOT)): n
        for p in sorted((ROOT / "junction").rglob("*.py"))
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}


def test_long_functions_say_why() -> None:
    unexplained = []
    for path in sorted((ROOT / "junction").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            if length > MAX_FUNCTION_LINES and "60 lines" not in (ast.get_docstring(node) or ""):
                unexplained.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {length}")
    assert unexplained == []
