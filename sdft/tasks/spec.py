"""The typed shape of a task: rows of {prompt, demonstration, answer} in named splits, plus a scorer."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Row:
    """One item of a task.

    prompt: what the student sees (the user turn).
    demonstration: an expert's full response to that prompt (what SFT imitates, what the SDFT teacher sees).
    answer: the reference the scorer compares a response against.
    unseen: for worlds that know it, True when pretraining never touched this item's facts or tools;
        None when the task does not say.
    question: the bare question, for a judge, when the prompt wraps it in more (an article in the oracle
        evaluation); None = the prompt is the question.
    demos: a few-shot instance's demonstration pairs ((input, output), ...), the prompt being its query's input;
        () for an ordinary row (sdft/tasks/fewshot.py builds few-shot rows, sdft/inference/ answers them).
    instruction: a few-shot instance's task instruction, placed before its demos; None = none.
    article: for a knowledge task, the title of the article the question is about (a task's `extra["articles"]`
        holds the texts); None for other tasks.
    """

    prompt: str
    demonstration: str
    answer: str
    unseen: bool | None = None
    question: str | None = None
    demos: tuple[tuple[str, str], ...] = ()
    instruction: str | None = None
    article: str | None = None


@dataclass(frozen=True)
class TaskSpec:
    """A loaded task.

    version: bump it whenever the prompts, the data or the metric change; results record it and the
        evaluation cache keys on it.
    source: where the rows came from, for humans ("embedded", a file path, a hub id).
    kind: "task" for a skill to learn, "prior" for a member of the general-capability suite.
    scorer: a name in sdft.scoring.SCORERS, or in sdft.scoring.JUDGED (graded by an LLM judge).
    """

    name: str
    version: str
    source: str
    scorer: str
    splits: dict[str, list[Row]]
    system_prompt: str | None = None
    kind: str = "task"
    description: str = ""
    extra: dict = field(default_factory=dict)

    def split(self, name: str) -> list[Row]:
        from sdft.errors import UserError

        if name not in self.splits:
            raise UserError(
                f"task '{self.name}' has no split '{name}' (it has: {', '.join(sorted(self.splits))})"
            )
        return self.splits[name]

    def rows(self, split: str, limit: int | None = None) -> list[Row]:
        """The split's first `limit` rows (all when limit is None): the one place a row limit is applied."""
        rows = self.split(split)
        return rows[:limit] if limit is not None else rows

    def split_sizes(self) -> dict[str, int]:
        return {name: len(rows) for name, rows in self.splits.items()}
