"""Token-level training examples: a chat prompt whose tokens carry no loss, then a completion that ends with the eos
token (so the model learns to stop). The tokens trained are the tokens counted: no special tokens beyond the chat
template's, no truncation. SFT's rows and the in-memory adapter fit build their examples from these."""

from __future__ import annotations

from collections.abc import Sequence

from sdft.errors import UserError
from sdft.prompts import render_prompt, teacher_prompt

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


def encode(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of rendered texts: the chat template already holds every special token, so none is added."""
    return tokenizer(list(texts), add_special_tokens=False)["input_ids"] if texts else []


def student_prompt_ids(tokenizer, rows, system_prompt: str | None) -> list[list[int]]:
    """Each row's prompt as the student sees it (the plain question in the chat template)."""
    return encode(tokenizer, [render_prompt(tokenizer, r.prompt, system_prompt) for r in rows])


def teacher_prompt_ids(tokenizer, rows, system_prompt: str | None) -> list[list[int]]:
    """Each row's prompt as the SDFT teacher sees it (question + demonstration, sdft.prompts.teacher_prompt)."""
    return encode(tokenizer, [render_prompt(tokenizer, teacher_prompt(r.prompt, r.demonstration), system_prompt)
                              for r in rows])


def row_lengths(rows, task, tokenizer, measures: Sequence[str]) -> dict[str, list[int]]:
    """Token counts per measure ('prompt', 'teacher', 'completion' = demonstration + eos), tokenised as the trainers
    tokenise them: what the dry run compares with the caps."""
    counts = {"prompt": lambda: student_prompt_ids(tokenizer, rows, task.system_prompt),
              "teacher": lambda: teacher_prompt_ids(tokenizer, rows, task.system_prompt),
              "completion": lambda: [[*ids, tokenizer.eos_token_id] for ids in encode(tokenizer, [r.demonstration for r in rows])]}
    return {measure: [len(ids) for ids in counts[measure]()] for measure in measures}


def masked_example(prompt_ids: list[int], completion_ids: list[int]) -> dict[str, list[int]]:
    """{input_ids, labels}: the prompt's labels IGNORE (conditioned on, not learned), the completion's its ids."""
    return {"input_ids": [*prompt_ids, *completion_ids], "labels": [IGNORE] * len(prompt_ids) + list(completion_ids)}


# --- length caps: the one place a training row is measured against train.max_*_tokens -----------------------

CAP_KEYS = {"prompt": "max_prompt_tokens", "teacher": "max_teacher_prompt_tokens", "completion": "max_completion_tokens"}
"""What is measured -> the TrainConfig field that caps it."""
_CAP_WORDS = {"prompt": "the prompt has {n} tokens", "teacher": "the teacher prompt has {n} tokens",
              "completion": "the demonstration and its eos token make {n} tokens"}


def cap_problem(lengths: dict[str, int], train) -> str | None:
    """The first cap a row exceeds, in words naming the key; None when it fits. `lengths`: measure -> tokens."""
    for measure, n in lengths.items():
        cap = getattr(train, CAP_KEYS[measure])
        if n > cap:
            return f"{_CAP_WORDS[measure].format(n=n)}, over train.{CAP_KEYS[measure]}={cap}"
    return None


def rows_within_caps(task_name: str, train, lengths: Sequence[dict[str, int]]) -> list[int]:
    """Indices of the rows that fit every cap. A row over a cap stops the run with the row named, or with
    train.overlong_prompts=skip is dropped, counted and printed. Nothing is ever truncated."""
    kept, skipped = [], []
    for index, row_lengths in enumerate(lengths):
        problem = cap_problem(row_lengths, train)
        if problem is None:
            kept.append(index)
        elif train.overlong_prompts == "skip":
            skipped.append(index + 1)
        else:
            raise UserError(f"task '{task_name}' split '{train.split}' row {index + 1}: {problem}; "
                            "raise the cap or set train.overlong_prompts=skip")
    if skipped:
        from sdft.console import err_console

        more = "..." if len(skipped) > 10 else ""
        err_console.print(f"[yellow]skipped {len(skipped)} of {len(lengths)} rows of '{task_name}' over the length "
                          f"caps (rows {skipped[:10]}{more})[/]")
    if lengths and not kept:
        raise UserError(f"task '{task_name}': no training row fits the length caps "
                        f"({', '.join('train.' + CAP_KEYS[m] for m in lengths[0])})")
    return kept


def demonstration_examples(rows, task, tokenizer, train) -> tuple[list[dict[str, list[int]]], int]:
    """SFT's examples: each row's student prompt (no loss), then its demonstration and the eos token, checked
    against train.max_prompt_tokens and train.max_completion_tokens. Returns (examples, rows skipped)."""
    if not rows:
        raise UserError(f"task '{task.name}' split '{train.split}' has no rows to train on")
    pairs = prompt_completion_ids(tokenizer, [r.prompt for r in rows], [r.demonstration for r in rows],
                                  task.system_prompt)
    kept = rows_within_caps(task.name, train, [{"prompt": len(p), "completion": len(c)} for p, c in pairs])
    return [masked_example(*pairs[i]) for i in kept], len(rows) - len(kept)
