"""The command `sdft ttt`: zero-shot, in-context and test-time training (with and without voting) on few-shot
instances, each predictor run through the evaluation service, with per-instance records in the run folder.

plan_ttt checks everything before the model loads (config, few-shot data, augmentations, the general suite).
run_ttt wraps the model with the throwaway adapter, answers with every predictor (records/<task>-<predictor>-<key>
.jsonl, appended per instance: a rerun on the same --output resumes at the next instance), evaluates the general
suite after them and checks that the base weights are bit-identical, and writes results.json and report.md."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sdft.config import Config
from sdft.errors import UserError
from sdft.eval_cache import model_fingerprint
from sdft.eval_service import EvalService, world_of
from sdft.evaluate import TaskEval, task_eval
from sdft.claim import Claim, claim_continuing
from sdft.runs import atomic_write_json, atomic_write_text, write_run_header
from sdft.tasks.augment import require_augmentations
from sdft.tasks.fewshot import load_fewshot_tasks
from sdft.tasks.registry import load_tasks, task_registry
from sdft.tasks.spec import TaskSpec

ORDER = ("zero_shot", "icl", "ttt", "ttt_vote")


@dataclass
class TTTPlan:
    cfg: Config
    tasks: list[TaskSpec]
    general: list[TaskSpec]
    claim: Claim | None
    """The run folder (None for a dry run); rerunning on it continues at the next instance."""

    @property
    def run_dir(self) -> Path | None:
        return self.claim.run_dir if self.claim else None


def plan_ttt(cfg: Config, output: str | Path | None, dry_run: bool = False) -> TTTPlan:
    """Everything checked and loaded that can be without the model; no run folder for a dry run."""
    tasks = load_fewshot_tasks(cfg.ttt, cfg.seed)
    require_augmentations(cfg.ttt.augmentations, tasks)
    if cfg.eval.samples != 1 and any(p.startswith("ttt") for p in cfg.ttt.predictors):
        raise UserError("the ttt predictors answer once per view: set eval.samples=1")
    general = load_tasks(cfg.eval.general, task_registry(cfg.custom_tasks, cfg.task_sources)) if cfg.ttt.general else []
    return TTTPlan(cfg, tasks, general, None if dry_run else claim_continuing(output, "ttt", cfg))


def run_ttt(plan: TTTPlan) -> dict:
    from sdft.adapters import wrap_with_lora
    from sdft.models import load_model

    cfg = plan.cfg
    loaded = load_model(cfg.model)
    write_run_header(plan.run_dir, cfg, "ttt", str(loaded.device), resumed=plan.claim.resuming)
    loaded.model = wrap_with_lora(loaded.model, cfg.ttt.lora)
    base = model_fingerprint(loaded.model, skip=".lora_")
    service = EvalService(cfg, plan.general, records_dir=plan.run_dir / "records")
    predictors, seconds, fitted = {}, {}, []
    for name in _to_run(cfg.ttt.predictors):
        evals = service.evaluate(loaded, [(task, name) for task in plan.tasks])
        fitted = evals if name.startswith("ttt") else fitted
        if name == "ttt_vote" and "ttt" in cfg.ttt.predictors:
            first = [_first_view(e, plan.tasks) for e in evals]
            predictors["ttt"], seconds["ttt"] = _entry(first), _seconds(first, cfg.ttt.votes)
        predictors[name], seconds[name] = _entry(evals), _seconds(evals)
    general = service.evaluate(loaded, [(g, False) for g in plan.general]) if plan.general else []
    results = {
        "model": cfg.model.name_or_path,
        "world": world_of(cfg.model.name_or_path, plan.tasks),
        "tasks": [t.name for t in plan.tasks],
        "shots": cfg.ttt.shots, "scope": cfg.ttt.scope, "layout": cfg.ttt.layout, "source": cfg.ttt.source,
        "predictors": {name: predictors[name] for name in ORDER if name in predictors},
        "seconds_per_instance": {name: seconds[name] for name in ORDER if name in seconds},
        "fits": _fits(fitted),
        "general": service.general_scores(loaded, general) if general else None,
        "base_identical": model_fingerprint(loaded.model, skip=".lora_") == base,
    }
    from sdft.report.ttt import ttt_report

    atomic_write_json(plan.run_dir / "results.json", results)
    atomic_write_text(plan.run_dir / "report.md", ttt_report(results))
    return results


def _to_run(requested: list[str]) -> list[str]:
    """The predictors to run, in table order; ttt comes from ttt_vote's first view when both are asked for (one fit
    serves both, as in the paper)."""
    return [p for p in ORDER if p in requested and not (p == "ttt" and "ttt_vote" in requested)]


def _entry(evals: list[TaskEval]) -> dict:
    """The eval schema: {"scores": {task: summary}, "accuracy": mean over tasks}."""
    return {"scores": {e.task: e.summary() for e in evals},
            "accuracy": sum(e.accuracy for e in evals) / len(evals) if evals else None}


def _first_view(e: TaskEval, tasks: list[TaskSpec]) -> TaskEval:
    """ttt's evaluation from ttt_vote's records: the identity view's answer and score."""
    task = next(t for t in tasks if t.name == e.task)
    samples = [{**s, "response": s["answers"][0], "score": s["metrics"]["first_view"], "metrics": {}}
               for s in e.samples]
    return task_eval(task, samples, 1)


