"""The human side of `sdft sequence`: rich tables, report.md and PNG plots, built from the results dict alone.

Every output says which world its numbers come from: the embedded toy world's numbers are a tiny model's on CPU.
Plots use matplotlib's Agg backend and are written atomically (temp file, then rename), like every run file.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from pathlib import Path
from statistics import mean

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


def _seeds(results: dict) -> str:
    n = len(results["seeds"])
    return f"{n} seed{'' if n == 1 else 's'}"


def _cis(method: dict, key: str, like: list) -> list:
    """The CI list stored under key, or Nones shaped like `like` (one seed, or an older results.json)."""
    stored = method.get(key)
    if stored is not None:
        return stored
    return [[None] * len(x) if isinstance(x, list) else None for x in like]


def comparison_rows(results: dict) -> list[list[str]]:
    rows = []
    for name, m in results["methods"].items():
        ci = m.get("metrics_ci95") or {}
        general, general_ci = m.get("general") or [None], _cis(m, "general_ci95", m.get("general") or [None])
        cells = [fmt(m["metrics"].get(key), ci.get(key)) for key, _ in METRICS]
        rows.append([name, *cells, fmt(general[-1], general_ci[-1])])
    return rows


def matrix_rows(results: dict, method: str) -> list[list[str]]:
    m = results["methods"][method]
    matrix = m["matrix"]
    general = m.get("general") or [None] * len(matrix)
    cells_ci, general_ci = _cis(m, "matrix_ci95", matrix), _cis(m, "general_ci95", general)
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
    title = f"sdft sequence: {' -> '.join(results['tasks'])} (world: {results['world']}, {_seeds(results)})"
    return _rich(title, COMPARISON_HEADER, comparison_rows(results))


def matrix_table(results: dict, method: str) -> Table:
    title = f"{method}: accuracy after each stage (world: {results['world']}, {_seeds(results)})"
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
             f"({_seeds(results)}). Methods: {', '.join(methods)}.", "",
             f"## Comparison ({results['world']} world)", "", _markdown(COMPARISON_HEADER, comparison_rows(results)),
             "", "### What the numbers mean", "", *_definitions_md(results), ""]
    if "accuracy_over_stages.png" in images:
        lines += ["## Accuracy over stages", "", "![Accuracy on each task after each stage, normalised: 0 = base "
                  f"model, 1 = best any method reached ({results['world']} world)](accuracy_over_stages.png)", ""]
    lines += ["## Accuracy matrices", ""]
    for method in methods:
        lines += [f"### {method}", "", _markdown(["stage", *tasks, "general"], matrix_rows(results, method)), ""]
        if (image := f"matrix_{_safe(method)}.png") in images:
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


def write_report(results: dict, run_dir: str | Path) -> list[Path]:
    """report.md and its PNG plots in run_dir, each written atomically; returns the written paths."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    images = write_plots(results, run_dir)
    report = run_dir / "report.md"
    atomic_write_text(report, report_markdown(results, [image.name for image in images]))
    return [report, *images]


# ---------------------------------------------------------------- plots


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: Path) -> Path:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a plot should read like any other file
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        Path(tmp).unlink(missing_ok=True)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_plots(results: dict, run_dir: Path) -> list[Path]:
    plt = _pyplot()
    paths = [_save(plt, _accuracy_figure(plt, results), run_dir / "accuracy_over_stages.png")]
    for method in results["methods"]:
        paths.append(_save(plt, _matrix_figure(plt, results, method), run_dir / f"matrix_{_safe(method)}.png"))
    if len(results["tasks"]) > 1:
        paths.append(_save(plt, _forgetting_figure(plt, results), run_dir / "forgetting.png"))
    return paths


def _colours(plt, results: dict) -> dict[str, tuple]:
    cmap = plt.get_cmap("tab10")
    return {method: cmap(i % 10) for i, method in enumerate(results["methods"])}


def _accuracy_figure(plt, results: dict):
    tasks, colours = results["tasks"], _colours(plt, results)
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 4.2), squeeze=False)
    for j, ax in enumerate(axes[0]):
        _accuracy_panel(ax, results, j, colours)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"Accuracy on each task after each stage ({results['world']} world, {_seeds(results)})\n"
                 "0 = base model, 1 = best accuracy any method reached on that task", fontsize=11)
    fig.tight_layout()
    return fig


