"""Evaluation of one model on one task split: generate through the generation interface (sdft/generation/), score,
summarise. The evaluation service (sdft/eval_service.py) runs it for a whole run: cache, judge, general suite."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from sdft.config import EvalConfig
from sdft.eval_cache import SampleStore
from sdft.generation import Generation
from sdft.metrics import mean_pass_at_k
from sdft.models import LoadedModel
from sdft.errors import UserError
from sdft.scoring import JUDGED, METRICS, get_scorer, is_judged
from sdft.tasks.spec import Row, TaskSpec

ProgressCallback = Callable[[int], None]
"""Called with the number of prompts just finished."""
BatchScorer = Callable[[list[str], list[Row]], list[dict]]
"""(responses, their rows) -> one {"score": .., optional "metrics": {..}, "verdict": ..} per response."""


@dataclass
class TaskEval:
    """Scores of one model on one task split."""

    task: str
    version: str
    accuracy: float
    n: int
    unseen_accuracy: float | None
    n_unseen: int
    hit_cap: int
    samples: list[dict] = field(default_factory=list, repr=False)
    pass_at_k: dict[str, float] | None = None
    """With several samples per row: the unbiased pass@k estimates."""
    extra: dict[str, float] = field(default_factory=dict)
    """Further accuracies a scorer reports, e.g. {'lenient': ..} for the knowledge judge."""

    def summary(self) -> dict:
        return {
            "accuracy": self.accuracy,
            "unseen_accuracy": self.unseen_accuracy,
            "n": self.n,
            "n_unseen": self.n_unseen,
            "hit_cap": self.hit_cap,
            "version": self.version,
            **({"pass_at_k": self.pass_at_k} if self.pass_at_k else {}),
            **{f"{name}_accuracy": value for name, value in self.extra.items()},
        }


def evaluate_task(
    loaded: LoadedModel,
    task: TaskSpec,
    ev: EvalConfig,
    teacher: bool = False,
    on_progress: ProgressCallback | None = None,
    store: SampleStore | None = None,
    seed: int = 0,
    judge=None,
    predictor=None,
) -> TaskEval:
    """Answer every row of the split (ev.split, the first ev.limit rows) and score it; accuracy averages over rows
    and samples. The predictor (sdft/inference/) answers; without one, the plain question or (teacher) the SDFT
    teacher prompt is generated. With a store, rows it already holds are not answered again and new ones are written
    as they finish. `judge` (sdft.judge.Judge) grades tasks whose scorer is judged."""
    from sdft.inference.predictors import make_predictor

    rows = task.rows(ev.split, ev.limit)
    predictor = predictor or make_predictor(teacher, None)
    done = store.load() if store else {}
    todo = [i for i in range(len(rows)) if len(done.get(i, [])) != ev.samples]
    if on_progress and len(todo) < len(rows):
        on_progress(len(rows) - len(todo))
    score = batch_scorer(task, judge)
    for indices, completions, extras in predictor.answer(loaded, task, rows, todo, ev, seed):
        flat = [(i, c, extra) for i, per_row, extra in zip(indices, completions, extras) for c in per_row]
        scores = score([c.text for _, c, _ in flat], [rows[i] for i, _, _ in flat])
        records = [{**_sample(i, rows[i], c, s), **extra} for (i, c, extra), s in zip(flat, scores)]
        for i in indices:
            done[i] = [r for r in records if r["row"] == i]
        if store:
            store.append(records)
        if on_progress:
            on_progress(len(indices))
    return task_eval(task, [s for i in range(len(rows)) for s in done[i]], ev.samples)


def batch_scorer(task: TaskSpec, judge=None) -> BatchScorer:
    """The task's scorer over a batch: a pure scorer per response, or the LLM judge with the rubric of a
    judged scorer, which also sees the question."""
    if is_judged(task.scorer):
        if judge is None:
            raise UserError(f"task '{task.name}' is graded by an LLM judge and no judge is configured "
                            "(eval.judge.backend: openai with url and model, or local)")
        return lambda responses, rows: _judged(judge, JUDGED[task.scorer], responses, rows)
    scorer, extra = get_scorer(task.scorer), METRICS.get(task.scorer, {})

    def score(responses: list[str], rows: list[Row]) -> list[dict]:
        graded = [{"score": scorer(text, row.answer)} for text, row in zip(responses, rows)]
        if extra:
            for entry, text, row in zip(graded, responses, rows):
                entry["metrics"] = {name: grade(text, row.answer) for name, grade in extra.items()}
        return graded
    return score


def _judged(judge, rubric: str, responses: list[str], rows: list[Row]) -> list[dict]:
    items = [(r.question or r.prompt, r.answer, t) for t, r in zip(responses, rows)]
    grades = judge.grade_many(rubric, items)
    return [{"score": g.metrics.pop("score"), "metrics": g.metrics, "verdict": g.verdict} for g in grades]


def _sample(index: int, row: Row, completion: Generation, scored: dict) -> dict:
    return {"row": index, "prompt": row.prompt, "response": completion.text, "answer": row.answer,
            "unseen": row.unseen, "hit_cap": completion.hit_cap, **scored}


def task_eval(task: TaskSpec, samples: list[dict], per_row: int) -> TaskEval:
    """The summary of one task's scored samples (`per_row` samples per row)."""
    unseen = [s["score"] for s in samples if s["unseen"]]
    return TaskEval(
        task=task.name,
        version=task.version,
        accuracy=_mean([s["score"] for s in samples]),
        n=len({s["row"] for s in samples}),
        unseen_accuracy=_mean(unseen) if unseen else None,
        n_unseen=len({s["row"] for s in samples if s["unseen"]}),
        hit_cap=sum(s["hit_cap"] for s in samples),
        samples=samples,
        pass_at_k=_pass_at_k(samples, per_row),
        extra=_extra_metrics(samples),
    )


def _extra_metrics(samples: list[dict]) -> dict[str, float]:
    names = sorted({name for s in samples for name in s.get("metrics", {})})
    return {name: _mean([s.get("metrics", {}).get(name, 0.0) for s in samples]) for name in names}


def _pass_at_k(samples: list[dict], n: int) -> dict[str, float] | None:
    """pass@1 .. pass@n (powers of two and n) when several samples were drawn per row."""
    if n < 2:
        return None
    correct: dict[int, int] = {}
    for s in samples:
        correct[s["row"]] = correct.get(s["row"], 0) + int(s["score"] > 0)
    ks = sorted({k for k in (1, 2, 4, 8, 16, 32, 64, 128) if k < n} | {n})
    return {f"pass@{k}": mean_pass_at_k(list(correct.values()), n, k) for k in ks}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def general_summary(evals: list[TaskEval]) -> dict:
    """{'mean': unweighted mean accuracy over the suite, '<skill>': accuracy, ...}; mean None if empty."""
    scores = {e.task: e.accuracy for e in evals}
    return {"mean": _mean(list(scores.values())) if scores else None, **scores}
