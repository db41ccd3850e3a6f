"""`sdft collm`, the training half: gold examples (demonstrations, and the general rows' targets), the expert's scores
of them, the deferral model, and its two phases (sdft/collm_steps.py holds each piece)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from sdft.collm_steps import (
    GoldSet,
    gold_examples,
    run_phase,
    score_examples,
    set_trainable,
    split_rows,
)
from sdft.config import Config
from sdft.eval_cache import model_fingerprint
from sdft.eval_service import EvalService
from sdft.methods.collm import DeferralModel
from sdft.models import LoadedModel
from sdft.tasks.spec import Row, TaskSpec


@dataclass
class TrainedDeferral:
    deferral: LoadedModel
    """model: the DeferralModel (base + head), in eval mode."""
    expert: LoadedModel
    expert_fingerprint: str
    sets: list[GoldSet]
    steps: dict[str, int]
    scores_computed: bool

    def summary(self) -> dict:
        return {"steps": self.steps, "scores_computed": self.scores_computed,
                "training_rows": {s.task.name: len(s.train) for s in self.sets},
                "validation_rows": {s.task.name: len(s.validation_rows) for s in self.sets}}


def train_deferral(cfg: Config, run_dir: Path, plan, base: LoadedModel, expert: LoadedModel,
                   service: EvalService) -> TrainedDeferral:
    sets = gold_sets(cfg, plan, base, service)
    fingerprint = model_fingerprint(expert.model)
    computed = [score_examples(run_dir, expert, fingerprint, s.task, s.train + s.validation, cfg.eval.batch_size)
                for s in sets]
    model = deferral_model(cfg, base)
    examples = [e for s in sets for e in s.train]
    steps = {}
    for phase in ("init", "train"):
        set_trainable(model, phase, cfg.collm.train_base)
        steps[phase] = run_phase(cfg, phase, model, base, plan.tasks[0], run_dir, examples)
    model.eval()
    deferral = LoadedModel(model, base.tokenizer, base.source, base.path, base.device)
    return TrainedDeferral(deferral, expert, fingerprint, sets, steps, any(computed))


def deferral_model(cfg: Config, base: LoadedModel) -> DeferralModel:
    """The base (with fresh LoRA adapters when collm.train_base is lora) and a zero head."""
    from sdft.adapters import wrap_with_lora

    model = base.model
    if cfg.collm.train_base == "lora":
        model = wrap_with_lora(model, dataclasses.replace(cfg.lora, enabled=True), seed=cfg.seed)
    hidden = model.config.get_text_config().hidden_size
    return DeferralModel(model, hidden).to(base.device)


def gold_sets(cfg: Config, plan, base: LoadedModel, service: EvalService) -> list[GoldSet]:
    """Each task's demonstrations, then each general task's targets (collm.general_targets), as gold examples."""
    sets = []
    for task in plan.tasks:
        train, validation = split_rows(cfg, task, general=False)
        sets.append(_gold_set(base, task, train, validation, None, False))
    for task in plan.general if cfg.collm.general_rows else []:
        train, validation = split_rows(cfg, task, general=True)
        answers = base_answers(service, base, task, train + validation, cfg.collm.split) \
            if cfg.collm.general_targets == "base" else None
        sets.append(_gold_set(base, task, train, validation, answers, True))
    return sets


def _gold_set(base: LoadedModel, task: TaskSpec, train: list[Row], validation: list[Row],
              answers: list[str | None] | None, general: bool) -> GoldSet:
    """Gold examples of the rows (a row whose base answer was wrong is left out of the examples, not of the
    validation rows that are decoded)."""
    def examples(rows: list[Row], offset: int):
        responses = [r.demonstration for r in rows] if answers is None else answers[offset : offset + len(rows)]
        kept = [(r, t) for r, t in zip(rows, responses) if t is not None]
        return gold_examples(base.tokenizer, task, [r for r, _ in kept], [t for _, t in kept])

    return GoldSet(task, examples(train, 0), examples(validation, len(train)), validation, general)


def base_answers(service: EvalService, base: LoadedModel, task: TaskSpec, rows: list[Row],
                 split: str) -> list[str | None]:
    """The base model's greedy answers to the rows (through the evaluation service: cached), None where wrong."""
    view = dataclasses.replace(task, splits={service.cfg.eval.split: rows},
                               version=f"{task.version}+collm-{split}-{len(rows)}")
    (evaluated,) = service.evaluate(base, [(view, False)])
    right = {s["row"]: s["response"] for s in evaluated.samples if s["score"] > 0 and not s["hit_cap"]}
    return [right.get(i) for i in range(len(rows))]  # rows past eval.limit get no answer
