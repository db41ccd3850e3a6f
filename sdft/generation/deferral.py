"""Co-LLM's decoding (METHOD.md 3.2): greedy, a base model and an expert, each with its own KV cache, the base's
deferral head choosing at every step who writes the next token.

The base runs every step (its hidden state feeds the head). The expert runs only at steps where some row defers:
its cache is then caught up on the tokens written since its last call (in one forward), so it always sees the whole
text, whoever wrote it; rows that finished leave both caches (the native sampler's compaction). A row defers where
the head's logit z > logit(eta), so eta = 1 never defers (the base's greedy output, token for token) and eta = 0
always does (with `defer`, the expert's greedy output). `defer` takes the expert's argmax, `compose` the argmax of
(1 - s) p_base + s p_expert. The KV-cache pieces are the native sampler's (native.py, lean_decode.py, base.py)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from sdft.generation.base import (
    CACHE_KWARG,
    Rollout,
    _new_cache,
    completion_from_tokens,
    prompt_pass,
)
from sdft.generation.lean_decode import lean_decoder
from sdft.generation.native import _decoding_cache, drop_finished


@dataclass
class DeferralRollout:
    rollout: Rollout
    deferred: Tensor
    """[B, T] bool: the expert chose this token (False after a row's end)."""


def threshold_logit(threshold: float) -> float:
    """eta as a bound on the head's logit: 0 -> -inf, 1 -> +inf (exact at both ends, where sigmoid would round)."""
    if threshold <= 0:
        return -math.inf
    if threshold >= 1:
        return math.inf
    return math.log(threshold) - math.log1p(-threshold)


class _Base:
    """The base model's side: every step, logits and the last hidden state."""

    def __init__(self, model, prompt_ids: Tensor, prompt_mask: Tensor, capacity: int):
        from sdft.methods.collm import causal_parts

        self.inner, self.lm_head = causal_parts(model)
        self.lean = lean_decoder(model)
        self.cache = _new_cache(self.inner)
        positions = (prompt_mask.cumsum(dim=1) - 1).clamp(min=0)
        out = self.inner(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=positions, use_cache=True,
                         **{CACHE_KWARG: self.cache})
        self.cache = _decoding_cache(self.cache, capacity) or self.cache
        self.hidden = out.last_hidden_state[:, -1]
        self.logits = self.lm_head(self.hidden)

    def step(self, token: Tensor, mask: Tensor, positions: Tensor) -> None:
        if self.lean is not None:
            self.logits, self.hidden = self.lean.step_hidden(token, self.cache, mask, positions)
            return
        out = self.inner(input_ids=token[:, None], attention_mask=mask, position_ids=positions, use_cache=True,
                         **{CACHE_KWARG: self.cache})
        self.hidden = out.last_hidden_state[:, -1]
        self.logits = self.lm_head(self.hidden)


class _Expert:
    """The expert's side: prefilled at the first deferral, caught up whenever it is asked for the next token."""

    def __init__(self, model, capacity: int):
        self.model, self.capacity, self.cache, self.fed = model, capacity, None, 0
        self.lean = lean_decoder(model)
        self.calls = 0

    def next_logits(self, prompt_ids: Tensor, mask: Tensor, tokens: Tensor, position: Tensor, step: int) -> Tensor:
        """[A, V] logits of the token at `step`, after feeding the expert what it has not seen (tokens [A, step])."""
        width = prompt_ids.shape[1]
        logits = None
        if self.cache is None:
            prefill = prompt_pass(self.model, prompt_ids, mask[:, :width])
            self.cache = _decoding_cache(prefill.cache, self.capacity) or prefill.cache
            logits, self.fed = prefill.last_logits, 0
        new = tokens[:, self.fed : step]
        if new.shape[1] == 1 and self.lean is not None:
            logits = self.lean.step(new[:, 0], self.cache, mask[:, : width + step], position + self.fed)
        elif new.shape[1] > 0:
            positions = position + self.fed + torch.arange(new.shape[1], device=new.device)
            out = self.model(input_ids=new, attention_mask=mask[:, : width + step], position_ids=positions,
                             use_cache=True, **{CACHE_KWARG: self.cache})
            logits = out.logits[:, -1]
        self.fed, self.calls = step, self.calls + 1
        return logits

    def keep(self, rows: Tensor) -> None:
        if self.cache is not None:
            self.cache.batch_select_indices(rows)


@torch.no_grad()
def defer_decode(base, deferral_logit: Callable[[Tensor], Tensor], expert, prompt_ids: Tensor, prompt_mask: Tensor,
                 threshold: float, strategy: str, max_new_tokens: int, eos_id: int, pad_id: int) -> DeferralRollout:
    """Greedy completions of left-padded prompts by the pair; `deferral_logit(hidden [A, H]) -> z [A]`."""
    batch, width = prompt_mask.shape
    cut = threshold_logit(threshold)
    side = _Base(base, prompt_ids, prompt_mask, width + max_new_tokens)
    helper = _Expert(expert, width + max_new_tokens)
    mask = torch.cat([prompt_mask, prompt_mask.new_ones(batch, max_new_tokens)], dim=1)
    position = prompt_mask.sum(dim=1, keepdim=True)
    tokens = torch.full((batch, max_new_tokens), pad_id, dtype=torch.long, device=prompt_mask.device)
    deferred = torch.zeros_like(tokens, dtype=torch.bool)
    active = torch.arange(batch, device=prompt_mask.device)
    for step in range(max_new_tokens):
        z = deferral_logit(side.hidden).float()
        defer = z > cut
        token = side.logits.argmax(dim=-1)
        if defer.any():
            expert_logits = helper.next_logits(prompt_ids[active], mask, tokens[active], position, step)
            token = torch.where(defer, _expert_choice(strategy, side.logits, expert_logits, z), token)
        tokens[active, step], deferred[active, step] = token, defer
        going = token != eos_id
        if step + 1 == max_new_tokens or not going.any():
            break
        if not going.all():
            keep, (active, token, mask, position) = drop_finished(going, side.cache, active, token, mask, position)
            helper.keep(keep)
        side.step(token, mask[:, : width + step + 1], position + step)
    rollout = completion_from_tokens(tokens[:, : step + 1], eos_id, pad_id)
    return DeferralRollout(rollout, deferred[:, : step + 1] & rollout.mask.bool())


def _expert_choice(strategy: str, base_logits: Tensor, expert_logits: Tensor, z: Tensor) -> Tensor:
    if strategy == "defer":
        return expert_logits.argmax(dim=-1)
    mixed = torch.logaddexp(F.logsigmoid(-z)[:, None] + base_logits.float().log_softmax(-1),
                            F.logsigmoid(z)[:, None] + expert_logits.float().log_softmax(-1))
    return mixed.argmax(dim=-1)
