"""`sdft eval RUN --prior-tasks`: how much of what came before survived.

The run's lineage (base model, then each training stage) names every task the model was trained on. The
run's model and the base model are evaluated on all of them and on the general suite (the base through
the evaluation cache, so it is computed once), and each score is shown next to the base: task | base |
now | delta."""

from __future__ import annotations

import dataclasses

from sdft.errors import UserError
from sdft.models import load_model
from sdft.eval_service import EvalService, world_of
from sdft.run_eval import EvalPlan
from sdft.runs import atomic_write_json, atomic_write_text, lineage_of, write_run_header


def prior_task_names(run: str, extra: list[str] | None) -> list[str]:
    lineage = lineage_of(run)
    if lineage is None:
        raise UserError(f"'{run}' has no lineage.json: --prior-tasks needs a run folder written by `sdft train` "
                        "or a stage of `sdft sequence`")
    names = [stage["task"] for stage in lineage["stages"]] + list(extra or [])
    return list(dict.fromkeys(names))  # in order, once each


def run_prior_eval(plan: EvalPlan) -> dict:
    cfg = plan.cfg
    lineage = lineage_of(cfg.model.name_or_path)
    base_cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, name_or_path=lineage["base_model"]))
    now_model = load_model(cfg.model)
    write_run_header(plan.run_dir, cfg, "eval-prior", str(now_model.device))
    service = EvalService(cfg, plan.general)  # the base runs under the same evaluation settings
    now = service.score(now_model, plan.tasks)
    del now_model
    base = service.score(load_model(base_cfg.model), plan.tasks)
    results = {
        "model": cfg.model.name_or_path,
        "base_model": lineage["base_model"],
        "world": world_of(cfg.model.name_or_path, plan.tasks + plan.general),
        "lineage": lineage,
        "split": cfg.eval.split,
        "scores": now["scores"],
        "general": now["general"],
        "base": base,
        "rows": comparison_rows(base, now),
    }
    atomic_write_json(plan.run_dir / "results.json", results)
    atomic_write_text(plan.run_dir / "report.md", report_markdown(results))
    return results


def comparison_rows(base: dict, now: dict) -> list[dict]:
    """[{"name", "base", "now", "delta"}] for every task, every general skill, and the general mean."""
    rows = [(task, base["scores"][task]["accuracy"], s["accuracy"]) for task, s in now["scores"].items()]
    rows += [(f"general: {k}", base["general"][k], v) for k, v in now["general"].items() if k != "mean"]
    rows.append(("general mean", base["general"]["mean"], now["general"]["mean"]))
    return [{"name": n, "base": b, "now": v, "delta": None if b is None or v is None else v - b} for n, b, v in rows]


def report_markdown(results: dict) -> str:
    world = results["world"]
    stages = " -> ".join(f"{s['task']} ({s['method']})" for s in results["lineage"]["stages"])
    lines = [
        f"# What survived: {results['model']}",
        "",
        f"Numbers from the {world} world" + (" (a tiny model on CPU, not real models)." if world == "embedded" else "."),
        f"Base model: `{results['base_model']}`; training stages: {stages}. Greedy decoding, {results['split']} split.",
        "",
        "| task | base | now | delta |",
        "|---|---:|---:|---:|",
    ]
    for row in results["rows"]:
        cells = [_fmt(row["base"]), _fmt(row["now"]), "-" if row["delta"] is None else f"{row['delta']:+.3f}"]
        lines.append(f"| {row['name']} | " + " | ".join(cells) + " |")
    lines += ["", "delta = now - base, in accuracy points of [0, 1]; the general mean is the unweighted mean of the "
              "general suite (the forgetting measure)."]
    return "\n".join(lines) + "\n"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"



