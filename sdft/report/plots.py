"""The PNG plots of `sdft sequence`, written next to its report.md: accuracy over stages, one accuracy matrix
per method, forgetting per task. matplotlib's Agg backend, imported on first use; each file written atomically
like every run file; every title names the world its numbers come from.

Imports only downward (format.py, sequence_rows.py): the report writer imports this module, never the reverse."""

from __future__ import annotations

import io
import math
from pathlib import Path
from statistics import mean

from sdft.files import atomic_write_bytes
from sdft.report.format import fmt
from sdft.report.sequence_rows import (cis_like, forgetting_bars, is_flat, normalised_curve, safe_file_name,
                                       seeds_label, stage_labels)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: Path) -> Path:
    """The figure as a PNG at path, through the one atomic writer (same file mode rule as every run file)."""
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def write_plots(results: dict, run_dir: Path) -> list[Path]:
    plt = _pyplot()
    paths = [_save(plt, _accuracy_figure(plt, results), run_dir / "accuracy_over_stages.png")]
    for method in results["methods"]:
        paths.append(_save(plt, _matrix_figure(plt, results, method), run_dir / f"matrix_{safe_file_name(method)}.png"))
    if len(results["tasks"]) > 1:
        paths.append(_save(plt, _forgetting_figure(plt, results), run_dir / "forgetting.png"))
    return paths


def _colours(plt, results: dict) -> dict[str, tuple]:
    cmap = plt.get_cmap("tab10")
    return {method: cmap(i % 10) for i, method in enumerate(results["methods"])}


def _accuracy_figure(plt, results: dict):
    tasks, colours = results["tasks"], _colours(plt, results)
    general = _has_general(results)
    panels = len(tasks) + general
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 4.2), squeeze=False)
    for j in range(len(tasks)):
        _accuracy_panel(axes[0][j], results, j, colours)
    if general:
        _general_panel(axes[0][-1], results, colours)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"Accuracy on each task after each stage ({results['world']} world, {seeds_label(results)})\n"
                 "0 = base model, 1 = best accuracy any method reached on that task"
                 + ("; the general suite in raw accuracy" if general else ""), fontsize=11)
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
        ci = normalised_curve([c[j] for c in cis_like(m, "matrix_ci95", m["matrix"])], 0.0, best - base)
        yerr = None if all(c is None for c in ci) else [c or 0.0 for c in ci]
        x = [s + 0.05 * (k - (len(methods) - 1) / 2) for s in stages]
        y = [math.nan if v is None else v for v in y]
        ax.errorbar(x, y, yerr=yerr, marker="o", capsize=3, label=name, color=colours[name])
    ax.axvline(j + 1, color="grey", linestyle="--", linewidth=1)
    ax.text(j + 1, 0.03, f"trained {tasks[j]} ", transform=ax.get_xaxis_transform(), color="grey", fontsize=8,
            rotation=90, ha="right", va="bottom")
    if raw:
        why = "base model not measured" if not bases else f"no method beat the base model's {fmt(mean(bases))}"
        ax.set_ylim(-0.05, 1.05)
        ax.set_ylabel("raw accuracy")
        ax.set_title(f"{tasks[j]}\n(raw accuracy: {why})", fontsize=10)
    else:
        for level in (0, 1):
            ax.axhline(level, color="lightgrey", linestyle=":", linewidth=1, zorder=0)
        ax.set_ylabel("normalised accuracy")
        ax.set_title(tasks[j], fontsize=10)
    ax.set_xticks(list(stages), stage_labels(tasks), rotation=30, ha="right", fontsize=8)


def _has_general(results: dict) -> bool:
    return any(v is not None for m in results["methods"].values() for v in (m.get("general") or []))


def _general_panel(ax, results: dict, colours: dict) -> None:
    """The general suite's mean accuracy after every stage, raw (the forgetting measure: 0 is meaningful here)."""
    tasks, methods = results["tasks"], results["methods"]
    stages = range(len(tasks) + 1)
    for k, (name, m) in enumerate(methods.items()):
        values = m.get("general") or [None] * len(stages)
        ci = cis_like(m, "general_ci95", values)
        yerr = None if all(c is None for c in ci) else [c or 0.0 for c in ci]
        x = [s + 0.05 * (k - (len(methods) - 1) / 2) for s in stages]
        ax.errorbar(x, [math.nan if v is None else v for v in values], yerr=yerr, marker="o", capsize=3, label=name,
                    color=colours[name])
    ax.set_ylim(-0.05, 1.05)
    ax.set_ylabel("raw accuracy")
    suite = ", ".join(results.get("general_suite", []))
    ax.set_title("general suite (mean)" + (f"\n{suite}" if suite else ""), fontsize=10)
    ax.set_xticks(list(stages), stage_labels(tasks), rotation=30, ha="right", fontsize=8)


def _matrix_figure(plt, results: dict, method: str):
    from matplotlib.patches import Rectangle

    tasks, m = results["tasks"], results["methods"][method]
    cis = cis_like(m, "matrix_ci95", m["matrix"])
    fig, ax = plt.subplots(figsize=(1.5 * len(tasks) + 3.0, 0.65 * (len(tasks) + 1) + 1.8))
    cells = [[math.nan if v is None else v for v in row] for row in m["matrix"]]
    image = ax.imshow(cells, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    for i, (row, row_ci) in enumerate(zip(m["matrix"], cis)):
        for j, (value, ci) in enumerate(zip(row, row_ci)):
            text = fmt(value, ci).replace(" ± ", "\n± ")  # two lines fit a cell
            dark = value is not None and value < 0.6
            ax.text(j, i, text, ha="center", va="center", fontsize=9, color="white" if dark else "black")
        if 0 < i <= len(tasks):
            ax.add_patch(Rectangle((i - 1.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set_yticks(range(len(tasks) + 1), stage_labels(tasks))
    ax.set_xlabel("task")
    fig.colorbar(image, ax=ax, label="accuracy")
    ax.set_title(f"{method}: accuracy matrix ({results['world']} world, {seeds_label(results)})\n"
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
        ax.bar_label(bars, labels=[fmt(v) for v in values], fontsize=8, padding=2)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set_ylabel("forgetting $F_j$ (best - final accuracy)")
    ax.legend(fontsize=8)
    ax.set_title(f"Forgetting per task, higher = more forgotten\n({results['world']} world, {seeds_label(results)})",
                 fontsize=10)
    fig.tight_layout()
    return fig
