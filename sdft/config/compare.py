"""Which differences between two configs change a result: what resuming a run folder compares.

A run folder's config.yaml says what ran. Continuing it (`sdft train --resume`, `sdft sequence` on its folder) under
a config that differs in anything that changes the numbers would give results that belong to neither config, so
every such key is named and the resume refused. The keys below change how a run is logged, checkpointed or
batched, never what it computes; they may differ, and the folder's config.yaml then records the new value.
(Not to be confused with sdft/config/renamed.py, which answers the keys of older configs.)
"""

from __future__ import annotations

from typing import Any

from sdft.config.root import Config, config_to_dict

RESULT_NEUTRAL: dict[str, str] = {
    "train.log_every": "how often metrics.jsonl gets a line",
    "train.sample_count": "how many sample completions are logged",
    "train.report_to": "where metrics are also sent",
    "train.checkpoint_every": "when checkpoints are written (a resumed run equals an uninterrupted one)",
    "train.keep_checkpoints": "how many checkpoints stay on disk",
    "eval.batch_size": "how many prompts are generated together",
    "eval.cache": "whether evaluations are cached",
    "eval.judge.timeout_s": "how long one judge call may take",
    "eval.judge.max_retries": "how often a judge call is retried",
    "eval.judge.backoff_s": "the wait between judge retries",
    "eval.judge.concurrency": "how many judge calls run at once",
    "eval.judge.api_key_env": "which environment variable holds the judge's key",
    "output_root": "where caches and default run folders go",
}
"""Keys that may differ on resume (README: when things go wrong), with what they decide."""

SEQUENCE_CHAINS: tuple[str, ...] = ("sequence.methods", "sequence.seeds")
"""A sequence folder may also gain chains: other methods or seeds are trained beside the finished ones."""


def result_differences(stored: Config, new: Config, also_allowed: tuple[str, ...] = ()) -> list[str]:
    """'key (stored -> new)' for every key whose difference changes a result."""
    old, now = _flat(config_to_dict(stored)), _flat(config_to_dict(new))
    allowed = set(RESULT_NEUTRAL) | set(also_allowed)
    if stored.train.epochs is not None and stored.train.epochs == new.train.epochs:
        allowed.add("train.steps")  # a run folder records the steps its epochs came to; the epochs decide
    keys = sorted(k for k in old.keys() | now.keys() if old.get(k, _ABSENT) != now.get(k, _ABSENT))
    return [f"{k} ({_show(old.get(k, _ABSENT))} -> {_show(now.get(k, _ABSENT))})" for k in keys if k not in allowed]


_ABSENT = object()


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'train.loss.alpha': 0.5, ...}: nested mappings become dotted keys (an empty one none; lists stay whole)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _show(value: Any) -> str:
    text = "unset" if value is _ABSENT else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def describe_differences(differences: list[str], shown: int = 6) -> str:
    """The first few differences, and how many more."""
    more = f" and {len(differences) - shown} more" if len(differences) > shown else ""
    return ", ".join(differences[:shown]) + more
