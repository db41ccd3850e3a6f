"""`sdft collm`'s outputs: one table (base alone, expert alone, Co-LLM at the chosen threshold, with its deferral
rate per task), report.md, and accuracy against deferral rate as collm.csv and collm.png (the validation sweep of
thresholds, plus the three systems on the test split). Every output names the world its numbers come from.
(Imports tables.py and plots.py, which import nothing of it.)"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from rich.table import Table

from sdft.files import atomic_write_text
from sdft.report.format import fmt
from sdft.report.markdown import markdown_table
from sdft.report.tables import scores_table

SYSTEMS = {"base": "base alone", "expert": "expert alone", "collm": "Co-LLM"}


def collm_title(results: dict) -> str:
    return (f"sdft collm: base {results['base_model']}, expert {results['expert_model']}, threshold "
            f"{results['threshold']:.3g} ({results['threshold_source']}), {results['strategy']} (world: {results['world']})")


def collm_rows(results: dict) -> tuple[list[str], list[list[str]]]:
    tasks = results["tasks"]
    header = ["system", *[f"{t}" for t in tasks], *[f"{t} unseen" for t in tasks], "general",
              *[f"deferred: {t}" for t in tasks], "deferred: general"]
    rows = []
    for key, label in SYSTEMS.items():
        entry = results["systems"][key]
        rates = entry.get("deferral_rate", {})
        general = entry.get("general") or {}
        rows.append([label, *[fmt(entry["scores"][t]["accuracy"]) for t in tasks],
                     *[fmt(entry["scores"][t]["unseen_accuracy"]) for t in tasks], fmt(general.get("mean")),
                     *[fmt(rates.get(t)) if rates else "-" for t in tasks], fmt(rates.get("general"))])
    return header, rows


def collm_table(results: dict) -> Table:
    return scores_table(collm_title(results), *collm_rows(results))


def sweep_records(results: dict) -> list[dict]:
    """The CSV's rows: each validation threshold, then the three systems on the test split; per task (and the general
    suite) its accuracy and the share of its tokens the expert wrote."""
    columns = [*results["tasks"], "general"]
    records = []
    for r in results["sweep"]:
        accuracy = {**r["validation_accuracy"], "general": r["general_mean"]}
        records.append({"split": "validation", "system": "collm", "source": r["source"], "threshold": r["threshold"],
                        "deferral_rate": r["overall_deferral_rate"],
                        **{c: accuracy.get(c) for c in columns},
                        **{f"deferred_{c}": r["deferral_rate"].get(c) for c in columns}})
    for key, entry in results["systems"].items():
        fixed = {"base": 0.0, "expert": 1.0}.get(key)  # base alone writes nothing of the expert's, the expert all
        rates = entry.get("deferral_rate", {})
        records.append({"split": "test", "system": key, "source": "", "threshold": entry.get("threshold", ""),
                        "deferral_rate": "", **{t: entry["scores"][t]["accuracy"] for t in results["tasks"]},
                        "general": (entry.get("general") or {}).get("mean"),
                        **{f"deferred_{c}": fixed if fixed is not None else rates.get(c) for c in columns}})
    return records


def write_collm_report(run_dir: Path, results: dict) -> None:
    records = sweep_records(results)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(records[0]))
    writer.writeheader()
    writer.writerows(records)
    atomic_write_text(run_dir / "collm.csv", buffer.getvalue())
    collm_plot(results, records, run_dir / "collm.png")
    atomic_write_text(run_dir / "report.md", collm_report(results))


def collm_plot(results: dict, records: list[dict], path: Path) -> Path:
    """Accuracy (each task, and the general mean) against the share of tokens deferred: the validation sweep as
    lines, the test split's base / expert / Co-LLM as markers."""
    from sdft.report.plots import _pyplot, _save

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    sweep = [r for r in records if r["split"] == "validation"]
    test = [r for r in records if r["split"] == "test"]
    for i, column in enumerate([*results["tasks"], "general"]):
        colour, x = f"C{i}", f"deferred_{column}"
        points = sorted((r[x], r[column]) for r in sweep if r[column] is not None and r[x] is not None)
        if points:
            ax.plot(*zip(*points), "-o", color=colour, ms=3, label=f"{column}: Co-LLM thresholds (validation)")
        for r, marker in zip(test, ("s", "^", "*")):
            if r[column] is not None and r[x] is not None:
                ax.plot(r[x], r[column], marker, color=colour, ms=9 if marker == "*" else 7,
                        label=f"{column}: {SYSTEMS[r['system']]} (test)")
    ax.set_xlabel("share of the task's tokens written by the expert")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"Co-LLM: accuracy against deferral (world: {results['world']})", fontsize=10)
    ax.legend(fontsize=6, loc="best")
    return _save(plt, fig, path)


def collm_report(results: dict) -> str:
    header, rows = collm_rows(results)
    speed = results["speed"]
    lines = [f"# {collm_title(results)}", "", markdown_table(header, rows), "",
             "Deferred: the share of generated tokens the expert wrote (for general: over the whole general suite). "
             f"Expert calls per answer: {_pairs(results['systems']['collm']['expert_calls_per_answer'])}.",
             f"Head: {results['train_base']} base, steps {_pairs(results['steps'])}; training rows "
             f"{_pairs(results['training_rows'])}.",
             f"Decoding speed ({speed['prompts']} test prompts, {speed['threads']} threads, the machine that ran it): "
             f"Co-LLM {fmt(speed['collm_tokens_per_second'])} tokens/s, base alone {fmt(speed['base_tokens_per_second'])}"
             f" tokens/s (x{fmt(speed['collm_over_base'])}).", ""]
    if results["sweep"]:
        lines += ["Threshold sweep on the validation rows (score: mean of the tasks' mean accuracy and the general "
                  "mean; the best is kept):", "",
                  markdown_table(["source", "threshold", "deferred", *results["tasks"], "general", "score"],
                                 [[r["source"], f"{r['threshold']:.4g}", fmt(r["overall_deferral_rate"]),
                                   *[fmt(r["validation_accuracy"].get(t)) for t in results["tasks"]],
                                   fmt(r["general_mean"]), fmt(r["score"])] for r in results["sweep"]]), ""]
    if results["world"] == "embedded":
        lines.append("World: embedded: a tiny model on CPU; its numbers show the mechanism, not a real model's.")
    return "\n".join(lines) + "\n"


def _pairs(mapping: dict) -> str:
    return ", ".join(f"{k} {fmt(v) if isinstance(v, float) else v}" for k, v in mapping.items())
