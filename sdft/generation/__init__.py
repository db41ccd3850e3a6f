"""One generation interface for every place that writes text: evaluation, SDFT rollouts, the local judge.

- base.py:        the Backend protocol, Rollout / Generation records, left padding, the prompt pass (prefill)
- hf.py:          transformers' `generate` (neutral decoding: the model's own distribution)
- native.py:      sdft's KV-cache sampler (the same tokens as `generate` under a seed, less overhead per token)
- lean_decode.py: the native sampler's lean decoding step for Llama-family models
- backends.py:    the registry, SamplingConfig.backend -> backend
- batching.py:    text prompts -> length-sorted, seeded batches -> Generation records
- deferral.py:    Co-LLM's greedy decoding by a base and an expert (two KV caches, the expert run where the head defers)

A new backend (vLLM) is one more module implementing base.Backend and one entry in BACKENDS.
"""

from __future__ import annotations

from sdft.generation.backends import BACKENDS, backend
from sdft.generation.base import Backend, Generation, PromptPass, Rollout, left_pad, prompt_pass
from sdft.generation.batching import generate_texts

__all__ = ["BACKENDS", "Backend", "Generation", "PromptPass", "Rollout", "backend", "generate_texts", "left_pad",
           "prompt_pass"]
