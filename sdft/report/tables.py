"""The rich tables the commands print (train, eval, check, eval --prior-tasks, sequence, tasks). Every table of
scores says which world its numbers come from; numbers read as in report.md (format.py)."""

from __future__ import annotations

from rich.table import Table

from sdft.report.format import fmt, fmt_delta
from sdft.report.sequence_rows import COMPARISON_HEADER, matrix_rows, method_comparison_rows, seeds_label
from sdft.tasks.spec import TaskSpec


def scores_table(title: str, header: tuple | list, rows: list[list[str]]) -> Table:
    """A table with the row names left-aligned and the numbers right-aligned."""
    table = Table(title=title)
    for i, column in enumerate(header):
        table.add_column(column, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    return table


def eval_table(results: dict) -> Table:
    title = f"sdft eval: {results['model']} ({results['prompt']} prompt, {results['split']} split, world: {results['world']})"
    rows = [[task, fmt(s["accuracy"]), fmt(s["unseen_accuracy"]), str(s["n"]), str(s["hit_cap"])]
            for task, s in results["scores"].items()]
    table = scores_table(title, ("task", "accuracy", "unseen", "n", "hit cap"), rows)
    _add_general(table, results["general"], columns=5)
    return table


def check_table(results: dict) -> Table:
    title = f"sdft check: {results['model']} ({results['split']} split, world: {results['world']})"
    rows = [[task, fmt(s["student"]), fmt(s["teacher"]), fmt(s["unseen_student"]), fmt(s["unseen_teacher"]),
             fmt(s.get("oracle")), str(s["n"])] for task, s in results["scores"].items()]
    columns = ("task", "student", "teacher", "unseen student", "unseen teacher", "oracle", "n")
    table = scores_table(title, columns, rows)
    _add_general(table, results["general"], columns=len(columns))
    return table


def _add_general(table: Table, general: dict, columns: int) -> None:
    skills = {k: v for k, v in general.items() if k != "mean"}
    if not skills:
        return
    table.add_section()
    for skill, accuracy in skills.items():
        table.add_row(f"[dim]general:[/] {skill}", fmt(accuracy), *[""] * (columns - 2))
    table.add_row("[bold]general mean", fmt(general["mean"]), *[""] * (columns - 2))


def tasks_table(specs: list[TaskSpec]) -> Table:
    table = Table(title="sdft tasks")
    for column in ("task", "kind", "source", "version", "scorer", "splits"):
        table.add_column(column)
    for spec in specs:
        sizes = ", ".join(f"{name} {n}" for name, n in spec.split_sizes().items())
        table.add_row(spec.name, spec.kind, spec.source, spec.version, spec.scorer, sizes)
    return table


def train_table(results: dict) -> Table:
    teacher = f", teacher {results['teacher']}" if results["teacher"] else ""
    title = f"sdft train: {results['method']}{teacher} on {results['task']} ({results['steps']} steps, world: {results['world']})"
    before, after = results["before"], results["after"]
    task = results["task"]
    rows = [(f"{task} accuracy", before["scores"][task]["accuracy"], after["scores"][task]["accuracy"]),
            (f"{task} unseen", before["scores"][task]["unseen_accuracy"], after["scores"][task]["unseen_accuracy"])]
    rows += [(f"general: {k}", v, after["general"][k]) for k, v in before["general"].items() if k != "mean"]
    rows.append(("general mean", before["general"]["mean"], after["general"]["mean"]))
    cells = [[name, fmt(b), fmt(a), fmt_delta(None if a is None or b is None else a - b)] for name, b, a in rows]
    return scores_table(title, ("measure", "before", "after", "delta"), cells)


def prior_table(results: dict) -> Table:
    stages = " -> ".join(s["task"] for s in results["lineage"]["stages"])
    title = f"what survived: {results['model']} (trained {stages}; world: {results['world']})"
    rows = [[row["name"], fmt(row["base"]), fmt(row["now"]), fmt_delta(row["delta"])] for row in results["rows"]]
    return scores_table(title, ("task", "base", "now", "delta"), rows)


def comparison_table(results: dict) -> Table:
    """`sdft sequence`: one row per method (its metrics, ± over seeds)."""
    title = f"sdft sequence: {' -> '.join(results['tasks'])} (world: {results['world']}, {seeds_label(results)})"
    return scores_table(title, COMPARISON_HEADER, method_comparison_rows(results))


def matrix_table(results: dict, method: str) -> Table:
    """`sdft sequence`: one method's accuracy matrix, one row per stage."""
    title = f"{method}: accuracy after each stage (world: {results['world']}, {seeds_label(results)})"
    return scores_table(title, ["stage", *results["tasks"], "general"], matrix_rows(results, method))
