"""What the report, the tables and the plots of `sdft sequence` read from its results dict: labels, rows of
formatted cells, confidence half-widths, forgetting bars, normalised curves.

It imports nothing of the report package but format.py, so the report writer (sequence.py), the rich tables
(tables.py) and the plots (plots.py) all build on it without importing each other."""

from __future__ import annotations

import math
import re

from sdft.metrics import forgetting_per_task, mean_ci95
from sdft.report.format import fmt

WORLD_SENTENCES = {
    "embedded": "Numbers from the embedded toy world: a tiny model on CPU, not real models.",
    "paper": "Numbers from the paper world: real models on the paper's datasets.",
    "custom": "Numbers from a custom world: your model on your own task files.",
}
METRICS = (("acc", "ACC"), ("bwt", "BWT"), ("fwt", "FWT"), ("forgetting", "forgetting"),
           ("general_delta", "general delta"))
COMPARISON_HEADER = ("method", *(label for _, label in METRICS), "final general")


def world_sentence(world: str) -> str:
    return WORLD_SENTENCES.get(world, f"Numbers from the {world} world.")


def is_flat(base: float, best: float) -> bool:
    """True when no method beat the base model on a task: nothing to normalise by."""
    return math.isclose(best, base, abs_tol=1e-9)


def normalised_curve(values: list[float | None], base: float, best: float) -> list[float | None]:
    """Accuracies rescaled as in the paper's plots: 0 = the base model, 1 = the best any method reached.
    When best == base the values come back raw. Half-widths rescale with base=0: normalised_curve(ci, 0, best-base)."""
    if is_flat(base, best):
        return list(values)
    return [None if v is None else (v - base) / (best - base) for v in values]


def stage_labels(tasks: list[str]) -> list[str]:
    return ["base", *(f"after {task}" for task in tasks)]


def seeds_label(results: dict) -> str:
    n = len(results["seeds"])
    return f"{n} seed{'' if n == 1 else 's'}"


def safe_file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def cis_like(method: dict, key: str, like: list) -> list:
    """The CI list stored under key, or Nones shaped like `like` (one seed, or an older results.json)."""
    stored = method.get(key)
    if stored is not None:
        return stored
    return [[None] * len(x) if isinstance(x, list) else None for x in like]


def method_comparison_rows(results: dict) -> list[list[str]]:
    """One row of cells per method under COMPARISON_HEADER: its metrics and final general score, ± over seeds."""
    rows = []
    for name, m in results["methods"].items():
        ci = m.get("metrics_ci95") or {}
        general, general_ci = m.get("general") or [None], cis_like(m, "general_ci95", m.get("general") or [None])
        cells = [fmt(m["metrics"].get(key), ci.get(key)) for key, _ in METRICS]
        rows.append([name, *cells, fmt(general[-1], general_ci[-1])])
    return rows


def matrix_rows(results: dict, method: str) -> list[list[str]]:
    """One row of cells per stage (base, after each task): every task's accuracy, then the general score."""
    m = results["methods"][method]
    matrix = m["matrix"]
    general = m.get("general") or [None] * len(matrix)
    cells_ci, general_ci = cis_like(m, "matrix_ci95", matrix), cis_like(m, "general_ci95", general)
    labels = stage_labels(results["tasks"])
    return [[label, *map(fmt, row, row_ci), fmt(g, g_ci)]
            for label, row, row_ci, g, g_ci in zip(labels, matrix, cells_ci, general, general_ci)]


def forgetting_bars(results: dict, method: str) -> tuple[list[float], list[float | None]]:
    """Mean F_j over seeds and its 95% half-width, for every task before the last."""
    m = results["methods"][method]
    per_seed = [seed["matrix"] for seed in (m.get("per_seed") or {}).values()]
    if not per_seed:
        values = m.get("forgetting_per_task") or forgetting_per_task(m["matrix"])
        return list(values), [None] * len(values)
    pairs = [mean_ci95(list(column)) for column in zip(*map(forgetting_per_task, per_seed))]
    return [value for value, _ in pairs], [ci for _, ci in pairs]
