"""report.md of `sdft sequence`, with its PNG plots beside it, built from the results dict alone.

Every section says which world its numbers come from: the embedded toy world's are a tiny model's on CPU."""

from __future__ import annotations

from pathlib import Path

from sdft.files import atomic_write_text
from sdft.report.format import fmt, fmt_delta
from sdft.report.markdown import markdown_table
from sdft.report.plots import write_plots
from sdft.report.sequence_rows import (COMPARISON_HEADER, METRICS, forgetting_bars, matrix_rows,
                                       method_comparison_rows, safe_file_name, seeds_label, world_sentence)


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


def sequence_report_markdown(results: dict, images: list[str]) -> str:
    """The whole report.md; `images` are the PNG file names written beside it (each is linked if present)."""
    tasks, methods = results["tasks"], list(results["methods"])
    lines = [f"# sdft sequence: {' -> '.join(tasks)}", "", world_sentence(results["world"]), "",
             f"Tasks in training order: {_task_list(results)}. Seeds: {', '.join(map(str, results['seeds']))} "
             f"({seeds_label(results)}). Methods: {', '.join(methods)}.", "",
             f"## Comparison ({results['world']} world)", "",
             markdown_table(COMPARISON_HEADER, method_comparison_rows(results)),
             "", "### What the numbers mean", "", *_definitions_md(results), ""]
    if "accuracy_over_stages.png" in images:
        lines += ["## Accuracy over stages", "", "![Accuracy on each task after each stage, normalised: 0 = base "
                  f"model, 1 = best any method reached ({results['world']} world)](accuracy_over_stages.png)", ""]
    lines += ["## Accuracy matrices", ""]
    for method in methods:
        lines += [f"### {method}", "", markdown_table(["stage", *tasks, "general"], matrix_rows(results, method)), ""]
        if (image := f"matrix_{safe_file_name(method)}.png") in images:
            lines += [f"![{method} accuracy matrix ({results['world']} world)]({image})", ""]
    if "knowledge_table" in results:
        lines += _knowledge_md(results)
    if len(tasks) > 1:
        lines += _forgetting_md(results, images)
    if (elapsed := results.get("elapsed_seconds")) is not None:
        lines += [f"Elapsed: {elapsed:.0f} s ({elapsed / 60:.1f} min)."]
    return "\n".join(lines).rstrip() + "\n"


def _knowledge_md(results: dict) -> list[str]:
    """The paper's knowledge-injection table: strict / lenient / ood accuracy after the knowledge stage, and the
    general suite's change over that stage (sdft/knowledge_table.py)."""
    table = results["knowledge_table"]
    rows = [[name, *(fmt(k[key], k[f"{key}_ci95"]) for key in ("strict", "lenient", "ood")),
             _delta_ci(k["general_delta"], k["general_delta_ci95"])] for name, k in table.items()]
    return [f"## Knowledge injection ({results['world']} world)", "",
            "After the knowledge stage: strict = exact answer, lenient = answer contained, ood = the indirect questions "
            "(knowledge_ood); base = before training, oracle = the base model with the article in its prompt.", "",
            markdown_table(["", "strict", "lenient", "ood", "general delta"], rows), ""]


def _delta_ci(value: float | None, ci: float | None) -> str:
    return fmt_delta(value) if ci is None or value is None else f"{fmt_delta(value)} ± {ci:.3f}"


def _forgetting_md(results: dict, images: list[str]) -> list[str]:
    tasks, methods = results["tasks"], list(results["methods"])
    bars = {method: forgetting_bars(results, method) for method in methods}
    rows = [[method, *map(fmt, *bars[method])] for method in methods]
    lines = ["## Forgetting per task", "", "F_j = best accuracy on task j from the stage that trained it up to "
             "stage T-1, minus its final accuracy (higher = more forgotten).", "",
             markdown_table(["method", *tasks[:-1]], rows), ""]
    if "forgetting.png" in images:
        lines += [f"![Forgetting per task ({results['world']} world)](forgetting.png)", ""]
    return lines


def write_sequence_report(results: dict, run_dir: str | Path) -> list[Path]:
    """report.md and its PNG plots in run_dir, each written atomically; returns the written paths."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    images = write_plots(results, run_dir)
    report = run_dir / "report.md"
    atomic_write_text(report, sequence_report_markdown(results, [image.name for image in images]))
    return [report, *images]
