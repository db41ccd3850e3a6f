"""Rich tables for what the commands print. Every table says which world its numbers come from."""

from __future__ import annotations

from rich.table import Table

from sdft.tasks.spec import TaskSpec


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def eval_table(results: dict) -> Table:
    title = f"sdft eval: {results['model']} ({results['prompt']} prompt, {results['split']} split, world: {results['world']})"
    table = Table(title=title)
    for column in ("task", "accuracy", "unseen", "n", "hit cap"):
        table.add_column(column, justify="left" if column == "task" else "right")
    for task, s in results["scores"].items():
        table.add_row(task, _fmt(s["accuracy"]), _fmt(s["unseen_accuracy"]), str(s["n"]), str(s["hit_cap"]))
    _add_general(table, results["general"], columns=5)
    return table


def check_table(results: dict) -> Table:
    title = f"sdft check: {results['model']} ({results['split']} split, world: {results['world']})"
    table = Table(title=title)
    for column in ("task", "student", "teacher", "unseen student", "unseen teacher", "n"):
        table.add_column(column, justify="left" if column == "task" else "right")
    for task, s in results["scores"].items():
        table.add_row(task, _fmt(s["student"]), _fmt(s["teacher"]), _fmt(s["unseen_student"]),
                      _fmt(s["unseen_teacher"]), str(s["n"]))
    _add_general(table, results["general"], columns=6)
    return table


def _add_general(table: Table, general: dict, columns: int) -> None:
    skills = {k: v for k, v in general.items() if k != "mean"}
    if not skills:
        return
    table.add_section()
    for skill, accuracy in skills.items():
        table.add_row(f"[dim]general:[/] {skill}", _fmt(accuracy), *[""] * (columns - 2))
    table.add_row("[bold]general mean", _fmt(general["mean"]), *[""] * (columns - 2))


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
    table = Table(title=title)
    for column in ("measure", "before", "after", "delta"):
        table.add_column(column, justify="left" if column == "measure" else "right")
    before, after = results["before"], results["after"]
    task = results["task"]
    rows = [(f"{task} accuracy", before["scores"][task]["accuracy"], after["scores"][task]["accuracy"]),
            (f"{task} unseen", before["scores"][task]["unseen_accuracy"], after["scores"][task]["unseen_accuracy"])]
    rows += [(f"general: {k}", v, after["general"][k]) for k, v in before["general"].items() if k != "mean"]
    rows.append(("general mean", before["general"]["mean"], after["general"]["mean"]))
    for name, b, a in rows:
        delta = None if a is None or b is None else a - b
        table.add_row(name, _fmt(b), _fmt(a), "-" if delta is None else f"{delta:+.3f}")
    return table


def prior_table(results: dict) -> Table:
    stages = " -> ".join(s["task"] for s in results["lineage"]["stages"])
    table = Table(title=f"what survived: {results['model']} (trained {stages}; world: {results['world']})")
    for column in ("task", "base", "now", "delta"):
        table.add_column(column, justify="left" if column == "task" else "right")
    for row in results["rows"]:
        delta = "-" if row["delta"] is None else f"{row['delta']:+.3f}"
        table.add_row(row["name"], _fmt(row["base"]), _fmt(row["now"]), delta)
    return table
