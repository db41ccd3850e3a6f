"""Prompt construction shared by training and evaluation: chat messages and the SDFT teacher template."""

from __future__ import annotations

# The published teacher prompt (METHOD.md): one user turn holding the question and the demonstration.
TEACHER_TEMPLATE = (
    "{prompt}\n\n"
    "This is an example for a response to the question:\n"
    "{demonstration}\n\n"
    "Now answer with a response of your own, including the thinking process."
)


def teacher_prompt(prompt: str, demonstration: str) -> str:
    """The user turn the SDFT teacher sees: the question plus one demonstration for it."""
    return TEACHER_TEMPLATE.format(prompt=prompt, demonstration=demonstration)


def chat_messages(user: str, system_prompt: str | None = None) -> list[dict[str, str]]:
    """Messages for a chat template: the task's system prompt (if any) is kept, then one user turn."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": user})
    return messages


def render_prompt(tokenizer, user: str, system_prompt: str | None = None) -> str:
    """The full text the model is conditioned on, ending where the assistant's reply begins."""
    return tokenizer.apply_chat_template(
        chat_messages(user, system_prompt), tokenize=False, add_generation_prompt=True
    )
