"""How every number in sdft's tables, reports and plots reads: a score with its 95% half-width, a signed
change, and the decoding the scores came from. One place, so a table and a report never disagree."""

from __future__ import annotations


def fmt(value: float | None, ci: float | None = None) -> str:
    """'0.512 ± 0.031' with a 95% half-width, '0.512' without one, '-' for a missing value."""
    if value is None:
        return "-"
    return f"{value:.3f}" if ci is None else f"{value:.3f} ± {ci:.3f}"


def fmt_delta(value: float | None) -> str:
    """A change with its sign always shown ('+0.120', '-0.050'); '-' when either side is missing."""
    return "-" if value is None else f"{value:+.3f}"


def decoding_phrase(decoding: dict) -> str:
    """'greedy decoding', or 'sampling at temperature 0.7, top-p 0.95, 4 samples per prompt', from the
    {"temperature", "top_p", "samples", ...} a results.json records."""
    if decoding["temperature"] == 0:
        return "greedy decoding"
    n = decoding["samples"]
    return (f"sampling at temperature {decoding['temperature']:g}, top-p {decoding['top_p']:g}, "
            f"{n} sample{'' if n == 1 else 's'} per prompt")
