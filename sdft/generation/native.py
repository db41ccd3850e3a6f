"""The native backend: completions from the current weights, drawing exactly the tokens `generate` draws.

A plain loop over a preallocated KV cache (no `generate`: its growing cache copies itself every token, and it keeps
computing finished rows until the last one ends), drawing exactly the tokens `generate` draws under the same seed.
A finished row leaves the batch by having a row from the end moved into its place in the same buffers. For
Llama-family models each token is one lean step (sdft/generation/lean_decode.py: the model's modules without the
generic forward's per-call overhead). The prefill is the student's prompt pass where the SDFT trainer shares it
(base.prompt_pass). Temperature 0 is greedy decoding (argmax), as `generate` does it.
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers.cache_utils import DynamicCache, DynamicLayer

from sdft.config import SamplingConfig
from sdft.generation.base import CACHE_KWARG, PromptPass, Rollout, completion_from_tokens, prompt_pass
from sdft.generation.lean_decode import lean_decoder


class NativeBackend:
    """sdft's own KV-cache sampler behind the generation interface (base.Backend)."""

    name = "native"

    @torch.no_grad()
    def sample(self, model, tokenizer, prompt_ids: Tensor, prompt_mask: Tensor, sampling: SamplingConfig,
               max_new_tokens: int, prefill: PromptPass | None = None, logprobs: bool = False) -> Rollout:
        """One completion per prompt from the current weights, decoded as `generate` does (greedy at temperature 0;
        else temperature, then top-p, then a multinomial draw per row; finished rows get the pad token): under the
        same seed the same tokens. `prefill`: a prompt pass to reuse (its cache is copied, never modified)."""
        was_training = model.training
        model.eval()
        capacity = prompt_mask.shape[1] + max_new_tokens
        try:
            cache = _decoding_cache(prefill.cache, capacity) if prefill is not None else None
            if cache is None:  # no prompt pass, or a cache we cannot copy: a prefill of our own, extended in place
                prefill = prompt_pass(model, prompt_ids, prompt_mask)
                cache = _decoding_cache(prefill.cache, capacity) or prefill.cache
            tokens, scores = _decode(model, cache, prefill.last_logits.detach(), prompt_mask, sampling, max_new_tokens,
                                     tokenizer, logprobs)
        finally:
            model.train(was_training)
        return completion_from_tokens(tokens, tokenizer.eos_token_id, tokenizer.pad_token_id, scores)


def _decode(model, cache, logits: Tensor, prompt_mask: Tensor, sampling: SamplingConfig, cap: int, tokenizer,
            want_logprobs: bool) -> tuple[Tensor, Tensor | None]:
    """[B, steps] drawn ids, pad after a row's eos (and their log-probs when asked). A finished row leaves the batch
    (its cache rows too), so the model only runs the rows still sampling; the random draws stay `generate`'s (see
    sample_token)."""
    batch, width = prompt_mask.shape
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    mask = torch.cat([prompt_mask, prompt_mask.new_ones(batch, cap)], dim=1)
    position = prompt_mask.sum(dim=1, keepdim=True)  # the next token's position: the number of real prompt tokens
    tokens = torch.full((batch, cap), pad, dtype=torch.long, device=prompt_mask.device)
    scores = torch.zeros((batch, cap), device=prompt_mask.device) if want_logprobs else None
    active = torch.arange(batch, device=prompt_mask.device)  # the rows still sampling, in the cache's order
    lean = lean_decoder(model)  # the same logits as model(...) with less overhead per token, where supported
    for step in range(cap):
        token = next_token(logits, sampling, rows=active, batch=batch)
        tokens[active, step] = token
        if scores is not None:
            scores[active, step] = logits.float().log_softmax(dim=-1).gather(1, token[:, None]).squeeze(1)
        going = token != eos
        if step + 1 == cap or not going.any():
            break
        if not going.all():
            _, (active, token, mask, position) = drop_finished(going, cache, active, token, mask, position)
        if lean is not None:
            logits = lean.step(token, cache, mask[:, : width + step + 1], position + step)
        else:
            out = model(input_ids=token[:, None], attention_mask=mask[:, : width + step + 1],
                        position_ids=position + step, use_cache=True, **{CACHE_KWARG: cache})
            logits = out.logits[:, -1]
    return tokens[:, : step + 1], None if scores is None else scores[:, : step + 1]


def drop_finished(going: Tensor, cache, *rows: Tensor) -> tuple[Tensor, list[Tensor]]:
    """Compact a decoding batch to the rows still going: the KV cache in place, and each per-row tensor in `rows`;
    returns the kept order (for anything else that must follow it) and the compacted tensors."""
    keep = _filled_holes_order(going)
    cache.batch_select_indices(keep)
    return keep, [row[keep] for row in rows]


