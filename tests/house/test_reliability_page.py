"""docs/reliability.md, the Reliability reference page: one table row per failure mode the project handles, each
naming the test that proves it as `tests/….py::test_name` (whether those tests exist is checked with the README's
references: tests/entrypoints/test_readme.py::test_tests_the_readme_names_exist)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "reliability.md"


def table_rows(text: str) -> list[list[str]]:
    """The cells of every body row of the page's markdown table (header, separator and section rows left out)."""
    rows = []
    for line in text.splitlines():
        if not line.startswith("|") or set(line) <= set("|- "):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == "failure" or not any(cells[1:]):  # the header; a section row ("**Evaluation**")
            continue
        rows.append(cells)
    return rows


def test_every_failure_mode_names_its_test():
    rows = table_rows(PAGE.read_text())
    assert len(rows) >= 30, f"{len(rows)} rows"
    unnamed = [cells[0] for cells in rows if not re.search(r"`tests/[\w/]+(\.py)?(::\w+)?`?", cells[-1])]
    assert not unnamed, f"rows naming no test: {unnamed}"
    failures = [cells[0] for cells in rows]
    assert len(failures) == len(set(failures)), "a failure mode is listed twice"
