"""The one markdown table of sdft's reports (report.md of `sdft sequence` and of `sdft eval --prior-tasks`)."""

from __future__ import annotations


def markdown_table(header: tuple | list, rows: list[list[str]]) -> str:
    """A GitHub markdown table: the first column (names) left-aligned, the others (numbers) right-aligned."""
    lines = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])
