"""`sdft eval` and `sdft check`: load the config's model and tasks, evaluate, write the run folder."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from sdft.config import EMBEDDED_MODEL, Config
from sdft.console import err_console, progress_bar
from sdft.errors import UserError
from sdft.eval_cache import SampleStore, cache_key, model_fingerprint
from sdft.evaluate import TaskEval, evaluate_task, general_summary
from sdft.models import LoadedModel, load_model
from sdft.runs import atomic_write_json, atomic_write_text, new_run_dir, read_json, write_run_header
from sdft.judge import Judge, judge_problem, make_judge
from sdft.scoring import is_judged
from sdft.tasks.registry import embedded_prior_skills, load_tasks, require_known, task_registry
from sdft.tasks.spec import TaskSpec


EVAL_CACHE_DIR = ".eval_cache"
JUDGE_CACHE_DIR = ".judge_cache"


@dataclass
class EvalPlan:
    """Everything an evaluation needs, resolved and checked before the model is loaded."""

    cfg: Config
    tasks: list[TaskSpec]
    general: list[TaskSpec]
    run_dir: Path


def plan_evaluation(cfg: Config, command: str, output: str | Path | None, tasks: list[str] | None) -> EvalPlan:
    registry = task_registry(cfg.custom_tasks, cfg.task_sources)
    task_names = tasks or cfg.eval.tasks or cfg.tasks
    general_names = general_suite(cfg)
    require_known([*task_names, *general_names], registry)
    clash = set(cfg.eval.harness.tasks) & set(general_names)
    if clash:
        raise UserError(f"eval.harness.tasks and the general suite both name {sorted(clash)}; rename or drop one")
    specs, general = load_tasks(task_names, registry), load_tasks(general_names, registry)
    require_judge(cfg, specs + general)
    return EvalPlan(cfg, specs, general, new_run_dir(output, command, cfg))


def require_judge(cfg: Config, tasks: list[TaskSpec]) -> None:
    """A task graded by an LLM judge is refused, before any model loads, when no judge is configured."""
    judged = [t.name for t in tasks if is_judged(t.scorer)]
    problem = judge_problem(cfg.eval.judge) if judged else None
    if problem:
        raise UserError(f"{', '.join(judged)}: graded by an LLM judge, but {problem}")


def judge_for(cfg: Config, tasks: list[TaskSpec]) -> Judge | None:
    """The configured judge when any of the tasks needs one (its verdicts cached under the output root)."""
    if not any(is_judged(t.scorer) for t in tasks):
        return None
    require_judge(cfg, tasks)
    return make_judge(cfg.eval.judge, Path(cfg.output_root) / JUDGE_CACHE_DIR, cfg.model.device)


def general_suite(cfg: Config) -> list[str]:
    """The general-capability suite's task names: eval.general, or the embedded prior skills."""
    return embedded_prior_skills() if cfg.eval.general is None else list(cfg.eval.general)


def score_model(loaded: LoadedModel, cfg: Config, tasks: list[TaskSpec], general: list[TaskSpec]) -> dict:
    """{"scores": {task: summary}, "general": {"mean": .., skill: ..}} with plain prompts."""
    evals = evaluate_many(loaded, cfg, [(t, False) for t in tasks] + [(g, False) for g in general])
    return {"scores": {e.task: e.summary() for e in evals[: len(tasks)]},
            "general": general_scores(loaded, cfg, evals[len(tasks) :])}


def general_scores(loaded: LoadedModel, cfg: Config, evals: list[TaskEval]) -> dict:
    """The general suite: prior-skill tasks and, when configured, lm-evaluation-harness benchmarks;
    'mean' is the unweighted mean over all of them."""
    summary, harness = general_summary(evals), cfg.eval.harness
    if not harness.tasks:
        return summary
    from sdft.lm_harness import harness_scores

    scores = {k: v for k, v in summary.items() if k != "mean"}
    scores |= harness_scores(loaded, harness.tasks, metrics=harness.metrics or None, num_fewshot=harness.num_fewshot,
                             limit=harness.limit, batch_size=harness.batch_size, include_path=harness.include_path,
                             allow_code_execution=harness.allow_code_execution, seed=cfg.seed)
    return {"mean": sum(scores.values()) / len(scores), **scores}


def world_of(model_name: str, tasks: list[TaskSpec]) -> str:
    """'embedded' when the shipped tiny model (or a run trained from it) runs the embedded tasks; 'paper'
    when the tasks are the paper's data (the general suite may be embedded skills); otherwise 'custom'."""
    embedded_tasks = all(t.source == "embedded" for t in tasks)
    if embedded_tasks and _model_world(model_name) == "embedded":
        return "embedded"
    worlds = {t.extra.get("world", "custom") for t in tasks}
    return "paper" if "paper" in worlds and "custom" not in worlds else "custom"


