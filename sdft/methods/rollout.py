"""Token-level plumbing of on-policy training: tokenised prompts (checked against their caps once, at
stage start) and logits on completion positions. Sampling is the generation interface's (sdft/generation/).

The hot path of an SDFT step, and why it is shaped this way (scripts/bench.py measures it):
- the student's prompt pass can be computed once, with grad: its KV cache is then the sampler's prefill and the
  first half of the student's training forward (`prompt_pass`, `student_completion_logits`; sdft.py decides when
  that pays);
- the native sampler (sdft/generation/native.py) is a plain loop over a preallocated KV cache that draws exactly `generate`'s tokens;
- the teacher's (and a plain student's) forward runs on each row's real tokens packed to the left: the width is the
  longest row, not the longest prompt plus the longest completion, and attention needs no mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from sdft.config import TrainConfig
from sdft.generation.base import CACHE_KWARG, PromptPass, Rollout
from sdft.methods.tokens import rows_within_caps, student_prompt_ids, teacher_prompt_ids
from sdft.tasks.spec import Row, TaskSpec


@dataclass(frozen=True)
class PreparedRow:
    """A training row tokenised once: the student's prompt and the teacher's (question + demonstration)."""

    row: Row
    student_ids: list[int]
    teacher_ids: list[int]


def prepare_rows(rows: list[Row], task: TaskSpec, tokenizer, cfg: TrainConfig) -> list[PreparedRow]:
    """Tokenise every row's prompts (the student's and the teacher's), checked against their caps by
    tokens.rows_within_caps: an error naming the row, or a skipped row, counted. Nothing is ever truncated."""
    students = student_prompt_ids(tokenizer, rows, task.system_prompt)
    teachers = teacher_prompt_ids(tokenizer, rows, task.system_prompt)
    lengths = [{"prompt": len(s), "teacher": len(t)} for s, t in zip(students, teachers)]
    return [PreparedRow(rows[i], students[i], teachers[i]) for i in rows_within_caps(task.name, cfg, lengths)]


def has_active_dropout(model) -> bool:
    """Whether training mode changes the forward pass (dropout modules, or attention dropout in the config): then
    a prompt pass in training mode is not the sampler's (eval-mode) prefill."""
    modules = any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules())
    config = getattr(model, "config", None)
    rates = [v for k, v in vars(config).items() if "dropout" in k and isinstance(v, float)] if config is not None else []
    return modules or any(rate > 0 for rate in rates)


def student_completion_logits(model, prompt: PromptPass, rollout: Rollout) -> Tensor:
    """[B, T, V] logits predicting each completion token: the prompt pass's last logits, then a forward pass over the
    completion (all but its last token) on top of the prompt's cache. With a prompt pass computed with grad this is
    the student's training forward, mathematically the one-pass `completion_logits`."""
    width = rollout.ids.shape[1]
    if width == 1:
        return prompt.last_logits[:, None]
    mask = torch.cat([prompt.mask, rollout.mask[:, :-1]], dim=1)
    positions = prompt.mask.sum(dim=1, keepdim=True) + torch.arange(width - 1, device=mask.device)
    out = model(input_ids=rollout.ids[:, :-1], attention_mask=mask, position_ids=positions, use_cache=True,
                **{CACHE_KWARG: prompt.cache})
    return torch.cat([prompt.last_logits[:, None], out.logits], dim=1)


def completion_logits(model, prefix_ids: Tensor, prefix_mask: Tensor, rollout: Rollout) -> Tensor:
    """[B, T, V] logits predicting each completion token, from prefix (left-padded) + completion.

    Each row's real tokens (prefix, then completion up to its eos) are packed to the left and the padding moved to
    the end, so plain causal attention (no mask) and natural positions give exactly an unpadded row's logits, over a
    width of the longest row instead of the longest prefix plus the longest completion (the two are equal only when
    the longest prefix draws the longest completion). Only positions from the shortest prefix's last token on are
    projected to the vocabulary; row i's completion logits are gathered from its own offset (positions past its eos
    repeat a real position: masked)."""
    ids = torch.cat([prefix_ids, rollout.ids], dim=1)
    real = torch.cat([prefix_mask, rollout.mask], dim=1).bool()
    width = int(real.sum(dim=1).max())
    packed = ids.new_zeros((ids.shape[0], width))  # any id will do after a row's end: causally unseen
    rows = torch.arange(ids.shape[0], device=ids.device)[:, None].expand_as(ids)
    packed[rows[real], (real.cumsum(dim=1) - 1)[real]] = ids[real]
    prefix_lengths = prefix_mask.sum(dim=1)
    keep = width - int(prefix_lengths.min()) + 1
    logits = model(input_ids=packed, logits_to_keep=keep).logits
    steps = torch.arange(rollout.ids.shape[1], device=ids.device)
    index = (prefix_lengths[:, None] - 1 + steps - (width - keep)).clamp(max=keep - 1)
    return logits.gather(1, index[..., None].expand(-1, -1, logits.shape[-1]))
