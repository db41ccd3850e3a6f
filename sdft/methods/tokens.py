"""Token-level training examples: a chat prompt whose tokens carry no loss, then a completion that ends with the eos
token (so the model learns to stop). The tokens trained are the tokens counted: no special tokens beyond the chat
template's, no truncation. SFT's rows and the in-memory adapter fit build their examples from these."""

from __future__ import annotations

from collections.abc import Sequence

from sdft.errors import UserError
from sdft.prompts import render_prompt

IGNORE = -100
"""The label of a token that carries no loss (the ignore_index of torch's cross-entropy)."""


def prompt_completion_ids(tokenizer, prompts: Sequence[str], completions: Sequence[str],
                          system_prompt: str | None = None) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, completion ids) per pair: the user prompt rendered with the chat template as the student sees it
    (render_prompt), the completion followed by the eos token."""
    if tokenizer.eos_token_id is None:
        raise UserError("the tokenizer has no eos token; every completion ends with it (to learn to stop)")
    if not prompts:
        return []  # a tokenizer refuses an empty batch
    rendered = [render_prompt(tokenizer, prompt, system_prompt) for prompt in prompts]
    prompt_ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(list(completions), add_special_tokens=False)["input_ids"]
    return [(prompt, [*completion, tokenizer.eos_token_id]) for prompt, completion in zip(prompt_ids, completion_ids)]


def masked_example(prompt_ids: list[int], completion_ids: list[int]) -> dict[str, list[int]]:
    """{input_ids, labels}: the prompt's labels IGNORE (conditioned on, not learned), the completion's its ids."""
    return {"input_ids": [*prompt_ids, *completion_ids], "labels": [IGNORE] * len(prompt_ids) + list(completion_ids)}
