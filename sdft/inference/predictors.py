"""The predictor registry: a plain dict from name to a builder. A predictor answers some rows of a task split and
yields, as it goes, (row indices, the completions of each, extra record fields of each); sdft/evaluate.py scores and
stores them, so every predictor gets the evaluation cache, per-row resume and results.json.

student / teacher: the plain question / the SDFT teacher prompt with the row's demonstration (sdft eval, check);
zero_shot / icl: a few-shot row's query with none / all of its K demos in the prompt (ttt.layout);
ttt / ttt_vote: test-time training (ttt.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Callable, Protocol

from sdft.config import Config, EvalConfig
from sdft.errors import UserError
from sdft.generation import Generation, generate_texts
from sdft.inference.fewshot_prompt import fewshot_prompt
from sdft.prompts import render_prompt, teacher_prompt
from sdft.tasks.spec import Row, TaskSpec

Answers = Iterator[tuple[list[int], list[list[Generation]], list[dict]]]


class Predictor(Protocol):
    name: str

    def settings(self) -> dict:
        """What decides its answers besides the model, the rows and the generation settings (the cache key's)."""

    def prepare(self, tasks: list[TaskSpec]) -> None:
        """Told every task it will answer in this evaluation, before the first (a shared TTT adapter needs them)."""

    def answer(self, loaded, task: TaskSpec, rows: list[Row], todo: list[int], ev: EvalConfig, seed: int) -> Answers:
        """Answers for rows[i], i in todo, yielded as they are ready."""


class Direct:
    """One prompt per row, generated in batches through the generation interface. `timed` adds each row's share of
    its batch's seconds to its record (the few-shot predictors report seconds per instance)."""

    def __init__(self, name: str, prompt: Callable[[object, TaskSpec, Row], str], timed: bool = False, extra=None):
        self.name, self._prompt, self._timed, self._settings = name, prompt, timed, extra or {}

    def settings(self) -> dict:
        return self._settings

    def prepare(self, tasks: list[TaskSpec]) -> None:
        pass

    def answer(self, loaded, task, rows, todo, ev, seed) -> Answers:
        prompts = [self._prompt(loaded.tokenizer, task, rows[i]) for i in todo]
        started = time.perf_counter()
        for batch, completions in generate_texts(loaded, prompts, ev.sampling, ev.max_new_tokens, ev.samples,
                                                 ev.batch_size, seed):
            now = time.perf_counter()
            extra = {"seconds": (now - started) / len(batch)} if self._timed else {}
            started = now
            yield [todo[b] for b in batch], completions, [dict(extra) for _ in batch]


def student_prompt(tokenizer, task: TaskSpec, row: Row) -> str:
    return render_prompt(tokenizer, row.prompt, task.system_prompt)


def teacher_prompt_of(tokenizer, task: TaskSpec, row: Row) -> str:
    return render_prompt(tokenizer, teacher_prompt(row.prompt, row.demonstration), task.system_prompt)


def _fewshot(layout: str, with_demos: bool) -> Callable[[object, TaskSpec, Row], str]:
    def prompt(tokenizer, task: TaskSpec, row: Row) -> str:
        if not row.demos:
            raise UserError(f"task '{task.name}': a few-shot predictor needs rows with demos (sdft ttt's tasks)")
        demos = row.demos if with_demos else ()
        return fewshot_prompt(tokenizer, demos, row.prompt, layout, row.instruction, task.system_prompt)[0]

    return prompt


def _ttt(vote: bool) -> Callable[[Config], Predictor]:
    def build(cfg: Config) -> Predictor:
        from sdft.inference.ttt import TestTimeTraining

        return TestTimeTraining(cfg, vote)

    return build


PREDICTORS: dict[str, Callable[[Config], Predictor]] = {
    "student": lambda cfg: Direct("student", student_prompt),
    "teacher": lambda cfg: Direct("teacher", teacher_prompt_of),
    "zero_shot": lambda cfg: Direct("zero_shot", _fewshot(cfg.ttt.layout, False), True, {"layout": cfg.ttt.layout}),
    "icl": lambda cfg: Direct("icl", _fewshot(cfg.ttt.layout, True), True, {"layout": cfg.ttt.layout}),
    "ttt": _ttt(vote=False),
    "ttt_vote": _ttt(vote=True),
}


def predictor_name(kind: bool | str | Predictor) -> str:
    """A job's prompt kind: False / True (the plain / teacher prompt, as the commands have always passed it), a
    predictor's name, or a predictor built by its command (Co-LLM's holds an expert model in memory)."""
    if not isinstance(kind, (bool, str)):
        return kind.name
    return ("teacher" if kind else "student") if isinstance(kind, bool) else kind


def make_predictor(kind: bool | str | Predictor, cfg: Config) -> Predictor:
    if not isinstance(kind, (bool, str)):
        return kind
    name = predictor_name(kind)
    if name not in PREDICTORS:
        raise UserError(f"unknown predictor '{name}'; known: {', '.join(PREDICTORS)}")
    return PREDICTORS[name](cfg)
