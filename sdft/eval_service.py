"""The evaluation service: one per run, used by every command that evaluates (eval, check, train, sequence,
prior-tasks, and the systems to come). It owns what an evaluation needs besides the model:

- the judge, built once when the first judged task is evaluated (a local judge model loads once per run);
- the evaluation cache (<output_root>/.eval_cache) and the judge cache (<output_root>/.judge_cache);
- the general suite (eval.general), loaded once;
- the progress bar over a whole batch of (task, prompt kind) jobs.

A model's weight fingerprint (the cache key's first part) is computed once per `evaluate` call, not memoised
across calls: the same model object changes its weights in place during training, and some in-place writes (peft's
merge writes through `.data`) leave no trace a cheap check could see, so a memo could serve another model's scores.
"""

from __future__ import annotations

from pathlib import Path

from sdft.config import EMBEDDED_MODEL, Config
from sdft.console import err_console, progress_bar
from sdft.errors import UserError
from sdft.eval_cache import SampleStore, cache_key, model_fingerprint
from sdft.evaluate import TaskEval, evaluate_task, general_summary
from sdft.inference.predictors import make_predictor, predictor_name
from sdft.judge import Judge, judge_problem, make_judge
from sdft.models import LoadedModel
from sdft.runs import read_json
from sdft.scoring import is_judged
from sdft.tasks.spec import TaskSpec

EVAL_CACHE_DIR = ".eval_cache"
JUDGE_CACHE_DIR = ".judge_cache"

Job = tuple[TaskSpec, "bool | str | object"]
"""(task, prompt kind): False / True = the plain / teacher prompt, a predictor's name (sdft/inference/), or a
predictor its command built (sdft collm's holds the expert in memory)."""


