"""The threat model names a test for each claim: every name it gives must exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _tests_in(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    functions = (ast.FunctionDef, ast.AsyncFunctionDef)
    return {n.name for n in ast.walk(tree)
            if isinstance(n, functions) and n.name.startswith("test_")}


def references(text: str) -> list[tuple[str, str]]:
    """(file, test) pairs: `file.py::test_x` sets the file for following `::test_y`."""
    refs: list[tuple[str, str]] = []
    current = ""
    for m in re.finditer(r"`((?:\w+/)?test_\w+\.py)?::(test_\w+)`|`((?:\w+/)?test_\w+\.py)`", text):
        if m.group(3):
            current = m.group(3)
            continue
        if m.group(1):
            current = m.group(1)
        refs.append((current, m.group(2)))
    return refs


def test_every_test_the_threat_model_names_exists() -> None:
    text = (ROOT / "docs" / "threat-model.md").read_text(encoding="utf-8")
    refs = references(text)
    assert len(refs) > 50
    missing = []
    for file, name in refs:
        path = ROOT / "tests" / file
        if not path.exists() or name not in _tests_in(path):
            missing.append(f"{file}::{name}")
    assert not missing, missing
