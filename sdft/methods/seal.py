"""SEAL's pieces (METHOD.md 3.3): a policy writes self-edits for a passage; an inner adapter fitted on a self-edit
scores it (closed-book accuracy on the passage's questions after the update, minus before); ReST-EM keeps each
passage's best self-edit with a positive reward and fits the policy on (passage prompt -> self-edit).

Everything here works on a LoadedModel whose model is wrapped with the inner adapter (sdft.adapters.wrap_with_lora):
each fit starts from `reset_adapters` and every score is taken with the adapter reset again afterwards, so the policy
itself never changes here except in `outer_sft`. The orchestration (rounds, records, resume) is sdft/seal_run.py."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

from sdft.adapters import reset_adapters, wrap_with_lora
from sdft.config import SamplingConfig
from sdft.config.seal import SealConfig
from sdft.errors import UserError
from sdft.generation import Generation, generate_texts
from sdft.methods.fit import Example, FitResult, examples_from_pairs, fit_adapter
from sdft.methods.harness import StageResult
from sdft.prompts import render_prompt
from sdft.scoring import JUDGED, get_scorer, is_judged
from sdft.tasks.articles import ORACLE_TEMPLATE, SELF_EDIT_TEMPLATES
from sdft.tasks.passages import Passage

GREEDY = SamplingConfig(temperature=0.0)
"""The paper answers questions greedily."""


@dataclass
class Scored:
    """One self-edit and what it earned."""

    text: str
    lines: list[str]
    hit_cap: bool
    tokens: int
    """The self-edit's length in generated tokens (its eos included)."""
    accuracy: float
    """Closed-book accuracy after the update (mean over eval_times); the no-update accuracy for an empty self-edit."""
    reward: float
    """accuracy - the no-update accuracy; 0 for an empty self-edit (a no-op update, as in SEAL's code)."""

    @property
    def empty(self) -> bool:
        return not self.lines

    def record(self) -> dict:
        return {"text": self.text, "lines": len(self.lines), "hit_cap": self.hit_cap, "tokens": self.tokens,
                "empty": self.empty,
                "accuracy": self.accuracy, "reward": self.reward}


def self_edit_prompt(passage: Passage, template: str) -> str:
    """The user turn asking for a self-edit (the templates of sdft/tasks/articles.py)."""
    return SELF_EDIT_TEMPLATES[template].format(title=passage.title, text=passage.text)


def sample_self_edits(loaded, passage: Passage, seal: SealConfig, n: int, seed: int) -> list[Generation]:
    """`n` self-edits of one passage, drawn with `seal.sampling` from the model (seeded: the same seed gives the
    same self-edits, whatever ran before)."""
    prompt = render_prompt(loaded.tokenizer, self_edit_prompt(passage, seal.template))
    [(_, [generations])] = list(generate_texts(loaded, [prompt], seal.sampling, seal.max_self_edit_tokens,
                                               samples=n, seed=seed))
    return generations


def self_edit_lines(text: str) -> list[str]:
    """The self-edit's training lines: its non-empty lines, stripped."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def inner_examples(tokenizer, passage: Passage, lines: Sequence[str]) -> list[Example]:
    """The inner fit's sequences (paper): the raw passage, then each self-edit line prefixed with the title; raw text
    (no chat template), ending with the eos token, every token learned (as continued pre-training trains)."""
    texts = [f"{passage.title}\n{passage.text}", *(f"{passage.title}\n{line}" for line in lines)]
    ids = [[*row, tokenizer.eos_token_id] for row in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    return [{"input_ids": row, "labels": list(row)} for row in ids]


@dataclass
class Answering:
    """How a passage's questions are answered and graded: greedily (the paper), at most `max_new_tokens` each,
    `batch_size` at a time, graded by the passage's scorer; a judged scorer (the paper world's) by `judge`."""

    max_new_tokens: int
    batch_size: int
    judge: object | None = None
    """An sdft.judge.Judge, needed only when a passage's scorer is judged (sdft.scoring.JUDGED)."""

    def grade(self, passage: Passage, answers: Sequence[str]) -> list[float]:
        if not is_judged(passage.scorer):
            scorer = get_scorer(passage.scorer)
            return [float(scorer(a, ref)) for a, (_, ref) in zip(answers, passage.questions)]
        if self.judge is None:
            raise UserError(f"the passage {passage.title!r} is graded by a judge ({passage.scorer}): configure "
                            "eval.judge")
        items = [(q, ref, a) for a, (q, ref) in zip(answers, passage.questions)]
        return [grade.score for grade in self.judge.grade_many(JUDGED[passage.scorer], items)]


def answer_accuracy(loaded, passage: Passage, answering: Answering, oracle: bool = False) -> float:
    """Greedy answers to the passage's questions, graded by the passage's scorer: closed book (the bare question),
    or with the passage in the prompt (`oracle`, the knowledge task's oracle template)."""
    users = [ORACLE_TEMPLATE.format(title=passage.title, text=passage.text, question=q) if oracle else q
             for q, _ in passage.questions]
    prompts = [render_prompt(loaded.tokenizer, user) for user in users]
    answers: list[str] = [""] * len(prompts)
    for indices, generations in generate_texts(loaded, prompts, GREEDY, answering.max_new_tokens,
                                               batch_size=answering.batch_size):
        for i, (generation,) in zip(indices, generations):
            answers[i] = generation.text
    return sum(answering.grade(passage, answers)) / len(prompts)


