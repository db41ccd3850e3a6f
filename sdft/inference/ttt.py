"""Test-time training as a predictor (Akyürek et al. 2025; METHOD.md 3.1): for every adapter scope (an instance, a
task, or all tasks), reset the throwaway adapter, fit it on samples built from the demonstrations alone
(ttt_data.py), then answer each query under its views, map each answer back and vote. The base weights are never
written (sdft.adapters.reset_adapters); the adapter is reset again when the predictor is done.

Every record holds the fit (training samples before and after the cap, loss before and after, seconds), the answer
under each view mapped back, the vote and the identity view's score: `ttt` answers with the identity view, `ttt_vote`
with the vote, and one ttt_vote run gives both (sdft/ttt_run.py reads `ttt` from its first view).
The first answer after a fit carries the fit's seconds, so the mean of `seconds` is the cost per instance."""

from __future__ import annotations

import dataclasses
import math
import random
import time
import zlib

from sdft.adapters import reset_adapters, restore_adapters, snapshot_adapters
from sdft.config import Config
from sdft.errors import UserError
from sdft.generation import generate_texts
from sdft.inference.fewshot_prompt import fewshot_prompt, labelled_example
from sdft.inference.ttt_data import query_views, training_samples, vote
from sdft.methods.fit import fit_adapter
from sdft.scoring import get_scorer, is_judged
from sdft.tasks.augment import AUGMENTATIONS


class TestTimeTraining:
    """The `ttt` (identity view) and `ttt_vote` (ttt.votes views) predictors."""

    def __init__(self, cfg: Config, vote_views: bool):
        self.ttt, self.seed = cfg.ttt, cfg.seed
        self.name = "ttt_vote" if vote_views else "ttt"
        self.views = cfg.ttt.votes if vote_views else 1
        self.augmentations = [AUGMENTATIONS[name] for name in cfg.ttt.augmentations]
        self._shared: list | None = None  # scope shared: every task's demos (prepare)
        self._fitted: dict[str, tuple] = {}  # scope shared: the fitted adapter and its record

    def settings(self) -> dict:
        return {**dataclasses.asdict(self.ttt), "seed": self.seed, "views": self.views}

    def prepare(self, tasks) -> None:
        """The tasks this predictor will answer: with scope 'shared', the one adapter learns from all their demos."""
        self._shared = _distinct([row.demos for task in tasks for row in task.rows("test")])

    def answer(self, loaded, task, rows, todo, ev, seed):
        if is_judged(task.scorer):
            raise UserError(f"task '{task.name}': test-time training scores views itself; a judged scorer is not supported")
        score = get_scorer(task.scorer)
        try:
            for key, indices in self._groups(task, rows, todo):
                started = time.perf_counter()
                fit = self._fit(loaded, task, key, self._group_demos(rows, indices), rows[indices[0]].instruction)
                for i in indices:
                    generation, extra = self._answer_row(loaded, task, rows[i], ev, score)
                    extra |= {"fit": fit, "seconds": time.perf_counter() - started}
                    yield [i], [[generation]], [extra]
                    started = time.perf_counter()
        finally:
            reset_adapters(loaded.model)

    def _groups(self, task, rows, todo) -> list[tuple[str, list[int]]]:
        """(scope key, row indices to answer with its adapter), in row order."""
        if self.ttt.scope == "instance":
            return [(f"{task.name}/{i}", [i]) for i in todo]
        key = task.name if self.ttt.scope == "task" else "shared"
        return [(key, list(todo))] if todo else []

    def _group_demos(self, rows, indices) -> list:
        if self.ttt.scope == "shared":
            return self._shared if self._shared is not None else _distinct([rows[i].demos for i in indices])
        if self.ttt.scope == "task":
            return _distinct([row.demos for row in rows])  # the whole split's, so a resumed run fits the same adapter
        return [rows[indices[0]].demos]

    def _fit(self, loaded, task, key: str, demo_sets: list, instruction: str | None) -> dict:
        """Reset the adapter and fit it on every demo set's samples (capped at N in all); the fit's record. The shared
        adapter is fitted once and restored for the next task."""
        if key in self._fitted:
            restore_adapters(loaded.model, self._fitted[key][0])
            return self._fitted[key][1]
        ttt, seed = self.ttt, self.seed * 1_000_003 + zlib.crc32(key.encode())
        rng, built, samples = random.Random(seed), 0, []
        for demos in demo_sets:
            part, count = training_samples(demos, ttt.leave_out, ttt.permutations, self.augmentations,
                                           ttt.max_samples, rng)
            samples, built = samples + part, built + count
        samples = list(dict.fromkeys(samples))
        rng.shuffle(samples)
        samples = samples[: ttt.max_samples]
        examples = [labelled_example(loaded.tokenizer, s.context, s.query, ttt.layout, ttt.loss_on, instruction,
                                     task.system_prompt) for s in samples]
        steps = math.ceil(ttt.epochs * len(examples) / ttt.batch_size)
        reset_adapters(loaded.model)
        result = fit_adapter(loaded.model, loaded.tokenizer, examples, steps, ttt.learning_rate, ttt.batch_size, seed,
                             warmup_ratio=ttt.warmup_ratio, cosine=ttt.cosine)
        record = {"scope": key, "samples_built": built, "samples": len(examples), "steps": steps,
                  "loss_before": result.loss_before, "loss_after": result.loss_after, "seconds": result.seconds}
        if key == "shared":
            self._fitted[key] = (snapshot_adapters(loaded.model), record)
        return record

    def _answer_row(self, loaded, task, row, ev, score) -> tuple:
        """The voted generation, and the record's answers per view (mapped back), vote and identity-view score."""
        rng = random.Random(f"{self.seed}-views-{row.prompt}")
        views = query_views(row.demos, row.prompt, self.views, self.augmentations, rng)
        prompts = [fewshot_prompt(loaded.tokenizer, v.demos, v.query, self.ttt.layout, row.instruction,
                                  task.system_prompt)[0] for v in views]
        generations, started = [None] * len(views), time.perf_counter()
        for batch, completions in generate_texts(loaded, prompts, ev.sampling, ev.max_new_tokens, 1, ev.batch_size,
                                                 self.seed):
            for b, per_row in zip(batch, completions):
                generations[b] = per_row[0]
        answers = [v.inverse(g.text) for v, g in zip(views, generations)]
        winner = vote(answers)
        chosen = dataclasses.replace(generations[winner], text=answers[winner])
        return chosen, {"answers": answers, "vote": winner, "generate_seconds": time.perf_counter() - started,
                        "metrics": {"first_view": score(answers[0], row.answer)}}


def _distinct(demo_sets) -> list:
    return list(dict.fromkeys(tuple(d) for d in demo_sets))
