"""Evaluation: batched generation (left padding, KV cache) and scoring, per task and for the general suite."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from sdft.config import GenerationConfig
from sdft.models import LoadedModel
from sdft.prompts import render_prompt, teacher_prompt
from sdft.scoring import get_scorer
from sdft.tasks.spec import Row, TaskSpec

ProgressCallback = Callable[[int], None]
"""Called with the number of prompts just finished."""


@dataclass
class Completion:
    text: str
    hit_cap: bool
    """True when generation stopped at max_new_tokens without an end-of-sequence token."""


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

    def summary(self) -> dict:
        return {
            "accuracy": self.accuracy,
            "unseen_accuracy": self.unseen_accuracy,
            "n": self.n,
            "n_unseen": self.n_unseen,
            "hit_cap": self.hit_cap,
            "version": self.version,
        }


def model_inputs(loaded: LoadedModel, task: TaskSpec, rows: list[Row], teacher: bool) -> list[str]:
    """The rendered chat prompts: the plain question, or the SDFT teacher prompt with the demonstration."""
    users = [teacher_prompt(r.prompt, r.demonstration) if teacher else r.prompt for r in rows]
    return [render_prompt(loaded.tokenizer, user, task.system_prompt) for user in users]


@torch.no_grad()
def generate(
    loaded: LoadedModel, prompts: list[str], gen: GenerationConfig, on_progress: ProgressCallback | None = None
) -> list[Completion]:
    """One completion per prompt (gen.samples per prompt, flattened prompt-major when > 1).

    Prompts are sorted by length so each batch pads little; results come back in the input order."""
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    results: list[list[Completion]] = [[] for _ in prompts]
    for start in range(0, len(order), gen.batch_size):
        batch = order[start : start + gen.batch_size]
        for index, completions in zip(batch, _generate_batch(loaded, [prompts[i] for i in batch], gen)):
            results[index] = completions
        if on_progress:
            on_progress(len(batch))
    return [c for per_prompt in results for c in per_prompt]


def _generate_batch(loaded: LoadedModel, prompts: list[str], gen: GenerationConfig) -> list[list[Completion]]:
    tokenizer = loaded.tokenizer
    encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(loaded.device)
    sampling = {"do_sample": True, "temperature": gen.temperature, "top_p": gen.top_p} if gen.temperature > 0 else {"do_sample": False}
    output = loaded.model.generate(
        **encoded,
        max_new_tokens=gen.max_new_tokens,
        num_return_sequences=gen.samples,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        use_cache=True,
        **sampling,
    )
    new_tokens = output[:, encoded["input_ids"].shape[1] :]
    texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    ended = (new_tokens == tokenizer.eos_token_id).any(dim=1).tolist()
    capped = [not e and new_tokens.shape[1] >= gen.max_new_tokens for e in ended]
    flat = [Completion(t, c) for t, c in zip(texts, capped)]
    return [flat[i : i + gen.samples] for i in range(0, len(flat), gen.samples)]


def evaluate_task(
    loaded: LoadedModel,
    task: TaskSpec,
    gen: GenerationConfig,
    split: str = "test",
    limit: int | None = None,
    teacher: bool = False,
    on_progress: ProgressCallback | None = None,
) -> TaskEval:
    """Generate for every row of the split and score it; accuracy averages over rows and samples."""
    rows = task.split(split)[:limit] if limit else task.split(split)
    completions = generate(loaded, model_inputs(loaded, task, rows, teacher), gen, on_progress)
    scorer = get_scorer(task.scorer)
    samples = []
    for k, completion in enumerate(completions):
        row = rows[k // gen.samples]
        score = scorer(completion.text, row.answer)
        samples.append({"row": k // gen.samples, "prompt": row.prompt, "response": completion.text,
                        "answer": row.answer, "score": score, "unseen": row.unseen, "hit_cap": completion.hit_cap})
    return _task_eval(task, samples)


def _task_eval(task: TaskSpec, samples: list[dict]) -> TaskEval:
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
    )


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def general_summary(evals: list[TaskEval]) -> dict:
    """{'mean': unweighted mean accuracy over the suite, '<skill>': accuracy, ...}; mean None if empty."""
    scores = {e.task: e.accuracy for e in evals}
    return {"mean": _mean(list(scores.values())) if scores else None, **scores}
