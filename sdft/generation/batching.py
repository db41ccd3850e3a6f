"""Text prompts in, Generation records out: the batch driver of evaluation and the local judge."""

from __future__ import annotations

from typing import Iterator

import torch

from sdft.config import SamplingConfig
from sdft.generation.backends import backend
from sdft.generation.base import Generation, generations, left_pad


def generate_texts(loaded, prompts: list[str], sampling: SamplingConfig, max_new_tokens: int, samples: int = 1,
                   batch_size: int = 64, seed: int = 0,
                   logprobs: bool = False) -> Iterator[tuple[list[int], list[list[Generation]]]]:
    """(prompt indices, `samples` generations each) batch by batch, from `loaded` (a LoadedModel: model, tokenizer,
    device), with the backend `sampling.backend`.

    Prompts (rendered text, tokenised without special tokens) are sorted by length so each batch pads little. With
    sampling, each batch is seeded from the seed and its first prompt, so the samples do not depend on what ran
    before. Several samples of a prompt are its rows repeated, as `generate`'s num_return_sequences does."""
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        if sampling.temperature > 0:
            torch.manual_seed(seed * 1_000_003 + batch[0])
        flat = _generate_batch(loaded, [prompts[i] for i in batch], sampling, max_new_tokens, samples, logprobs)
        yield batch, [flat[i : i + samples] for i in range(0, len(flat), samples)]


def _generate_batch(loaded, prompts: list[str], sampling: SamplingConfig, max_new_tokens: int, samples: int,
                    logprobs: bool) -> list[Generation]:
    tokenizer = loaded.tokenizer
    ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    prompt_ids, prompt_mask = left_pad([row for row in ids for _ in range(samples)], tokenizer.pad_token_id,
                                       loaded.device)
    rollout = backend(sampling.backend).sample(loaded.model, tokenizer, prompt_ids, prompt_mask, sampling,
                                               max_new_tokens, logprobs=logprobs)
    return generations(rollout, tokenizer, max_new_tokens)
