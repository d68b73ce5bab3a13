"""How the package is put together: one owner per file layout, no import cycles."""

from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "ecalf"
RUN_DIRECTORY_FILES = ("config.yaml", "metrics.json", "model.safetensors", "train.log")


def _string_literals(tree: ast.AST) -> list[tuple[int, str]]:
    """Every string constant that is not documentation (a string statement: a docstring, or an
    attribute's docstring), f-string parts included, with its line."""
    documentation = {
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    }
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in documentation
    ]


def _names(name: str, text: str) -> bool:
    """Whether ``text`` names the file ``name`` (not a longer one: metrics.json is not metrics.jsonl)."""
    return re.search(re.escape(name) + r"(?![\w.])", text) is not None


def test_run_directory_file_names_are_spelled_in_one_module():
    """Only ecalf.run_dir names the files of a run directory; every other module asks it."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        if path.name == "run_dir.py":
            continue
        for line, text in _string_literals(ast.parse(path.read_text(encoding="utf-8"))):
            found += [f"{path.relative_to(SRC)}:{line}: {n}" for n in RUN_DIRECTORY_FILES if _names(n, text)]
    assert not found, "run directory file names spelled outside ecalf/run_dir.py:\n" + "\n".join(found)
    owner = _string_literals(ast.parse((SRC / "run_dir.py").read_text(encoding="utf-8")))
    assert {text for _, text in owner} >= set(RUN_DIRECTORY_FILES)
