"""Invertible augmentations of few-shot instances: a plain dict from name to Augmentation.

Test-time training multiplies its training samples by them and answers the query under each, mapping every answer
back through the inverse before voting (METHOD.md 3.1; ARC's are rotations and flips, text's are demo orders). Demo
orders are built in (sdft/inference/ttt_data.py); a task registers the others it supports in TaskSpec.extra
["augmentations"], and its module adds them here. An augmentation draws its parameters from a seeded rng and maps
every text of an instance (inputs, outputs, the query) with one function; `inverse` undoes it exactly."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

from sdft.errors import UserError
from sdft.suggest import did_you_mean

TextMap = Callable[[str], str]


@dataclass(frozen=True)
class Augmentation:
    name: str
    draw: Callable[[random.Random], tuple[TextMap, TextMap]]
    """rng -> (forward, inverse): inverse(forward(text)) == text for every text of the tasks that register it."""


AUGMENTATIONS: dict[str, Augmentation] = {}


def register(augmentation: Augmentation) -> Augmentation:
    AUGMENTATIONS[augmentation.name] = augmentation
    return augmentation


def require_augmentations(names: list[str], tasks) -> None:
    """Every name known and registered by every task: refused before any model loads."""
    for name in names:
        if name not in AUGMENTATIONS:
            known = ", ".join(sorted(AUGMENTATIONS)) or "none"
            raise UserError(f"ttt.augmentations: no augmentation '{name}'{did_you_mean(name, AUGMENTATIONS)}; "
                            f"known: {known} (demo orders are built in)")
        for task in tasks:
            if name not in task.extra.get("augmentations", ()):
                raise UserError(f"ttt.augmentations: task '{task.name}' does not register '{name}' "
                                f"(it registers: {', '.join(task.extra.get('augmentations', ())) or 'none'})")


def word_permutation(words: list[str]) -> Callable[[random.Random], tuple[TextMap, TextMap]]:
    """An augmentation that swaps whole words by a random permutation of `words` (and back): invertible because
    the permutation is a bijection and is applied to whole words only, in one pass."""
    import re

    pattern = re.compile(r"\b(" + "|".join(map(re.escape, words)) + r")\b")

    def draw(rng: random.Random) -> tuple[TextMap, TextMap]:
        shuffled = rng.sample(words, len(words))
        forward, backward = dict(zip(words, shuffled)), dict(zip(shuffled, words))
        return (lambda text: pattern.sub(lambda m: forward[m.group(1)], text),
                lambda text: pattern.sub(lambda m: backward[m.group(1)], text))

    return draw
