"""Continued pre-training (`train.method: cpt`): next-token loss on every token of a task's raw corpus,
the paper's weakest knowledge-injection baseline (METHOD.md: 9/37/7 against SDFT's 89/100/98).

The corpus is the task's `extra["corpus"]` (the knowledge task's articles). Each document is tokenised on
its own (no chat template: this is raw text), ends with the eos token, and is cut into blocks of
train.max_completion_tokens tokens; no block spans two documents and nothing is dropped. The blocks are
trained by the same Hugging Face Trainer session as SFT (sdft/methods/hf_session.py: logging, checkpoints, resume, Ctrl-C),
with labels on every token. train.batch_size counts blocks per optimizer step.
"""

from __future__ import annotations

from collections.abc import Sequence

from transformers import TrainerCallback

from sdft.errors import UserError
from sdft.methods.harness import StageResult
from sdft.methods.hf_session import train_on_examples
from sdft.methods.stage import Stage


def corpus_blocks(task, tokenizer, block: int) -> list[list[int]]:
    """Token blocks of at most `block` tokens covering every document of the task's corpus."""
    corpus = task.extra.get("corpus")
    if not corpus:
        raise UserError(f"train.method 'cpt' trains on a task's raw corpus and task '{task.name}' has none "
                        "(the knowledge task has one: its articles)")
    if tokenizer.eos_token_id is None:
        raise UserError("the tokenizer has no eos token; cpt ends every document with it")
    blocks = []
    for ids in tokenizer(list(corpus), add_special_tokens=False)["input_ids"]:
        ids = [*ids, tokenizer.eos_token_id]
        blocks.extend(ids[start : start + block] for start in range(0, len(ids), block))
    return blocks


def train_cpt(stage: Stage, callbacks: Sequence[TrainerCallback] = ()) -> StageResult:
    """Train `stage` on its task's corpus; `callbacks` are extra transformers callbacks."""
    blocks = corpus_blocks(stage.task, stage.loaded.tokenizer, stage.cfg.train.max_completion_tokens)
    examples = [{"input_ids": ids, "labels": list(ids)} for ids in blocks]
    return train_on_examples(stage, examples, f"cpt on {stage.task.name}", {"corpus_blocks": len(blocks)}, callbacks)
