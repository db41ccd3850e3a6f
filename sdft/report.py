"""The human side of `sdft sequence`: rich tables, report.md and PNG plots, built from the results dict alone.

Every output says which world its numbers come from: the embedded toy world's numbers are a tiny model's on CPU.
The plots are in plots.py.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from rich.table import Table

from sdft.metrics import forgetting_per_task, mean_ci95
from sdft.runs import atomic_write_text

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


def fmt(value: float | None, ci: float | None = None) -> str:
    """'0.512 ± 0.031' with a 95% half-width, '0.512' without one, '-' for a missing value."""
    if value is None:
        return "-"
    return f"{value:.3f}" if ci is None else f"{value:.3f} ± {ci:.3f}"


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


def cis_like(method: dict, key: str, like: list) -> list:
    """The CI list stored under key, or Nones shaped like `like` (one seed, or an older results.json)."""
    stored = method.get(key)
    if stored is not None:
        return stored
    return [[None] * len(x) if isinstance(x, list) else None for x in like]


def comparison_rows(results: dict) -> list[list[str]]:
    rows = []
    for name, m in results["methods"].items():
        ci = m.get("metrics_ci95") or {}
        general, general_ci = m.get("general") or [None], cis_like(m, "general_ci95", m.get("general") or [None])
        cells = [fmt(m["metrics"].get(key), ci.get(key)) for key, _ in METRICS]
        rows.append([name, *cells, fmt(general[-1], general_ci[-1])])
    return rows


def matrix_rows(results: dict, method: str) -> list[list[str]]:
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


def _rich(title: str, header: tuple | list, rows: list[list[str]]) -> Table:
    table = Table(title=title)
    for i, column in enumerate(header):
        table.add_column(column, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    return table


def comparison_table(results: dict) -> Table:
    title = f"sdft sequence: {' -> '.join(results['tasks'])} (world: {results['world']}, {seeds_label(results)})"
    return _rich(title, COMPARISON_HEADER, comparison_rows(results))


def matrix_table(results: dict, method: str) -> Table:
    title = f"{method}: accuracy after each stage (world: {results['world']}, {seeds_label(results)})"
    return _rich(title, ["stage", *results["tasks"], "general"], matrix_rows(results, method))


def _markdown(header: tuple | list, rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _task_list(results: dict) -> str:
    versions = results.get("task_versions") or {}
    return ", ".join(f"{task} (v{versions[task]})" if task in versions else task for task in results["tasks"])


def _definitions_md(results: dict) -> list[str]:
    labels = dict(METRICS)
    lines = []
    for key, text in results.get("definitions", {}).items():
        formula, _, meaning = text.partition(": ")
        lines.append(f"- **{labels.get(key, key)}**: `{formula}`" + (f": {meaning}" if meaning else ""))
    tasks, suite = len(results["tasks"]), ", ".join(results.get("general_suite", [])) or "the general suite"
    lines += ["", f"R[i][j] is the accuracy on task j after stage i (row 0 = the base model). All accuracies are in "
              f"[0, 1]; BWT, FWT, forgetting and general delta are unnormalised differences of them. ACC averages "
              f"over all T = {tasks} tasks; BWT and forgetting over the T-1 = {tasks - 1} tasks before the last, "
              f"FWT over the T-1 tasks after the first. General = mean accuracy on the general suite ({suite}). "
              "± is the half-width of the 95% confidence interval over seeds (Student t); none with one seed."]
    return lines


def report_markdown(results: dict, images: list[str]) -> str:
    tasks, methods = results["tasks"], list(results["methods"])
    lines = [f"# sdft sequence: {' -> '.join(tasks)}", "", world_sentence(results["world"]), "",
             f"Tasks in training order: {_task_list(results)}. Seeds: {', '.join(map(str, results['seeds']))} "
             f"({seeds_label(results)}). Methods: {', '.join(methods)}.", "",
             f"## Comparison ({results['world']} world)", "", _markdown(COMPARISON_HEADER, comparison_rows(results)),
             "", "### What the numbers mean", "", *_definitions_md(results), ""]
    if "accuracy_over_stages.png" in images:
        lines += ["## Accuracy over stages", "", "![Accuracy on each task after each stage, normalised: 0 = base "
                  f"model, 1 = best any method reached ({results['world']} world)](accuracy_over_stages.png)", ""]
    lines += ["## Accuracy matrices", ""]
    for method in methods:
        lines += [f"### {method}", "", _markdown(["stage", *tasks, "general"], matrix_rows(results, method)), ""]
        if (image := f"matrix_{safe_file_name(method)}.png") in images:
            lines += [f"![{method} accuracy matrix ({results['world']} world)]({image})", ""]
    if len(tasks) > 1:
        bars = {method: forgetting_bars(results, method) for method in methods}
        rows = [[method, *map(fmt, *bars[method])] for method in methods]
        lines += ["## Forgetting per task", "", "F_j = best accuracy on task j from the stage that trained it up to "
                  "stage T-1, minus its final accuracy (higher = more forgotten).", "",
                  _markdown(["method", *tasks[:-1]], rows), ""]
        if "forgetting.png" in images:
            lines += [f"![Forgetting per task ({results['world']} world)](forgetting.png)", ""]
    if (elapsed := results.get("elapsed_seconds")) is not None:
        lines += [f"Elapsed: {elapsed:.0f} s ({elapsed / 60:.1f} min)."]
    return "\n".join(lines).rstrip() + "\n"


def safe_file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def write_report(results: dict, run_dir: str | Path) -> list[Path]:
    """report.md and its PNG plots in run_dir, each written atomically; returns the written paths."""
    from sdft.plots import write_plots  # plots.py builds on the helpers above

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    images = write_plots(results, run_dir)
    report = run_dir / "report.md"
    atomic_write_text(report, report_markdown(results, [image.name for image in images]))
    return [report, *images]
