"""The summary table mine.py prints after a run (markdown, one row per subset)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"
    return str(value)


def format_table(rows: Sequence[Mapping]) -> str:
    """Markdown table of `rows` (dicts); columns in first-seen key order, blanks where a row lacks one."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)
