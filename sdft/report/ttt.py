"""`sdft ttt`'s comparison: one row per predictor (accuracy per task, their mean, seconds per instance), as a rich
table and as report.md, both naming the world the numbers come from. (Imports tables.py, which imports nothing of it.)"""

from __future__ import annotations

from rich.table import Table

from sdft.report.format import fmt
from sdft.report.markdown import markdown_table
from sdft.report.tables import scores_table

NAMES = {"zero_shot": "zero-shot", "icl": "in-context", "ttt": "TTT", "ttt_vote": "TTT + vote"}


def ttt_title(results: dict) -> str:
    return (f"sdft ttt: {results['model']}, {results['shots']}-shot, adapter per {results['scope']} "
            f"(world: {results['world']})")


def ttt_rows(results: dict) -> tuple[list[str], list[list[str]]]:
    tasks = results["tasks"]
    header = ["predictor", *tasks, *(["mean"] if len(tasks) > 1 else []), "n", "s / instance"]
    rows = []
    for name, entry in results["predictors"].items():
        scores = entry["scores"]
        mean = [fmt(entry["accuracy"])] if len(tasks) > 1 else []
        n = sum(scores[t]["n"] for t in tasks)
        seconds = results["seconds_per_instance"].get(name)
        rows.append([NAMES.get(name, name), *[fmt(scores[t]["accuracy"]) for t in tasks], *mean, str(n),
                     "-" if seconds is None else f"{seconds:.2f}"])
    return header, rows


def ttt_table(results: dict) -> Table:
    return scores_table(ttt_title(results), *ttt_rows(results))


def ttt_report(results: dict) -> str:
    header, rows = ttt_rows(results)
    lines = [f"# {ttt_title(results)}", "", markdown_table(header, rows), ""]
    fits = results.get("fits")
    if fits:
        lines.append(f"Test-time training: {fits['adapters']} adapters, {fits['samples']:.0f} training samples each "
                     f"({fits['samples_built']:.0f} built before deduplication and the cap), {fits['steps']:.0f} "
                     f"steps, loss {fits['loss_before']:.3f} -> {fits['loss_after']:.3f} on its own samples, "
                     f"{fits['seconds']:.2f} s per fit.")
    general = results.get("general")
    if general:
        skills = ", ".join(f"{k} {fmt(v)}" for k, v in general.items() if k != "mean")
        lines.append(f"General suite after every instance: mean {fmt(general['mean'])} ({skills}).")
    lines.append(f"Base weights bit-identical after all instances: {'yes' if results['base_identical'] else 'NO'}.")
    lines.append("Seconds are wall time on the machine that ran it (shared machines vary); ttt read from ttt_vote's "
                 "first view counts the fit and its share of the views' generation.")
    if results["world"] == "embedded":
        lines.append("World: embedded: a tiny model on CPU; its numbers show the mechanism, not a real model's.")
    return "\n".join(lines) + "\n"