def updated_accuracy(loaded, passage: Passage, lines: Sequence[str], seal: SealConfig, seed: int,
                     answering: Answering) -> float:
    """Closed-book accuracy after fitting the reset inner adapter on the passage + `lines`, averaged over
    `seal.eval_times` fits (fit i draws its data order from seed + i); the adapter is reset again afterwards."""
    examples = inner_examples(loaded.tokenizer, passage, lines)
    steps = math.ceil(seal.inner_epochs * len(examples) / seal.inner_batch_size)
    accuracies = []
    for i in range(seal.eval_times):
        reset_adapters(loaded.model)
        fit_adapter(loaded.model, loaded.tokenizer, examples, steps, seal.inner_learning_rate,
                    seal.inner_batch_size, seed + i)
        accuracies.append(answer_accuracy(loaded, passage, answering))
    reset_adapters(loaded.model)
    return sum(accuracies) / len(accuracies)


def score_self_edit(loaded, passage: Passage, generation: Generation, baseline: float, seal: SealConfig, seed: int,
                    answering: Answering) -> Scored:
    """A self-edit's reward: accuracy after its update minus `baseline` (the no-update accuracy). An empty self-edit
    (no line) is a no-op update with reward 0."""
    lines = self_edit_lines(generation.text)
    if not lines:
        return Scored(generation.text, [], generation.hit_cap, len(generation.token_ids), baseline, 0.0)
    accuracy = updated_accuracy(loaded, passage, lines, seal, seed, answering)
    return Scored(generation.text, lines, generation.hit_cap, len(generation.token_ids), accuracy, accuracy - baseline)


def best_self_edit(rewards: Sequence[float]) -> int | None:
    """ReST-EM's selection: the index of the highest reward when it is > 0 (ties: the earliest sampled), else None."""
    if not rewards or max(rewards) <= 0:
        return None
    return max(range(len(rewards)), key=lambda i: (rewards[i], -i))


def outer_sft(loaded, pairs: Sequence[tuple[str, str]], seal: SealConfig, seed: int) -> tuple[object, FitResult]:
    """ReST-EM's SFT: fit a fresh outer adapter on (self-edit prompt -> kept self-edit) as SFT trains a row (the prompt
    in the chat template, no loss; the self-edit and eos learned), then merge it. `loaded.model` must be the plain
    policy (no adapter); returns the merged policy (with the adapter still attached, for merge_and_save) and the fit."""
    wrapped = wrap_with_lora(loaded.model, seal.outer_lora, seed)
    examples = examples_from_pairs(loaded.tokenizer, pairs)
    steps = math.ceil(seal.outer_epochs * len(examples) / seal.outer_batch_size)
    fit = fit_adapter(wrapped, loaded.tokenizer, examples, steps, seal.outer_learning_rate, seal.outer_batch_size, seed)
    return wrapped, fit


def train_seal(stage) -> StageResult:
    """`train.method: seal`, SEAL's update on a task's articles (METHOD.md 3.3, the continual self-edit experiment):
    for each article in turn the writer (`seal.writer`, or the model itself) writes one self-edit (seal.template,
    seal.sampling), an adapter (seal.inner_lora) is fitted on the article + the self-edit's lines exactly as the
    inner loop fits the self-edits it rewards (seal.inner_epochs, inner_learning_rate, inner_batch_size), and merged
    before the next article; an empty self-edit is a counted no-op. train.steps and train.learning_rate do not apply: the update is the one SEAL's reward
    selects self-edits for. The self-edits are recorded in the stage's self_edits.jsonl; the merged model is saved
    whole in model/. A stage stopped midway starts again (its draws are seeded: the rerun is the same)."""
    import dataclasses

    from sdft.files import atomic_write_text
    from sdft.methods.harness import save_model
    from sdft.models import load_model
    from sdft.tasks.passages import passages_of

    cfg, seal, loaded = stage.cfg, stage.cfg.seal, stage.loaded
    writer = loaded if seal.writer is None else load_model(
        dataclasses.replace(cfg.model, name_or_path=seal.writer, revision=None))
    records, steps = [], 0
    for passage in passages_of(stage.task, cfg.train.split):
        seed = draw_seed(cfg.seed, "update", passage.title)
        [generation] = sample_self_edits(writer, passage, seal, 1, seed)
        lines = self_edit_lines(generation.text)
        record = {"title": passage.title, "self_edit": generation.text, "lines": len(lines), "empty": not lines,
                  "hit_cap": generation.hit_cap, "steps": 0}
        if lines:  # an empty self-edit is a no-op update, as in the inner loop (and SEAL's code)
            examples = inner_examples(loaded.tokenizer, passage, lines)
            record["steps"] = math.ceil(seal.inner_epochs * len(examples) / seal.inner_batch_size)
            loaded.model = wrap_with_lora(loaded.model, seal.inner_lora, seed)
            fit = fit_adapter(loaded.model, loaded.tokenizer, examples, record["steps"], seal.inner_learning_rate,
                              seal.inner_batch_size, seed)
            loaded.model = loaded.model.merge_and_unload()
            record.update(loss_before=fit.loss_before, loss_after=fit.loss_after, seconds=fit.seconds)
        steps += record["steps"]
        records.append(record)
    atomic_write_text(stage.run_dir / "self_edits.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    metrics = {"articles": len(records), "empty_self_edits": sum(r["empty"] for r in records),
               "self_edit_lines": sum(r["lines"] for r in records)}
    return StageResult(steps, metrics, save_model(loaded.model, loaded.tokenizer, stage.model_dir))


def draw_seed(seed: int, *parts) -> int:
    """A seed for one draw (a sampling, a fit), fixed by the run's seed and what the draw is for, e.g. ("fit", title):
    a resumed run draws the same, whatever ran before it."""
    import hashlib

    return int(hashlib.sha256(repr((seed, *parts)).encode()).hexdigest()[:8], 16)
