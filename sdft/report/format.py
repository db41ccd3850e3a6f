"""How every number in sdft's tables, reports and plots reads: a score with its 95% half-width and a signed
change. One place, so a table and a report never disagree."""

from __future__ import annotations


def fmt(value: float | None, ci: float | None = None) -> str:
    """'0.512 ± 0.031' with a 95% half-width, '0.512' without one, '-' for a missing value."""
    if value is None:
        return "-"
    return f"{value:.3f}" if ci is None else f"{value:.3f} ± {ci:.3f}"


def fmt_delta(value: float | None) -> str:
    """A change with its sign always shown ('+0.120', '-0.050'); '-' when either side is missing."""
    return "-" if value is None else f"{value:+.3f}"

