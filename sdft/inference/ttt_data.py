"""Test-time training's data, built from an instance's demonstrations alone (never its query; METHOD.md 3.1):

- leave-out tasks: demo i held out as the query, the others as its context (leave-one-out); with leave_out 2 also
  every pair {i, j} left out, each of the two as the query, the other K-2 as context;
- each task under `permutations` demo orders (the identity first; all of them when there are fewer) and under every
  registered augmentation (a fresh draw per sample), then deduplicated and capped at N by a seeded shuffle;
- views of the query for voting (demo orders x augmentations, the identity first), and the majority vote over the
  answers mapped back, ties broken by the earliest view.
Count before deduplication: (K + [leave_out 2] K(K-1)) tasks x min(permutations, (K - left out)!) orders x
(1 + augmentations)."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Callable

from sdft.scoring import final_answer, normalize
from sdft.tasks.augment import Augmentation

Pair = tuple[str, str]


@dataclass(frozen=True)
class Sample:
    context: tuple[Pair, ...]
    query: Pair


@dataclass(frozen=True)
class View:
    demos: tuple[Pair, ...]
    query: str
    inverse: Callable[[str], str]


def leave_out_tasks(demos: Sequence[Pair], leave_out: int) -> list[Sample]:
    """Every leave-one-out task, and with leave_out 2 every leave-two-out task (each held-out demo a query)."""
    tasks = [Sample(tuple(d for j, d in enumerate(demos) if j != i), demos[i]) for i in range(len(demos))]
    if leave_out == 2:
        for i, j in itertools.combinations(range(len(demos)), 2):
            context = tuple(d for k, d in enumerate(demos) if k not in (i, j))
            tasks += [Sample(context, demos[i]), Sample(context, demos[j])]
    return tasks


def orders(n: int, count: int, rng: random.Random) -> list[tuple[int, ...]]:
    """`count` distinct orders of n items (all n! when fewer), the identity first, the rest drawn by rng."""
    if math.factorial(n) <= count:
        return list(itertools.permutations(range(n)))
    picked = [tuple(range(n))]
    while len(picked) < count:
        order = tuple(rng.sample(range(n), n))
        if order not in picked:
            picked.append(order)
    return picked


def augmented(sample: Sample, forward: Callable[[str], str]) -> Sample:
    context = tuple((forward(x), forward(y)) for x, y in sample.context)
    return Sample(context, (forward(sample.query[0]), forward(sample.query[1])))


def training_samples(demos: Sequence[Pair], leave_out: int, permutations: int, augmentations: Sequence[Augmentation],
                     cap: int, rng: random.Random) -> tuple[list[Sample], int]:
    """(at most `cap` distinct samples, the count before deduplication and the cap)."""
    built = []
    for task in leave_out_tasks(demos, leave_out):
        for order in orders(len(task.context), permutations, rng):
            base = Sample(tuple(task.context[i] for i in order), task.query)
            built.append(base)
            built += [augmented(base, aug.draw(rng)[0]) for aug in augmentations]
    distinct = list(dict.fromkeys(built))
    rng.shuffle(distinct)
    return distinct[:cap], len(built)


def query_views(demos: Sequence[Pair], query: str, count: int, augmentations: Sequence[Augmentation],
                rng: random.Random) -> list[View]:
    """`count` views of the query: demo orders, each also under one draw of every augmentation, identity first."""
    identity = lambda text: text  # noqa: E731
    views = []
    for order in orders(len(demos), count, rng):
        ordered = tuple(demos[i] for i in order)
        views.append(View(ordered, query, identity))
        for aug in augmentations:
            forward, inverse = aug.draw(rng)
            views.append(View(tuple((forward(x), forward(y)) for x, y in ordered), forward(query), inverse))
    return views[:count]


def vote(answers: Sequence[str]) -> int:
    """The index of the answer the majority gives (compared by their normalised final answers); a tie goes to the
    answer whose first occurrence comes earliest, so the identity view wins ties it is part of."""
    keys = [normalize(final_answer(a)) for a in answers]
    counts = {key: keys.count(key) for key in keys}
    best = max(counts.values())
    return next(i for i, key in enumerate(keys) if counts[key] == best)
