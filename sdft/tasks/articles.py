"""Rows of a knowledge task, one home for both worlds (the embedded miniature and the paper's local files):
a question about an article becomes a student row (the bare question; the demonstration holds the teacher
context) or an oracle row (the article in the prompt, the paper's oracle-context evaluation)."""

from __future__ import annotations

import dataclasses
from functools import partial
from collections.abc import Callable

from sdft.errors import UserError
from sdft.tasks.spec import Row, TaskSpec

ORACLE_TEMPLATE = "Read the article, then answer the question.\n\nArticle: {title}\n{text}\n\nQuestion: {question}"
SELF_EDIT_TEMPLATES = {
    # SEAL (METHOD.md 3.3): the prompts that ask a model to write its own training data from an article. The
    # names are the SEAL code's; the wording is ours, short enough for the embedded model to have learned it.
    "implications": "Read the article, then list what it implies, one line each.\n\nArticle: {title}\n{text}",
    "rewrite": "Rewrite the article in other words, one sentence per line.\n\nArticle: {title}\n{text}",
    "self_qa": "Write questions about the article with their answers, one per line.\n\nArticle: {title}\n{text}",
}
TEACHER_CONTEXTS = ("article_and_answer", "answer", "article")
"""What a knowledge row's demonstration holds (TaskSourceConfig.teacher_context): the paper's best SDFT variant
is article + answer; its SFT baseline trains on the answer."""


def knowledge_row(title: str, text: str, question: str, answer: str, teacher_context: str, oracle: bool) -> Row:
    if oracle:
        prompt = ORACLE_TEMPLATE.format(title=title, text=text, question=question)
        return Row(prompt=prompt, demonstration=answer, answer=answer, question=question, article=title)
    article = f"{title}\n{text}"
    contexts = {"answer": answer, "article": article, "article_and_answer": f"{article}\n\nAnswer: {answer}"}
    return Row(prompt=question, demonstration=contexts[teacher_context], answer=answer, article=title)


def corpus(articles: dict[str, str]) -> list[str]:
    """The raw documents continued pre-training trains on: title, blank line, text."""
    return [f"{title}\n\n{text}" for title, text in articles.items()]


ARTICLE_SEPARATOR = "@"
"""`knowledge@3` names the third article of the knowledge task as a task of its own (see article_view)."""


def article_view(load: Callable[[], TaskSpec], index: int) -> TaskSpec:
    """The task restricted to its `index`-th article (1-based, in the order of `extra["articles"]`): the questions
    about that article in every split, the article as its corpus. A passage stream is a sequence of these
    (`sdft sequence knowledge@1 knowledge@2 ...`): SDFT and SFT learn one article's questions per stage, SEAL one
    article's self-edit."""
    spec = load()
    titles = list(spec.extra.get("articles", {}))
    name = f"{spec.name}{ARTICLE_SEPARATOR}{index}"
    if not titles:
        raise UserError(f"task '{name}': '{spec.name}' has no articles; <task>{ARTICLE_SEPARATOR}N names one article "
                        "of a knowledge task")
    if not 1 <= index <= len(titles):
        raise UserError(f"task '{name}': '{spec.name}' has articles 1 to {len(titles)}")
    title = titles[index - 1]
    splits = {split: [row for row in rows if row.article == title] for split, rows in spec.splits.items()}
    extra = {**spec.extra, "articles": {title: spec.extra["articles"][title]}}
    if "corpus" in spec.extra:
        extra["corpus"] = corpus(extra["articles"])
    return dataclasses.replace(spec, name=name, splits=splits, extra=extra,
                               description=f"the questions about article {index} of {spec.name}: {title}")


def ood_view(load: Callable[[], TaskSpec]) -> TaskSpec:
    """The task's out-of-distribution questions as a task of their own (`<name>_ood`, its test split = the ood
    split), so every command evaluates them by name, beside the test questions."""
    spec = load()
    extra = {k: v for k, v in spec.extra.items() if k != "corpus"}
    return dataclasses.replace(spec, name=f"{spec.name}_ood", splits={"test": spec.split("ood")}, extra=extra)


def knowledge_loaders(load: Callable[..., TaskSpec]) -> dict[str, Callable[[], TaskSpec]]:
    """The four names a knowledge source gives, from its loader `load(oracle=...)`: knowledge, knowledge_ood,
    knowledge_oracle (the article in the prompt) and knowledge_oracle_ood."""
    plain, oracle = partial(load, oracle=False), partial(load, oracle=True)
    return {"knowledge": plain, "knowledge_ood": partial(ood_view, plain),
            "knowledge_oracle": oracle, "knowledge_oracle_ood": partial(ood_view, oracle)}