class EvalService:
    """Evaluations of any number of models under one config, sharing one judge and the caches."""

    def __init__(self, cfg: Config, general: list[TaskSpec], records_dir: Path | None = None):
        """`records_dir`: where per-sample records go instead of the shared cache (<output_root>/.eval_cache), e.g. a
        run folder's records/, named <task>-<predictor>-<key>.jsonl; either way a rerun resumes from them."""
        self.cfg, self.general, self.records_dir = cfg, general, records_dir
        self._judge: Judge | None = None

    def judge_for(self, tasks: list[TaskSpec]) -> Judge | None:
        """The configured judge when any of the tasks needs one: built at the first such call, then reused."""
        if not any(is_judged(t.scorer) for t in tasks):
            return None
        if self._judge is None:
            require_judge(self.cfg, tasks)
            self._judge = make_judge(self.cfg.eval.judge, Path(self.cfg.output_root) / JUDGE_CACHE_DIR,
                                     self.cfg.model.device)
        return self._judge

    def evaluate(self, loaded: LoadedModel, jobs: list[Job], seed: int | None = None) -> list[TaskEval]:
        """Evaluate (task, teacher?) pairs under one progress bar, through the evaluation cache. `seed` (default:
        the config's) seeds sampled decoding; greedy decoding does not depend on it."""
        seed = self.cfg.seed if seed is None else seed
        loaded.model.eval()
        ev = self.cfg.eval
        fingerprint = model_fingerprint(loaded.model) if ev.cache else None
        judge = self.judge_for([t for t, _ in jobs])
        malformed_before = judge.malformed if judge is not None else 0
        results, predictors = [], self._predictors(jobs)
        with progress_bar() as progress:
            bar = progress.add_task("evaluating", total=sum(len(t.rows(ev.split, ev.limit)) for t, _ in jobs))
            for task, kind in jobs:
                predictor = predictors[predictor_name(kind)]
                progress.update(bar, description=f"{task.name} ({predictor.name})")
                store = self._store(fingerprint, task, predictor, judge, seed) if fingerprint else None
                results.append(evaluate_task(loaded, task, ev, kind, lambda n: progress.advance(bar, n), store,
                                             seed, judge, predictor))
        if judge is not None and judge.malformed > malformed_before:
            err_console.print(f"[yellow]the judge ({judge.identity}) gave {judge.malformed - malformed_before} "
                              "malformed replies: scored 0, not cached (a rerun asks again)[/]")
        return results

    def score(self, loaded: LoadedModel, tasks: list[TaskSpec], seed: int | None = None) -> dict:
        """{"scores": {task: summary}, "general": {"mean": .., skill: ..}} with plain prompts."""
        evals = self.evaluate(loaded, [(t, False) for t in tasks] + [(g, False) for g in self.general], seed)
        return {"scores": {e.task: e.summary() for e in evals[: len(tasks)]},
                "general": self.general_scores(loaded, evals[len(tasks) :], seed)}

    def general_scores(self, loaded: LoadedModel, evals: list[TaskEval], seed: int | None = None) -> dict:
        """The general suite: prior-skill tasks and, when configured, lm-evaluation-harness benchmarks;
        'mean' is the unweighted mean over all of them."""
        summary, harness = general_summary(evals), self.cfg.eval.harness
        if not harness.tasks:
            return summary
        from sdft.lm_harness import harness_scores

        scores = {k: v for k, v in summary.items() if k != "mean"}
        scores |= harness_scores(loaded, harness.tasks, metrics=harness.metrics or None,
                                 num_fewshot=harness.num_fewshot, limit=harness.limit, batch_size=harness.batch_size,
                                 include_path=harness.include_path, allow_code_execution=harness.allow_code_execution,
                                 seed=self.cfg.seed if seed is None else seed)
        return {"mean": sum(scores.values()) / len(scores), **scores}

    def _predictors(self, jobs: list[Job]) -> dict:
        """One predictor per prompt kind, told every task it will answer."""
        predictors = {}
        for _, kind in jobs:
            name = predictor_name(kind)
            if name in predictors:
                continue
            predictors[name] = make_predictor(kind, self.cfg)
            predictors[name].prepare([t for t, kind in jobs if predictor_name(kind) == name])
        return predictors

    def _store(self, fingerprint: str, task: TaskSpec, predictor, judge: Judge | None, seed: int) -> SampleStore:
        # Cached samples hold their scores: a judged task's scores belong to the judge that gave them.
        ev = self.cfg.eval
        version = f"{task.version}+{judge.identity}" if judge is not None and is_judged(task.scorer) else task.version
        kind = {"student": False, "teacher": True}.get(predictor.name, predictor.name)
        key = cache_key(fingerprint, task.name, version, ev.split, ev.limit, kind, ev, seed, predictor.settings())
        if self.records_dir is not None:
            return SampleStore(self.records_dir, key, f"{task.name}-{predictor.name}")
        return SampleStore(Path(self.cfg.output_root) / EVAL_CACHE_DIR, key)


def require_judge(cfg: Config, tasks: list[TaskSpec]) -> None:
    """A task graded by an LLM judge is refused, before any model loads, when no judge is configured."""
    judged = [t.name for t in tasks if is_judged(t.scorer)]
    problem = judge_problem(cfg.eval.judge) if judged else None
    if problem:
        raise UserError(f"{', '.join(judged)}: graded by an LLM judge, but {problem}")


def world_of(model_name: str, tasks: list[TaskSpec]) -> str:
    """'embedded' when the shipped tiny model (or a run trained from it) runs the embedded tasks; 'paper'
    when the tasks are the paper's data (the general suite may be embedded skills); otherwise 'custom'."""
    embedded_tasks = all(t.source == "embedded" for t in tasks)
    if embedded_tasks and model_world(model_name) == "embedded":
        return "embedded"
    worlds = {t.extra.get("world", "custom") for t in tasks}
    return "paper" if "paper" in worlds and "custom" not in worlds else "custom"


def model_world(model_name: str) -> str:
    """'embedded' for the shipped tiny model or a run trained from it (its results.json says so), else 'custom'."""
    if model_name == EMBEDDED_MODEL:
        return "embedded"
    results = Path(model_name) / "results.json"
    return read_json(results).get("world", "custom") if results.is_file() else "custom"
