"""The method registry: one plain dict from a train.method name to what the rest of the toolkit needs to know about
it: how it trains (per engine), what an epoch counts, which length caps its rows meet, whether it keeps a teacher,
and what its dry run prints. No other module branches on a method's name; a new method is one entry here (and its
name in sdft.config.training.METHOD_NAMES, which a test keeps in step).

Training functions are imported when called: TRL and accelerate are slow to import, and the dry run needs none.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from sdft.config import Config, TrainConfig


def _train_sdft(stage):
    from sdft.methods.sdft import train_sdft

    return train_sdft(stage)


def _train_trl_sdft(stage):
    from sdft.methods.trl_engine import train_trl_sdft

    return train_trl_sdft(stage)


def _train_sft(stage):
    from sdft.methods.sft import train_sft

    return train_sft(stage)


def _train_cpt(stage):
    from sdft.methods.cpt import train_cpt

    return train_cpt(stage)


def _train_sft_reinvoke(stage):
    from sdft.methods.reinvoke import train_sft_reinvoke

    return train_sft_reinvoke(stage)


def _train_seal(stage):
    from sdft.methods.seal import train_seal

    return train_seal(stage)


def _articles(cfg: Config, task, tokenizer) -> int:
    return len(task.extra.get("articles", {}))


def _seal_steps(cfg: Config) -> str:
    s = cfg.seal
    return (f"per article ceil({s.inner_epochs} epochs x (the article + each self-edit line) / {s.inner_batch_size}) "
            "(seal.inner_*; train.steps does not apply; the lines are known once the self-edit is written)")


def _rows(cfg: Config, task, tokenizer) -> int:
    return len(task.rows(cfg.train.split, cfg.train.max_rows))


def _corpus_blocks(cfg: Config, task, tokenizer) -> int | None:
    from sdft.methods.cpt import corpus_blocks

    return len(corpus_blocks(task, tokenizer, cfg.train.max_completion_tokens)) if tokenizer is not None else None


def _rollout_tokens(t: TrainConfig) -> str:
    return (f"{t.batch_size} rollouts of <= {t.max_completion_tokens} generated; student forward+backward <= "
            f"{t.batch_size * (t.max_prompt_tokens + t.max_completion_tokens):,}; teacher forward <= "
            f"{t.batch_size * (t.max_teacher_prompt_tokens + t.max_completion_tokens):,}")


def _demonstration_tokens(t: TrainConfig) -> str:
    return f"<= {t.batch_size * (t.max_prompt_tokens + t.max_completion_tokens):,} ({t.batch_size} prompts + demonstrations)"


def _sft_then_rollout_tokens(t: TrainConfig) -> str:
    return (f"sft {_demonstration_tokens(t)}; then {t.reinvoke.steps} re-invoke steps of {t.batch_size} rollouts of "
            f"<= {t.max_completion_tokens} generated on general prompts")


def _block_tokens(t: TrainConfig) -> str:
    return f"<= {t.batch_size * t.max_completion_tokens:,} ({t.batch_size} corpus blocks)"


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    trainers: dict[str, Callable]
    """train.engine -> train(stage) -> StageResult."""
    unit: str
    """What an epoch passes over (and train.batch_size counts): 'rows' or 'corpus blocks'."""
    count_units: Callable[[Config, object, object], int | None]
    """(cfg, task, tokenizer) -> units in the training split (None when the tokenizer is needed and absent)."""
    caps: tuple[str, ...]
    """What its training rows are measured against (methods/tokens.py CAP_KEYS): the dry run checks the same."""
    teacher: str | None
    """Which teacher it keeps: 'train.teacher' (the config's), 'frozen' (always the stage start) or None: results
    record it, the memory estimate counts it."""
    logits_copies: int
    """[micro, sequence, vocabulary] tensors alive at once in a step (sdft: student logits, their gradient, teacher)."""
    sequence_tokens: Callable[[TrainConfig], int]
    """The longest training sequence, for the activation memory estimate."""
    tokens_per_step: Callable[[TrainConfig], str]
    """The dry run's tokens-per-step line."""
    hf_loss_type: str | None = None
    """TRL's SFTTrainer loss_type for the methods trained by the Hugging Face session."""
    steps_line: Callable[[Config], str] | None = None
    """The dry run's optimizer-steps line for a method whose steps are not train.steps / train.epochs (None: those)."""

    def teacher_kind(self, cfg: TrainConfig) -> str | None:
        """frozen / ema / live, or None for a method without a teacher."""
        return cfg.teacher if self.teacher == "train.teacher" else self.teacher

    def trainer(self, engine: str) -> Callable:
        return self.trainers[engine]

    def steps(self, cfg: TrainConfig, units: int) -> int:
        """Optimizer steps for train.epochs over `units` (train.steps when no epochs are set)."""
        if cfg.epochs is None:
            return cfg.steps
        return max(1, math.ceil(cfg.epochs * units / cfg.batch_size))


def _prompt_and_completion(t: TrainConfig) -> int:
    return t.max_prompt_tokens + t.max_completion_tokens


_DEMONSTRATIONS = dict(trainers={"native": _train_sft}, unit="rows", count_units=_rows, caps=("prompt", "completion"),
                       teacher=None, logits_copies=1, sequence_tokens=_prompt_and_completion,
                       tokens_per_step=_demonstration_tokens)

METHODS: dict[str, Method] = {
    "sdft": Method("sdft", "on-policy self-distillation from the model with the demonstration in its prompt",
                   trainers={"native": _train_sdft, "trl": _train_trl_sdft}, unit="rows", count_units=_rows,
                   caps=("prompt", "teacher"), teacher="train.teacher", logits_copies=3,
                   sequence_tokens=_prompt_and_completion,
                   tokens_per_step=_rollout_tokens),
    "sft": Method("sft", "next-token loss on the demonstration", hf_loss_type="nll", **_DEMONSTRATIONS),
    "dft": Method("dft", "SFT with each token's loss weighted by its detached probability", hf_loss_type="dft",
                  **_DEMONSTRATIONS),
    "cpt": Method("cpt", "continued pre-training: next-token loss on the task's raw corpus",
                  trainers={"native": _train_cpt}, unit="corpus blocks", count_units=_corpus_blocks, caps=(),
                  teacher=None, logits_copies=1, sequence_tokens=lambda t: t.max_completion_tokens,
                  tokens_per_step=_block_tokens, hf_loss_type="nll"),
    "sft_reinvoke": Method("sft_reinvoke", "SFT, then on-policy distillation from the stage-start model on general "
                           "prompts (train.reinvoke)", trainers={"native": _train_sft_reinvoke}, unit="rows",
                           count_units=_rows, caps=("prompt", "completion"), teacher="frozen", logits_copies=3,
                           sequence_tokens=_prompt_and_completion, tokens_per_step=_sft_then_rollout_tokens,
                           hf_loss_type="nll"),
    "seal": Method("seal", "SEAL's update: per article the model writes a self-edit, an adapter (seal.inner_lora) is "
                   "fitted on it + the article and merged", trainers={"native": _train_seal}, unit="articles",
                   count_units=_articles, caps=(), teacher=None, logits_copies=1,
                   sequence_tokens=lambda t: t.max_completion_tokens, steps_line=_seal_steps,
                   tokens_per_step=lambda t: "seal.inner_batch_size sequences (the article, or a self-edit line)"),
}


def method_of(cfg: Config) -> Method:
    return METHODS[cfg.train.method]
