"""The commands `sdft eval` and `sdft check`: plan (names, data, judge checked before any model loads), load the
config's model, evaluate through the evaluation service (sdft/eval_service.py), write the run folder."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from sdft.claim import claim_new
from sdft.config import Config
from sdft.errors import UserError
from sdft.eval_service import EvalService, require_judge, world_of
from sdft.evaluate import TaskEval
from sdft.models import LoadedModel, load_model
from sdft.runs import atomic_write_json, atomic_write_text, write_run_header
from sdft.tasks.registry import load_tasks, require_known, task_registry
from sdft.tasks.spec import TaskSpec


@dataclass
class EvalPlan:
    """Everything an evaluation needs, resolved and checked before the model is loaded."""

    cfg: Config
    tasks: list[TaskSpec]
    general: list[TaskSpec]
    run_dir: Path
    oracles: dict[str, TaskSpec] = field(default_factory=dict)
    """check: task name -> its oracle view (`<task>_oracle`, the source in the prompt) where the registry has one."""


def plan_evaluation(cfg: Config, command: str, output: str | Path | None, tasks: list[str] | None) -> EvalPlan:
    registry = task_registry(cfg.custom_tasks, cfg.task_sources)
    task_names = tasks or cfg.eval.tasks or cfg.tasks
    general_names = cfg.eval.general
    require_known([*task_names, *general_names], registry)
    clash = set(cfg.eval.harness.tasks) & set(general_names)
    if clash:
        raise UserError(f"eval.harness.tasks and the general suite both name {sorted(clash)}; rename or drop one")
    specs, general = load_tasks(task_names, registry), load_tasks(general_names, registry)
    oracles = {}
    if command == "check":  # the readiness table shows what the model does with the source in its prompt
        oracles = {t.name: registry[f"{t.name}_oracle"]() for t in specs if f"{t.name}_oracle" in registry}
    require_judge(cfg, specs + general + list(oracles.values()))
    return EvalPlan(cfg, specs, general, claim_new(output, command, cfg).run_dir, oracles)


def run_eval(plan: EvalPlan, teacher: bool = False) -> dict:
    """Scores of the config's model on the plan's tasks (plain or teacher prompt) and the general suite."""
    loaded, service = _load(plan, "eval"), EvalService(plan.cfg, plan.general)
    jobs = [(t, teacher) for t in plan.tasks] + [(g, False) for g in plan.general]
    evals = service.evaluate(loaded, jobs)
    task_evals, general_evals = evals[: len(plan.tasks)], evals[len(plan.tasks) :]
    results = {
        "model": plan.cfg.model.name_or_path,
        "world": world_of(plan.cfg.model.name_or_path, plan.tasks + plan.general),
        "prompt": "teacher" if teacher else "student",
        "split": plan.cfg.eval.split,
        "scores": {e.task: e.summary() for e in task_evals},
        "general": service.general_scores(loaded, general_evals),
    }
    _write_results(plan.run_dir, results, jobs, evals)
    return results


def run_check(plan: EvalPlan) -> dict:
    """Student (plain prompt) against teacher (prompt + demonstration) on every task, and a verdict."""
    loaded, service = _load(plan, "check"), EvalService(plan.cfg, plan.general)
    jobs = [(t, teacher) for t in plan.tasks for teacher in (False, True)] + [(g, False) for g in plan.general]
    jobs += [(oracle, False) for oracle in plan.oracles.values()]
    evals = service.evaluate(loaded, jobs)
    pairs = [evals[2 * i : 2 * i + 2] for i in range(len(plan.tasks))]
    general_evals = evals[2 * len(plan.tasks) : len(evals) - len(plan.oracles)]
    oracle = dict(zip(plan.oracles, evals[len(evals) - len(plan.oracles) :]))
    scores = {student.task: _check_scores(student, teacher, oracle.get(student.task)) for student, teacher in pairs}
    verdict, reasons = readiness_verdict(scores, plan.cfg)
    results = {
        "model": plan.cfg.model.name_or_path,
        "world": world_of(plan.cfg.model.name_or_path, plan.tasks + plan.general),
        "split": plan.cfg.eval.split,
        "scores": scores,
        "general": service.general_scores(loaded, general_evals),
        "verdict": verdict,
        "reasons": reasons,
    }
    _write_results(plan.run_dir, results, jobs, evals)
    return results


def _check_scores(student: TaskEval, teacher: TaskEval, oracle: TaskEval | None) -> dict:
    return {
        **({"oracle": oracle.accuracy} if oracle else {}),
        "student": student.accuracy,
        "teacher": teacher.accuracy,
        "unseen_student": student.unseen_accuracy,
        "unseen_teacher": teacher.unseen_accuracy,
        "n": student.n,
        "n_unseen": student.n_unseen,
        "version": student.version,
    }


def readiness_verdict(scores: dict[str, dict], cfg: Config) -> tuple[str, list[str]]:
    """'ready' when on every task the teacher beats the student by check.min_teacher_gain and reaches
    check.min_teacher_accuracy; otherwise 'weak', with one reason per failing task."""
    gain, floor = cfg.check.min_teacher_gain, cfg.check.min_teacher_accuracy
    reasons = []
    for task, s in scores.items():
        if s["teacher"] - s["student"] < gain:
            reasons.append(f"{task}: teacher {s['teacher']:.2f} beats student {s['student']:.2f} by less than {gain:.2f}")
        elif s["teacher"] < floor:
            reasons.append(f"{task}: teacher accuracy {s['teacher']:.2f} is below {floor:.2f}")
    return ("weak" if reasons else "ready"), reasons


def _load(plan: EvalPlan, command: str) -> LoadedModel:
    loaded = load_model(plan.cfg.model)
    write_run_header(plan.run_dir, plan.cfg, command, str(loaded.device))
    return loaded


def _write_results(run_dir: Path, results: dict, jobs: list[tuple[TaskSpec, bool]], evals: list[TaskEval]) -> None:
    """results.json, and every generated response under samples/<task>[-teacher].jsonl for reading."""
    for (task, teacher), e in zip(jobs, evals):
        lines = "".join(json.dumps(s) + "\n" for s in e.samples)
        atomic_write_text(run_dir / "samples" / f"{task.name}{'-teacher' if teacher else ''}.jsonl", lines)
    atomic_write_json(run_dir / "results.json", results)