def _model_world(model_name: str) -> str:
    if model_name == EMBEDDED_MODEL:
        return "embedded"
    results = Path(model_name) / "results.json"
    return read_json(results).get("world", "custom") if results.is_file() else "custom"


def evaluate_many(loaded: LoadedModel, cfg: Config, jobs: list[tuple[TaskSpec, bool]]) -> list[TaskEval]:
    """Evaluate (task, teacher?) pairs under one progress bar, through the evaluation cache."""
    loaded.model.eval()
    ecfg = cfg.eval
    fingerprint = model_fingerprint(loaded.model) if ecfg.cache else None
    judge = judge_for(cfg, [t for t, _ in jobs])
    total = sum(len(t.split(ecfg.split)[: ecfg.limit] if ecfg.limit else t.split(ecfg.split)) for t, _ in jobs)
    results = []
    with progress_bar() as progress:
        bar = progress.add_task("evaluating", total=total)
        for task, teacher in jobs:
            progress.update(bar, description=f"{task.name} ({'teacher' if teacher else 'student'})")
            advance = lambda n: progress.advance(bar, n)  # noqa: E731
            store = _store(cfg, fingerprint, task, teacher, judge) if fingerprint else None
            results.append(evaluate_task(loaded, task, ecfg.generation, ecfg.split, ecfg.limit, teacher, advance,
                                         store, cfg.seed, judge))
    if judge is not None and judge.malformed:
        err_console.print(f"[yellow]the judge ({judge.identity}) gave {judge.malformed} malformed replies: "
                          "scored 0, not cached (a rerun asks again)[/]")
    return results


def _store(cfg: Config, fingerprint: str, task: TaskSpec, teacher: bool, judge: Judge | None) -> SampleStore:
    # Cached samples hold their scores: a judged task's scores belong to the judge that gave them.
    version = f"{task.version}+{judge.identity}" if judge is not None and is_judged(task.scorer) else task.version
    key = cache_key(fingerprint, task.name, version, cfg.eval.split, cfg.eval.limit, teacher,
                    cfg.eval.generation, cfg.seed)
    return SampleStore(Path(cfg.output_root) / EVAL_CACHE_DIR, key)


def run_eval(plan: EvalPlan, teacher: bool = False) -> dict:
    """Scores of the config's model on the plan's tasks (plain or teacher prompt) and the general suite."""
    loaded = _load(plan, "eval")
    jobs = [(t, teacher) for t in plan.tasks] + [(g, False) for g in plan.general]
    evals = evaluate_many(loaded, plan.cfg, jobs)
    task_evals, general_evals = evals[: len(plan.tasks)], evals[len(plan.tasks) :]
    results = {
        "model": plan.cfg.model.name_or_path,
        "world": world_of(plan.cfg.model.name_or_path, plan.tasks + plan.general),
        "prompt": "teacher" if teacher else "student",
        "split": plan.cfg.eval.split,
        "scores": {e.task: e.summary() for e in task_evals},
        "general": general_scores(loaded, plan.cfg, general_evals),
    }
    _write_results(plan.run_dir, results, jobs, evals)
    return results


def run_check(plan: EvalPlan) -> dict:
    """Student (plain prompt) against teacher (prompt + demonstration) on every task, and a verdict."""
    loaded = _load(plan, "check")
    jobs = [(t, teacher) for t in plan.tasks for teacher in (False, True)] + [(g, False) for g in plan.general]
    evals = evaluate_many(loaded, plan.cfg, jobs)
    pairs = [evals[2 * i : 2 * i + 2] for i in range(len(plan.tasks))]
    general_evals = evals[2 * len(plan.tasks) :]
    scores = {student.task: _check_scores(student, teacher) for student, teacher in pairs}
    verdict, reasons = readiness_verdict(scores, plan.cfg)
    results = {
        "model": plan.cfg.model.name_or_path,
        "world": world_of(plan.cfg.model.name_or_path, plan.tasks + plan.general),
        "split": plan.cfg.eval.split,
        "scores": scores,
        "general": general_scores(loaded, plan.cfg, general_evals),
        "verdict": verdict,
        "reasons": reasons,
    }
    _write_results(plan.run_dir, results, jobs, evals)
    return results


def _check_scores(student: TaskEval, teacher: TaskEval) -> dict:
    return {
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