def _filled_holes_order(going: Tensor) -> Tensor:
    """The rows to keep, as `batch_select_indices` takes them: the n rows still going, those among the first n where
    they are and the rest moved into the finished rows' places, so that a compaction moves one row per finished row
    inside the first n instead of shifting every row behind it."""
    kept = int(going.sum())
    order = torch.arange(kept, device=going.device)
    alive = going.nonzero().squeeze(1)
    order[(~going[:kept]).nonzero().squeeze(1)] = alive[alive >= kept]
    return order


def next_token(logits: Tensor, sampling: SamplingConfig, rows: Tensor | None = None, batch: int | None = None) -> Tensor:
    """Greedy (argmax, as `generate` without sampling) at temperature 0; else a draw by sample_token."""
    if sampling.temperature == 0:
        return logits.argmax(dim=-1)
    return sample_token(logits, sampling.temperature, sampling.top_p, rows=rows, batch=batch)


def sample_token(logits: Tensor, temperature: float, top_p: float, rows: Tensor | None = None,
                 batch: int | None = None) -> Tensor:
    """Token ids for the rows of `logits`, as transformers' TemperatureLogitsWarper, TopPLogitsWarper and multinomial
    draw: fp32 scores divided by the temperature; the smallest-probability tokens whose cumulative mass is <= 1 - top_p
    removed (the most probable token always kept); then a categorical draw.

    The draw is torch.multinomial(probs, 1)'s own: argmax(probs / q) with q ~ Exp(1) drawn as one tensor of the
    batch's shape (ATen's fast path for one sample). Drawing q for the whole `batch` while only `rows` of it are
    still sampling keeps the random stream of `generate`, which samples every row until all have finished."""
    scores = logits.float()
    if temperature != 1.0:
        scores = scores / temperature
    if top_p < 1.0:
        ordered, order = torch.sort(scores, descending=False)
        remove = ordered.softmax(dim=-1).cumsum(dim=-1) <= (1 - top_p)
        remove[..., -1:] = False
        scores = scores.masked_fill(remove.scatter(1, order, remove), -float("inf"))
    probs = torch.softmax(scores, dim=-1)
    noise = probs.new_empty((batch or probs.shape[0], probs.shape[1])).exponential_()
    return (probs / (noise if rows is None else noise[rows])).argmax(dim=-1)


def _decoding_cache(prompt_cache, capacity: int) -> DynamicCache | None:
    """A cache for decoding that holds the prompt's keys and values (detached) in buffers of `capacity` positions, so
    each new token is a write, not a copy of the whole cache; None when the cache has layers of another kind (sliding
    windows, ...), and then the prompt cache itself is extended."""
    layers = getattr(prompt_cache, "layers", None)
    if not layers or any(type(layer) is not DynamicLayer or not layer.is_initialized for layer in layers):
        return None
    cache = DynamicCache()
    cache.layers = [PreallocatedLayer(layer.keys.detach(), layer.values.detach(), capacity) for layer in layers]
    return cache


class PreallocatedLayer(DynamicLayer):
    """A DynamicLayer whose keys and values live in buffers of fixed capacity; `keys` and `values` are views of the
    filled part, which is what attention reads."""

    def __init__(self, keys: Tensor, values: Tensor, capacity: int):
        super().__init__()
        self._keys = keys.new_empty(*keys.shape[:2], capacity, keys.shape[3])
        self._values = values.new_empty(*values.shape[:2], capacity, values.shape[3])
        self.length = 0
        self.device, self.is_initialized = keys.device, True
        self.update(keys, values)

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        start, self.length = self.length, self.length + key_states.shape[-2]
        self._keys[:, :, start : self.length] = key_states
        self._values[:, :, start : self.length] = value_states
        self.keys, self.values = self._keys[:, :, : self.length], self._values[:, :, : self.length]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def batch_select_indices(self, indices: Tensor) -> None:
        """Keep the rows `indices` (row j becomes old row indices[j]) in the same buffers: only the rows that change
        place are copied, and only their filled part; the buffers keep their capacity and their memory."""
        self._keys, self._values = (self._select(buffer, indices) for buffer in (self._keys, self._values))
        self.keys, self.values = self._keys[:, :, : self.length], self._values[:, :, : self.length]

    def _select(self, buffer: Tensor, indices: Tensor) -> Tensor:
        moved = (indices != torch.arange(len(indices), device=indices.device)).nonzero().squeeze(1)
        filled = buffer[:, :, : self.length]
        filled[moved] = filled[indices[moved]]  # the sources are gathered before any row is written
        return buffer[: len(indices)]
