"""What every generation backend shares: left-padded prompt tensors, the KV-cache prompt pass (prefill), the
sampled tokens as a right-padded `Rollout`, and per-completion `Generation` records.

A backend (hf.py, native.py; later vLLM) implements `Backend.sample`: token ids in, token ids out, on tensors, so
that the SDFT trainer can hand it a prompt pass it already computed. `sdft.generation.generate_texts` turns text
prompts into batches for it and its tokens into `Generation` records for evaluation and the local judge.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Protocol

import torch
from torch import Tensor
from transformers.cache_utils import DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast

from sdft.config import SamplingConfig


@dataclass
class Generation:
    """One completion of one prompt."""

    token_ids: list[int]
    """The generated tokens, up to and including the eos token (no padding)."""
    text: str
    """The decoded completion, special tokens dropped."""
    hit_cap: bool
    """True when generation stopped at the length cap without an end-of-sequence token."""
    logprobs: list[float] | None = None
    """log p(token) under the model (temperature 1) per generated token, where the backend computes them."""


@dataclass
class Rollout:
    """Sampled completions, right-padded: mask is 1 on real tokens (up to and including the eos token)."""

    ids: Tensor
    mask: Tensor
    hit_cap: Tensor
    """[B] bool: generation stopped at the length cap, with no eos token."""
    logprobs: Tensor | None = None
    """[B, T] log p(token) under the model (temperature 1), where the backend computes them; 0 after the end."""


class Backend(Protocol):
    """A way to draw completions from a causal LM: `sample` gets left-padded prompts and returns their rollouts,
    decoded with `sampling` (temperature 0 = greedy) up to `max_new_tokens`. `prefill`, when given, is the model's
    own pass over these prompts (its KV cache and last logits), which a backend may reuse instead of recomputing;
    backends that cannot use it ignore it. With `logprobs`, the rollout carries the tokens' log-probabilities."""

    name: str

    def sample(self, model, tokenizer, prompt_ids: Tensor, prompt_mask: Tensor, sampling: SamplingConfig,
               max_new_tokens: int, prefill: PromptPass | None = None, logprobs: bool = False) -> Rollout: ...


def left_pad(sequences: list[list[int]], pad_id: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """[B, L] ids and attention mask, padded on the left so every prompt ends at the same column."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, sequence in enumerate(sequences):
        ids[i, width - len(sequence) :] = torch.tensor(sequence, dtype=torch.long)
        mask[i, width - len(sequence) :] = 1
    return ids.to(device), mask.to(device)


def completion_from_tokens(tokens: Tensor, eos_id: int, pad_id: int, logprobs: Tensor | None = None) -> Rollout:
    """Mask everything after the first eos token (backends pad finished rows)."""
    is_eos = tokens == eos_id
    ended = is_eos.any(dim=1)
    after_eos = (is_eos.long().cumsum(dim=1) - is_eos.long()) > 0  # strictly after the first eos
    mask = (~after_eos).long()
    if logprobs is not None:
        logprobs = logprobs.masked_fill(after_eos, 0.0)
    return Rollout(ids=tokens.masked_fill(after_eos, pad_id), mask=mask, hit_cap=~ended, logprobs=logprobs)


def generations(rollout: Rollout, tokenizer, max_new_tokens: int) -> list[Generation]:
    """One Generation per rollout row. A row hit the cap when it has no eos token and reached max_new_tokens (a
    backend may stop earlier when every row has ended, so the width alone does not say it)."""
    lengths = rollout.mask.sum(dim=1).tolist()
    ids = [row[:n] for row, n in zip(rollout.ids.tolist(), lengths)]
    texts = tokenizer.batch_decode(rollout.ids, skip_special_tokens=True)
    capped = [bool(c) and n >= max_new_tokens for c, n in zip(rollout.hit_cap.tolist(), lengths)]
    logprobs = rollout.logprobs.tolist() if rollout.logprobs is not None else [None] * len(ids)
    return [Generation(i, t, c, None if lp is None else lp[: len(i)]) for i, t, c, lp in zip(ids, texts, capped, logprobs)]


# The forward keyword of a KV cache: transformers renamed `past_key_values` to `cache` within 5.x.
CACHE_KWARG = "cache" if "cache" in {f.name for f in fields(CausalLMOutputWithPast)} else "past_key_values"


def _new_cache(model) -> DynamicCache:
    config = getattr(getattr(model, "module", model), "config", None)  # through a DDP wrapper
    return DynamicCache(config=config) if config is not None else DynamicCache()


@dataclass
class PromptPass:
    """A forward pass over left-padded prompts: the KV cache and the logits predicting the first completion token.
    Computed with grad by the SDFT trainer, it is both the sampler's prefill and the first half of the student's
    training forward, so the prompt is run once per step instead of twice."""

    cache: object
    last_logits: Tensor
    mask: Tensor


def prompt_pass(model, prompt_ids: Tensor, prompt_mask: Tensor) -> PromptPass:
    cache = _new_cache(model)
    positions = (prompt_mask.cumsum(dim=1) - 1).clamp(min=0)  # left padding: the first real token is position 0
    out = model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=positions, use_cache=True,
                logits_to_keep=1, **{CACHE_KWARG: cache})
    return PromptPass(cache, out.logits[:, -1], prompt_mask)
