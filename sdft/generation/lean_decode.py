"""One decoding step (one new token per row on top of a KV cache) for Llama-family models, without the generic
forward's per-call machinery.

For a small model, a decoding step is dominated by what the generic `model(...)` call does around the arithmetic:
building a 4-D mask from the 2-D one, output records, kwarg-renaming decorators, per-module hooks. This step calls
the model's own modules (so LoRA layers, norms and the MLP are exactly the model's) in the model's own order, with
the padding mask handed to attention as the boolean mask the generic forward builds from it: the logits are the
generic forward's, bit for bit (tests/test_sdft.py checks it on the embedded model and on a Qwen2-shaped one with
grouped-query attention). Other architectures, attention implementations other than SDPA, and sliding windows get
`None` from `lean_decoder`, and the caller uses the generic forward.
"""

from __future__ import annotations

import torch
from torch import Tensor

SUPPORTED_MODEL_TYPES = ("llama", "qwen2")


def lean_decoder(model) -> LeanDecoder | None:
    """A LeanDecoder for `model` (plain, LoRA-wrapped or DDP-wrapped), or None when the step would not be exact."""
    base = getattr(model, "module", model)  # through a DDP wrapper
    if hasattr(base, "get_base_model"):  # a peft model: its LoRA layers live inside the base model's modules
        base = base.get_base_model()
    config = getattr(base, "config", None)
    if config is None or config.model_type not in SUPPORTED_MODEL_TYPES:
        return None
    if getattr(config, "_attn_implementation", None) != "sdpa" or getattr(config, "use_sliding_window", False):
        return None
    if not hasattr(base, "lm_head") or not hasattr(getattr(base, "model", None), "layers"):
        return None
    return LeanDecoder(base)


class LeanDecoder:
    """`step(tokens, cache, mask, positions)` -> [B, V] logits of the next token, the cache extended in place."""

    def __init__(self, model):
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        self.model = model
        self.layers = model.model.layers[: model.config.num_hidden_layers]
        self.attention = ALL_ATTENTION_FUNCTIONS["sdpa"]

    @torch.no_grad()
    def step(self, tokens: Tensor, cache, mask: Tensor, positions: Tensor) -> Tensor:
        """tokens [B]; mask [B, cached + 1] (1 on real tokens, the new one included); positions [B, 1]."""
        return self.step_hidden(tokens, cache, mask, positions)[0]

    @torch.no_grad()
    def step_hidden(self, tokens: Tensor, cache, mask: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        """As `step`, and the last hidden state (after the final norm: what the LM head reads), [B, H]; Co-LLM's
        deferral head reads it (generation/deferral.py)."""
        inner = self.model.model
        hidden = inner.embed_tokens(tokens[:, None])
        rotary = inner.rotary_emb(hidden, position_ids=positions)
        # what the generic forward hands SDPA for one query token: no mask when nothing is padded, else the padding
        attention_mask = None if bool(mask.all()) else mask.bool()[:, None, None, :]
        for index, layer in enumerate(self.layers):
            hidden = hidden + self._attend(layer.self_attn, layer.input_layernorm(hidden), rotary, attention_mask,
                                           cache, index)
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        hidden = inner.norm(hidden)[:, -1]
        return self.model.lm_head(hidden), hidden

    def _attend(self, attn, hidden: Tensor, rotary, attention_mask: Tensor | None, cache, index: int) -> Tensor:
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        shape = (hidden.shape[0], 1, -1, attn.head_dim)
        query = attn.q_proj(hidden).view(shape).transpose(1, 2)
        key = attn.k_proj(hidden).view(shape).transpose(1, 2)
        value = attn.v_proj(hidden).view(shape).transpose(1, 2)
        query, key = apply_rotary_pos_emb(query, key, *rotary)
        key, value = cache.layers[index].update(key, value)
        out, _ = self.attention(attn, query, key, value, attention_mask, dropout=0.0, scaling=attn.scaling)
        return attn.o_proj(out.reshape(hidden.shape[0], 1, -1).contiguous())
