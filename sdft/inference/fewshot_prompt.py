"""Few-shot prompts: K (input, output) demonstrations and a query in one user turn, in one of two layouts, and the
token examples test-time training fits on (the loss on every demonstration output, or on the last one only).

qa (the paper's BBH form): instruction, 'Q: x\\nA: y' blocks, then 'Q: query\\nA:'; the assistant turn answers.
demonstration: the demos, each 'x\\ny', joined in the SDFT teacher template's demonstration slot
    (sdft.prompts.teacher_prompt): the in-context form the embedded model was pretrained on (METHOD.md 3.1).
With no demos both layouts are the zero-shot prompt (qa keeps its Q/A frame; demonstration is the plain query)."""

from __future__ import annotations

from collections.abc import Sequence

from sdft.errors import UserError
from sdft.methods.tokens import IGNORE
from sdft.prompts import render_prompt, teacher_prompt

Pair = tuple[str, str]
Span = tuple[int, int]


def fewshot_user(demos: Sequence[Pair], query: str, layout: str, instruction: str | None = None) -> tuple[str, list[Span]]:
    """(the user turn, the character span of every demo output in it)."""
    head = f"{instruction}\n\n" if instruction else ""
    block, spans = _demo_block(demos, layout)
    if layout == "qa":
        body, offset = (f"{block}\n\n" if block else "") + f"Q: {query}\nA:", 0
    elif demos:
        body = teacher_prompt(query, block)
        offset = body.index(block, len(query))  # the slot after the question
    else:
        body, offset = query, 0
    return head + body, [(a + len(head) + offset, b + len(head) + offset) for a, b in spans]


def _demo_block(demos: Sequence[Pair], layout: str) -> tuple[str, list[Span]]:
    text, spans = "", []
    for x, y in demos:
        text += ("\n\n" if text else "") + (f"Q: {x}\nA: " if layout == "qa" else f"{x}\n")
        spans.append((len(text), len(text) + len(y)))
        text += y
    return text, spans


def fewshot_prompt(tokenizer, demos: Sequence[Pair], query: str, layout: str, instruction: str | None = None,
                   system_prompt: str | None = None) -> tuple[str, list[Span]]:
    """The rendered chat prompt, ending where the assistant's reply begins, and the demo outputs' spans in it."""
    user, spans = fewshot_user(demos, query, layout, instruction)
    rendered = render_prompt(tokenizer, user, system_prompt)
    offset = rendered.index(user)
    return rendered, [(a + offset, b + offset) for a, b in spans]


def labelled_example(tokenizer, demos: Sequence[Pair], query: Pair, layout: str, loss_on: str,
                     instruction: str | None = None, system_prompt: str | None = None) -> dict[str, list[int]]:
    """{input_ids, labels}: the few-shot prompt with `query`'s input, then its output and the eos token. Labels on the
    output (and, with loss_on 'all_outputs', on every demo output inside the prompt); every input is masked. Tokens
    are labelled by their character offsets, so the example is the text tokenised once, as at inference."""
    if not getattr(tokenizer, "is_fast", False):
        raise UserError("test-time training labels demo outputs by character offsets: it needs a fast tokenizer")
    prompt, spans = fewshot_prompt(tokenizer, demos, query[0], layout, instruction, system_prompt)
    spans = spans if loss_on == "all_outputs" else []
    text = prompt + query[1] + tokenizer.eos_token
    spans = [*spans, (len(prompt), len(text))]
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    labels = [token if any(a <= start and end <= b for a, b in spans) and end > start else IGNORE
              for token, (start, end) in zip(encoded["input_ids"], encoded["offset_mapping"])]
    return {"input_ids": list(encoded["input_ids"]), "labels": labels}
