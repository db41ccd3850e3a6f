"""`sdft eval RUN --prior-tasks`: how much of what came before survived.

The run's lineage (base model, then each training stage) names every task the model was trained on. The
run's model and the base model are evaluated on all of them and on the general suite (the base through
the evaluation cache, so it is computed once), and each score is shown next to the base: task | base |
now | delta. The report itself is sdft/report/prior.py's."""

from __future__ import annotations

import dataclasses

from sdft.config import Config
from sdft.errors import UserError
from sdft.models import load_model
from sdft.eval_service import EvalService, world_of
from sdft.report import base_vs_now_rows, write_prior_report
from sdft.run_eval import EvalPlan
from sdft.runs import atomic_write_json, lineage_of, write_run_header


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
        "decoding": decoding_settings(cfg),
        "scores": now["scores"],
        "general": now["general"],
        "base": base,
        "rows": base_vs_now_rows(base, now),
    }
    atomic_write_json(plan.run_dir / "results.json", results)
    write_prior_report(results, plan.run_dir)
    return results


def decoding_settings(cfg: Config) -> dict:
    """How both models' answers were generated, as results.json records it (read by the report)."""
    ev = cfg.eval
    return {"temperature": ev.sampling.temperature, "top_p": ev.sampling.top_p, "samples": ev.samples,
            "max_new_tokens": ev.max_new_tokens, "backend": ev.sampling.backend}
