"""The docs cite what exists: every test they name and every committed file they quote.

A renamed test or a moved results file otherwise leaves a README or docs/ page pointing at nothing.
Paths written after ``--output`` are files a command would create (e.g. GPU measurements still to
be taken), not citations, and are skipped.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TEST_REF = re.compile(r"tests/(test_\w+\.py)::(\w+)")
FILE_REF = re.compile(
    r"(?<!--output )\b((?:results|benchmarks|configs)/[\w./+-]+\.(?:json|csv|md|png|txt|yaml|py|sh))"
)


def _refs(pattern: re.Pattern[str]) -> list[tuple[str, tuple[str, ...]]]:
    return [(doc.name, m.groups()) for doc in DOCS for m in pattern.finditer(doc.read_text(encoding="utf-8"))]


def test_the_docs_cite_tests_and_files_at_all():
    assert len(_refs(TEST_REF)) > 20 and len(_refs(FILE_REF)) > 20  # the patterns still match the docs


def _cases(pattern: re.Pattern[str]) -> list:
    return [pytest.param(doc, ref, id=f"{doc}:{'::'.join(ref)}") for doc, ref in sorted(set(_refs(pattern)))]


@pytest.mark.parametrize(("doc", "ref"), _cases(TEST_REF))
def test_every_test_the_docs_name_exists(doc, ref):
    file, name = ref
    source = ROOT / "tests" / file
    assert source.is_file(), f"{doc} names tests/{file}, which does not exist"
    assert re.search(rf"^def {name}\(", source.read_text(encoding="utf-8"), re.M), (
        f"{doc} names tests/{file}::{name}, which is not defined there"
    )


@pytest.mark.parametrize(("doc", "ref"), _cases(FILE_REF))
def test_every_file_the_docs_quote_exists(doc, ref):
    (path,) = ref
    assert (ROOT / path).exists(), f"{doc} quotes {path}, which is not in the repository"
