"""Keys of older configs: each one is answered with one line naming its new home, never silently ignored.

A run folder's config.yaml written by an older sdft names these keys too; rename them there to resume it."""

from __future__ import annotations

RENAMED: dict[str, str] = {
    "eval.generation": "eval.sampling (temperature, top_p), eval.samples, eval.max_new_tokens and eval.batch_size",
    "eval.generation.temperature": "eval.sampling.temperature",
    "eval.generation.top_p": "eval.sampling.top_p",
    "eval.generation.samples": "eval.samples",
    "eval.generation.max_new_tokens": "eval.max_new_tokens",
    "eval.generation.batch_size": "eval.batch_size",
    "train.rollout_temperature": "train.rollout.temperature",
    "train.rollout_top_p": "train.rollout.top_p",
    "lora.ema": "train.lora_ema",
}
"""old dotted key -> where its value lives now (2026-12: one sampling section; the teacher's settings under train)."""


def renamed_hint(dotted: str) -> str | None:
    """' was renamed: use X' for an old key (or a key inside an old section), None for any other key."""
    for old in (dotted, *_parents(dotted)):
        if old in RENAMED:
            return f"'{dotted}' was renamed: use {RENAMED.get(dotted, RENAMED[old])}"
    return None


def _parents(dotted: str) -> list[str]:
    parts = dotted.split(".")
    return [".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)]
