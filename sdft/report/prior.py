"""report.md of `sdft eval RUN --prior-tasks`: every task of the run's lineage and every general skill, the
base model's score next to the run's (task | base | now | delta), and how the scores were decoded."""

from __future__ import annotations

from pathlib import Path

from sdft.files import atomic_write_text
from sdft.report.format import decoding_phrase, fmt, fmt_delta
from sdft.report.markdown import markdown_table


def base_vs_now_rows(base: dict, now: dict) -> list[dict]:
    """[{"name", "base", "now", "delta"}] for every task, every general skill, and the general mean."""
    rows = [(task, base["scores"][task]["accuracy"], s["accuracy"]) for task, s in now["scores"].items()]
    rows += [(f"general: {k}", base["general"][k], v) for k, v in now["general"].items() if k != "mean"]
    rows.append(("general mean", base["general"]["mean"], now["general"]["mean"]))
    return [{"name": n, "base": b, "now": v, "delta": None if b is None or v is None else v - b} for n, b, v in rows]


def prior_report_markdown(results: dict) -> str:
    """The whole report.md, from the results.json of `sdft eval --prior-tasks` (rows from base_vs_now_rows)."""
    world = results["world"]
    stages = " -> ".join(f"{s['task']} ({s['method']})" for s in results["lineage"]["stages"])
    decoding = decoding_phrase(results["decoding"])
    rows = [[row["name"], fmt(row["base"]), fmt(row["now"]), fmt_delta(row["delta"])] for row in results["rows"]]
    lines = [
        f"# What survived: {results['model']}",
        "",
        f"Numbers from the {world} world" + (" (a tiny model on CPU, not real models)." if world == "embedded" else "."),
        f"Base model: `{results['base_model']}`; training stages: {stages}. "
        f"{decoding[:1].upper() + decoding[1:]}, {results['split']} split.",
        "",
        markdown_table(("task", "base", "now", "delta"), rows),
        "",
        "delta = now - base, in accuracy points of [0, 1]; the general mean is the unweighted mean of the "
        "general suite (the forgetting measure).",
    ]
    return "\n".join(lines) + "\n"


def write_prior_report(results: dict, run_dir: str | Path) -> Path:
    """report.md in run_dir, written atomically."""
    report = Path(run_dir) / "report.md"
    atomic_write_text(report, prior_report_markdown(results))
    return report
