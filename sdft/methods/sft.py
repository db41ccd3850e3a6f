"""The SFT and DFT baselines, trained by one Hugging Face Trainer session (hf_session.py): next-token loss on the
demonstration (plus the eos token, so the model learns to stop) given the student's chat prompt; DFT weights each
token's loss by its detached probability (TRL's `loss_type="dft"`).

The rows are tokenised by sdft/methods/tokens.py, so the tokens trained are exactly the tokens checked against the
length caps: no special tokens added, no second chat template, no truncation. With train.sharding=fsdp they train in the native loop instead (methods/sft_native.py)."""

from __future__ import annotations

from collections.abc import Sequence

from transformers import TrainerCallback

from sdft.methods.harness import StageResult
from sdft.methods.hf_session import train_on_examples
from sdft.methods.stage import Stage
from sdft.methods.tokens import demonstration_examples


def train_sft(stage: Stage, callbacks: Sequence[TrainerCallback] = ()) -> StageResult:
    """Train `stage` with SFT or DFT (cfg.train.method); `callbacks` are extra transformers callbacks."""
    examples, skipped = demonstration_examples(stage.train_rows(), stage.task, stage.loaded.tokenizer, stage.cfg.train)
    label = f"{stage.cfg.train.method} on {stage.task.name}"
    if stage.cfg.train.sharding == "fsdp":  # the Trainer would not shard on CPU: the native loop shards everywhere
        from sdft.methods.sft_native import train_on_examples_native

        return train_on_examples_native(stage, examples, label, {"skipped_rows": skipped})
    return train_on_examples(stage, examples, label, {"skipped_rows": skipped}, callbacks)