def _accuracy_panel(ax, results: dict, j: int, colours: dict) -> None:
    """Task j's accuracy after every stage, one line per method, normalised unless no method beat the base."""
    tasks, methods = results["tasks"], results["methods"]
    bases = [m["matrix"][0][j] for m in methods.values() if m["matrix"][0][j] is not None]
    base = mean(bases) if bases else None
    best = max((row[j] for m in methods.values() for row in m["matrix"] if row[j] is not None), default=0.0)
    raw = base is None or is_flat(base, best)
    base, best = (0.0, 0.0) if raw else (base, best)  # normalised_curve returns raw values when base == best
    stages = range(len(tasks) + 1)
    for k, (name, m) in enumerate(methods.items()):
        y = normalised_curve([row[j] for row in m["matrix"]], base, best)
        ci = normalised_curve([c[j] for c in _cis(m, "matrix_ci95", m["matrix"])], 0.0, best - base)
        yerr = None if all(c is None for c in ci) else [c or 0.0 for c in ci]
        x = [s + 0.05 * (k - (len(methods) - 1) / 2) for s in stages]
        y = [math.nan if v is None else v for v in y]
        ax.errorbar(x, y, yerr=yerr, marker="o", capsize=3, label=name, color=colours[name])
    ax.axvline(j + 1, color="grey", linestyle="--", linewidth=1)
    ax.text(j + 1, 0.03, f"trained {tasks[j]} ", transform=ax.get_xaxis_transform(), color="grey", fontsize=8,
            rotation=90, ha="right", va="bottom")
    if raw:
        why = "base model not measured" if not bases else f"no method beat the base model's {mean(bases):.3f}"
        ax.set_ylim(-0.05, 1.05)
        ax.set_ylabel("raw accuracy")
        ax.set_title(f"{tasks[j]}\n(raw accuracy: {why})", fontsize=10)
    else:
        for level in (0, 1):
            ax.axhline(level, color="lightgrey", linestyle=":", linewidth=1, zorder=0)
        ax.set_ylabel("normalised accuracy")
        ax.set_title(tasks[j], fontsize=10)
    ax.set_xticks(list(stages), stage_labels(tasks), rotation=30, ha="right", fontsize=8)


def _matrix_figure(plt, results: dict, method: str):
    from matplotlib.patches import Rectangle

    tasks, m = results["tasks"], results["methods"][method]
    cis = _cis(m, "matrix_ci95", m["matrix"])
    fig, ax = plt.subplots(figsize=(1.5 * len(tasks) + 3.0, 0.65 * (len(tasks) + 1) + 1.8))
    cells = [[math.nan if v is None else v for v in row] for row in m["matrix"]]
    image = ax.imshow(cells, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    for i, (row, row_ci) in enumerate(zip(m["matrix"], cis)):
        for j, (value, ci) in enumerate(zip(row, row_ci)):
            text = fmt(value) if ci is None or value is None else f"{value:.3f}\n± {ci:.3f}"
            dark = value is not None and value < 0.6
            ax.text(j, i, text, ha="center", va="center", fontsize=9, color="white" if dark else "black")
        if 0 < i <= len(tasks):
            ax.add_patch(Rectangle((i - 1.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set_yticks(range(len(tasks) + 1), stage_labels(tasks))
    ax.set_xlabel("task")
    fig.colorbar(image, ax=ax, label="accuracy")
    ax.set_title(f"{method}: accuracy matrix ({results['world']} world, {_seeds(results)})\n"
                 "red box = the stage that trained the task", fontsize=10)
    fig.tight_layout()
    return fig


def _forgetting_figure(plt, results: dict):
    tasks, methods, colours = results["tasks"][:-1], list(results["methods"]), _colours(plt, results)
    fig, ax = plt.subplots(figsize=(max(4.5, 1.6 * len(tasks) * max(1, len(methods)) / 2 + 2.5), 4.0))
    width = 0.8 / len(methods)
    for k, method in enumerate(methods):
        values, cis = forgetting_bars(results, method)
        x = [j + (k - (len(methods) - 1) / 2) * width for j in range(len(tasks))]
        yerr = None if all(c is None for c in cis) else [c or 0.0 for c in cis]
        bars = ax.bar(x, values, width, yerr=yerr, capsize=3, label=method, color=colours[method])
        ax.bar_label(bars, labels=[f"{v:.3f}" for v in values], fontsize=8, padding=2)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set_ylabel("forgetting $F_j$ (best - final accuracy)")
    ax.legend(fontsize=8)
    ax.set_title(f"Forgetting per task, higher = more forgotten\n({results['world']} world, {_seeds(results)})",
                 fontsize=10)
    fig.tight_layout()
    return fig
