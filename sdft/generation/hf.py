"""The Hugging Face backend: transformers' `generate`, with every decoding field that would reshape the model's
own distribution set to its neutral value (a hub model's generation_config.json may ship top_k=20,
repetition_penalty=1.05, ...: evaluation and rollouts decode the model's own distribution)."""

from __future__ import annotations

import torch
from torch import Tensor

from sdft.config import SamplingConfig
from sdft.generation.base import PromptPass, Rollout, completion_from_tokens

NEUTRAL_PENALTIES = {"repetition_penalty": 1.0, "encoder_repetition_penalty": 1.0, "no_repeat_ngram_size": 0,
                     "min_new_tokens": 0}
"""Neutral for greedy decoding too."""
NEUTRAL_DECODING = {**NEUTRAL_PENALTIES, "top_k": 0, "min_p": 0.0, "typical_p": 1.0, "epsilon_cutoff": 0.0,
                    "eta_cutoff": 0.0}
"""Neutral for sampling."""


def decoding_kwargs(sampling: SamplingConfig) -> dict:
    """`generate`'s decoding arguments for `sampling`: greedy at temperature 0, else temperature and top-p."""
    if sampling.temperature > 0:
        return {**NEUTRAL_DECODING, "do_sample": True, "temperature": sampling.temperature, "top_p": sampling.top_p}
    return {**NEUTRAL_PENALTIES, "do_sample": False}


class HFBackend:
    """`model.generate` behind the generation interface (base.Backend). It runs its own prefill (a given prompt
    pass is ignored) and computes no log-probs."""

    name = "hf"

    @torch.no_grad()
    def sample(self, model, tokenizer, prompt_ids: Tensor, prompt_mask: Tensor, sampling: SamplingConfig,
               max_new_tokens: int, prefill: PromptPass | None = None, logprobs: bool = False) -> Rollout:
        was_training = model.training
        model.eval()
        try:
            output = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, max_new_tokens=max_new_tokens,
                                    pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                                    use_cache=True, **decoding_kwargs(sampling))
        finally:
            model.train(was_training)
        return completion_from_tokens(output[:, prompt_ids.shape[1] :], tokenizer.eos_token_id, tokenizer.pad_token_id)
