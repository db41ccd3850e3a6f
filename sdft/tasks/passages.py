"""Passages for SEAL (METHOD.md 3.3): an article with the questions asked about it, the unit a self-edit is written
for, fitted on and rewarded by. One home for how a knowledge source becomes passages and how they are split into
the passages the rounds learn from and the held-out passages of the evaluation table."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from sdft.errors import UserError


@dataclass(frozen=True)
class Passage:
    title: str
    text: str
    questions: tuple[tuple[str, str], ...]
    """(question, reference answer) pairs, asked without the passage."""
    scorer: str
    """A name in sdft.scoring.SCORERS: how an answer is graded (the task's own scorer)."""


def passages_of(task, split: str) -> list[Passage]:
    """A knowledge task's articles (in the order of `extra["articles"]`), each with the questions of `split` that ask
    about it, graded by the task's scorer. An article without questions in the split keeps an empty tuple (the
    caller decides whether that is an error)."""
    articles = task.extra.get("articles")
    if not articles:
        raise UserError(f"task '{task.name}' has no articles: SEAL writes self-edits for a knowledge task's articles")
    questions: dict[str, list[tuple[str, str]]] = {title: [] for title in articles}
    for row in task.split(split):
        if row.article not in questions:
            raise UserError(f"task '{task.name}': a question in split '{split}' is about {row.article!r}, which is "
                            "not one of its articles")
        questions[row.article].append((row.question or row.prompt, row.answer))
    return [Passage(title, text, tuple(questions[title]), task.scorer) for title, text in articles.items()]


def embedded_passages(question_split: str) -> list[Passage]:
    """The embedded knowledge world's task events: each article with its questions in `question_split`, graded as the
    knowledge task grades them (strict)."""
    from sdft.tasks import knowledge_world as world

    if question_split not in world.SPLITS:
        raise UserError(f"seal.question_split: the embedded knowledge task has no split '{question_split}' "
                        f"(it has: {', '.join(world.SPLITS)})")
    return passages_of(world.load_embedded_knowledge(), question_split)


def seal_release_passages(files, scorer: str) -> list[Passage]:
    """Passages from JSON files in the SEAL release's SQuAD-derived schema: a list of {"title", "context",
    "questions": [{"question", "answer"}, ...]} per file (other keys ignored). A malformed item is one line naming
    the file, the item and the key."""
    import json
    from pathlib import Path

    passages = []
    for name in files:
        path = Path(name)
        if not path.is_file():
            raise UserError(f"seal.files: {path} does not exist")
        try:
            items = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise UserError(f"{path}: not JSON ({err}); seal.files are JSON lists in the SEAL release's schema") from None
        if not isinstance(items, list):
            raise UserError(f"{path}: expected a JSON list of passages, got {type(items).__name__}")
        for number, item in enumerate(items, start=1):
            passages.append(_release_passage(item, f"{path}: item {number}", scorer))
    return passages


def _release_passage(item, where: str, scorer: str) -> Passage:
    def text(record, key: str, place: str) -> str:
        value = record.get(key) if isinstance(record, dict) else None
        if not isinstance(value, str) or not value.strip():
            raise UserError(f"{place}: '{key}' must be a non-empty string")
        return value

    questions = item.get("questions") if isinstance(item, dict) else None
    if not isinstance(questions, list):
        raise UserError(f"{where}: 'questions' must be a list of {{question, answer}}")
    pairs = tuple((text(q, "question", f"{where}, question {i}"), text(q, "answer", f"{where}, question {i}"))
                  for i, q in enumerate(questions, start=1))
    return Passage(text(item, "title", where), text(item, "context", where), pairs, scorer)


def load_passages(seal) -> list[Passage]:
    """The passages of `seal.source` (a SealConfig), each checked to have questions."""
    if seal.source == "local":
        passages = seal_release_passages(seal.files, seal.scorer)
    else:
        passages = embedded_passages(seal.question_split)
    for passage in passages:
        if not passage.questions:
            where = f"in {', '.join(seal.files)}" if seal.source == "local" else f"in split '{seal.question_split}'"
            raise UserError(f"seal: the passage {passage.title!r} has no questions {where}; every passage needs "
                            "questions to reward a self-edit")
    return passages


def split_passages(passages: list[Passage], train: int, held_out: int, seed: int) -> tuple[list[Passage], list[Passage]]:
    """(training passages, held-out passages): a shuffle of the titles fixed by `seed` (a hash, so it does not depend
    on Python's hash seed or the passages' order), the first `held_out` held out, the next `train` trained on."""
    if train + held_out > len(passages):
        raise UserError(f"seal.train_passages ({train}) + seal.held_out_passages ({held_out}) exceed the "
                        f"{len(passages)} passages of the source")
    if len({p.title for p in passages}) != len(passages):
        raise UserError("seal: two passages share a title (a passage is named by its title)")
    key = lambda p: hashlib.sha256(f"{seed}\n{p.title}".encode()).hexdigest()
    ordered = sorted(passages, key=key)
    return ordered[held_out:held_out + train], ordered[:held_out]
