"""Token-level plumbing of on-policy training: tokenised prompts (checked against their caps once, at
stage start), sampled completions, and logits on completion positions."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from sdft.config import TrainConfig
from sdft.console import err_console
from sdft.errors import UserError
from sdft.models import NEUTRAL_DECODING
from sdft.prompts import render_prompt, teacher_prompt
from sdft.tasks.spec import Row, TaskSpec


@dataclass(frozen=True)
class PreparedRow:
    """A training row tokenised once: the student's prompt and the teacher's (question + demonstration)."""

    row: Row
    student_ids: list[int]
    teacher_ids: list[int]


def prepare_rows(rows: list[Row], task: TaskSpec, tokenizer, cfg: TrainConfig) -> list[PreparedRow]:
    """Tokenise every row's prompts; a prompt over its cap is an error naming the row, or (with
    train.overlong_prompts: skip) a dropped row, counted and printed. Nothing is ever truncated."""
    prepared, skipped = [], []
    for number, row in enumerate(rows, start=1):
        student = _encode(tokenizer, render_prompt(tokenizer, row.prompt, task.system_prompt))
        teacher = _encode(tokenizer, render_prompt(tokenizer, teacher_prompt(row.prompt, row.demonstration), task.system_prompt))
        problem = _overlong(student, teacher, cfg)
        if problem is None:
            prepared.append(PreparedRow(row, student, teacher))
        elif cfg.overlong_prompts == "skip":
            skipped.append(number)
        else:
            raise UserError(f"task '{task.name}' split '{cfg.split}' row {number}: {problem}; raise the cap or set train.overlong_prompts=skip")
    if skipped:
        err_console.print(f"[yellow]skipped {len(skipped)} of {len(rows)} rows of '{task.name}' whose prompts exceed their caps (rows {skipped[:10]}{'...' if len(skipped) > 10 else ''})[/]")
    if not prepared:
        raise UserError(f"task '{task.name}': no training row fits the prompt caps")
    return prepared


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _overlong(student: list[int], teacher: list[int], cfg: TrainConfig) -> str | None:
    if len(student) > cfg.max_prompt_tokens:
        return f"the prompt has {len(student)} tokens, over train.max_prompt_tokens={cfg.max_prompt_tokens}"
    if len(teacher) > cfg.max_teacher_prompt_tokens:
        return f"the teacher prompt has {len(teacher)} tokens, over train.max_teacher_prompt_tokens={cfg.max_teacher_prompt_tokens}"
    return None


def left_pad(sequences: list[list[int]], pad_id: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """[B, L] ids and attention mask, padded on the left so every prompt ends at the same column."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, sequence in enumerate(sequences):
        ids[i, width - len(sequence) :] = torch.tensor(sequence, dtype=torch.long)
        mask[i, width - len(sequence) :] = 1
    return ids.to(device), mask.to(device)


@dataclass
class Rollout:
    """Sampled completions, right-padded: mask is 1 on real tokens (up to and including the eos token)."""

    ids: Tensor
    mask: Tensor
    hit_cap: Tensor
    """[B] bool: generation stopped at the length cap, with no eos token."""


@torch.no_grad()
def sample_completions(model, tokenizer, prompt_ids: Tensor, prompt_mask: Tensor, cfg: TrainConfig) -> Rollout:
    """One completion per prompt from the current weights (temperature / top-p sampling, KV cache)."""
    was_training = model.training
    model.eval()
    output = model.generate(
        input_ids=prompt_ids, attention_mask=prompt_mask, do_sample=True, **NEUTRAL_DECODING,
        temperature=cfg.rollout_temperature, top_p=cfg.rollout_top_p,
        max_new_tokens=cfg.max_completion_tokens, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, use_cache=True,
    )
    model.train(was_training)
    return completion_from_tokens(output[:, prompt_ids.shape[1] :], tokenizer.eos_token_id, tokenizer.pad_token_id)


def completion_from_tokens(tokens: Tensor, eos_id: int, pad_id: int) -> Rollout:
    """Mask everything after the first eos token (generate pads finished rows)."""
    is_eos = tokens == eos_id
    ended = is_eos.any(dim=1)
    after_eos = (is_eos.long().cumsum(dim=1) - is_eos.long()) > 0  # strictly after the first eos
    mask = (~after_eos).long()
    return Rollout(ids=tokens.masked_fill(after_eos, pad_id), mask=mask, hit_cap=~ended)


def completion_logits(model, prefix_ids: Tensor, prefix_mask: Tensor, rollout: Rollout) -> Tensor:
    """[B, T, V] logits predicting each completion token, from prefix (left-padded) + completion.

    Position ids follow the attention mask, so left padding gives the same logits as an unpadded prompt;
    only the T positions that predict completion tokens are projected to the vocabulary."""
    ids = torch.cat([prefix_ids, rollout.ids], dim=1)
    mask = torch.cat([prefix_mask, rollout.mask], dim=1)
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    width = rollout.ids.shape[1]
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=width + 1).logits
    return logits[:, :-1]