def _seconds(evals: list[TaskEval], views: int = 1) -> float | None:
    """Mean seconds per instance (fits included: the first answer after a fit carries its seconds). For ttt read from
    ttt_vote, the generation of the views other than the first is taken out pro rata."""
    samples = [s for e in evals for s in e.samples]
    if not samples or any("seconds" not in s for s in samples):
        return None
    spent = [s["seconds"] - s.get("generate_seconds", 0.0) * (1 - 1 / views) for s in samples]
    return sum(spent) / len(spent)


def _fits(evals: list[TaskEval]) -> dict | None:
    """Mean over the distinct fits: training samples (built, kept), loss before and after."""
    fits = list({s["fit"]["scope"]: s["fit"] for e in evals for s in e.samples if "fit" in s}.values())
    if not fits:
        return None
    mean = lambda key: sum(f[key] for f in fits) / len(fits)  # noqa: E731
    return {"adapters": len(fits), **{k: mean(k) for k in ("samples_built", "samples", "steps", "loss_before",
                                                           "loss_after", "seconds")}}


def dry_run_lines(plan: TTTPlan) -> list[str]:
    """What `sdft ttt --dry-run` prints: the checked data and the plan, from the config alone (no model)."""
    import math

    ttt = plan.cfg.ttt
    lines = [f"source {ttt.source}{f' ({ttt.path})' if ttt.path else ''}, world "
             f"{world_of(plan.cfg.model.name_or_path, plan.tasks)}, model {plan.cfg.model.name_or_path}"]
    for task in plan.tasks:
        rows = task.rows("test")
        demo_sets = len({r.demos for r in rows})
        lines.append(f"task {task.name} (v{task.version}): {len(rows)} instances, {ttt.shots} demos each, "
                     f"{demo_sets} distinct demo sets, scorer {task.scorer}")
    built = _samples_before_cap(ttt)
    samples = min(built, ttt.max_samples)
    lines += [f"predictors: {', '.join(ttt.predictors)}; layout {ttt.layout}; adapter per {ttt.scope}",
              f"per demo set: {built} training samples built (leave-{ttt.leave_out}-out x orders x augmentations), "
              f"capped at {ttt.max_samples}; {math.ceil(ttt.epochs * samples / ttt.batch_size)} steps of "
              f"{ttt.batch_size} at lr {ttt.learning_rate:g}; LoRA r {ttt.lora.r}, alpha {ttt.lora.alpha}",
              f"voting: {ttt.votes} views; general suite after: {', '.join(t.name for t in plan.general) or 'none'}"]
    return lines


def _samples_before_cap(ttt) -> int:
    """The formula of sdft/inference/ttt_data.py: tasks x min(permutations, (K - left out)!) x (1 + augmentations)."""
    import math

    k, per_aug = ttt.shots, 1 + len(ttt.augmentations)
    total = k * min(ttt.permutations, math.factorial(k - 1))
    if ttt.leave_out == 2:
        total += k * (k - 1) * min(ttt.permutations, math.factorial(k - 2))
    return total * per_aug
