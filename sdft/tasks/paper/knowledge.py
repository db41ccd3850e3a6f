"""Knowledge acquisition: facts from articles written after the model's cutoff (the paper used 9 Wikipedia
articles on 2025 natural disasters with generated question/answer pairs; METHOD.md).

The paper's corpus and questions are not published, so this schema is ours, kept minimal (local only):
- articles.jsonl: {"title": str, "text": str}, one article per line: the raw corpus (continued pre-training
  trains on it, `method: cpt`);
- qa.jsonl: {"question": str, "answer": str, "title": <the article it is about>, "split": str}; splits are
  whatever the rows name, e.g. train / test / ood (the paper's out-of-distribution questions).
Two tasks come from one source:
- `knowledge`: prompt = the question; the demonstration (what the SDFT teacher sees, what SFT imitates) is
  `teacher_context`: article + answer (the paper's best SDFT variant, the default), answer only (the SFT
  baseline's target) or article only; graded by the judge, strict (CORRECT) and lenient (CORRECT or PARTIAL).
- `knowledge_oracle`: the same questions with the article in the prompt (the paper's oracle-context
  evaluation, "oracle RAG"); the judge still sees the bare question.
"""

from __future__ import annotations

from sdft.config import TaskSourceConfig
from sdft.errors import UserError
from sdft.tasks.paper.common import PAPER_VERSION, describe, local_records, text_of
from sdft.tasks.articles import corpus, knowledge_row
from sdft.tasks.spec import Row, TaskSpec

LOCAL_FILES = {"articles": "articles.jsonl", "qa": "qa.jsonl"}


def load_knowledge(src: TaskSourceConfig, oracle: bool = False) -> TaskSpec:
    if src.source != "local":
        raise UserError("task_sources.knowledge: the paper's articles are not published; use source: local "
                        "with articles.jsonl and qa.jsonl (see sdft/tasks/paper/knowledge.py)")
    unknown = set(src.files) - set(LOCAL_FILES)
    if unknown:
        raise UserError(f"task_sources.knowledge.files: unknown roles {sorted(unknown)}; the roles are articles, qa")
    articles, qa, where = _read(src)
    splits: dict[str, list[Row]] = {}
    for number, record in enumerate(qa, start=1):
        split = text_of(record, "split", where[1], number)
        splits.setdefault(split, []).append(_row(record, articles, src, oracle, where[1], number))
    name = "knowledge_oracle" if oracle else "knowledge"
    extra = {"world": "paper", "articles": articles}
    if not oracle:
        extra["corpus"] = corpus(articles)
    what = "the article in the prompt (oracle context)" if oracle else f"teacher context: {src.teacher_context}"
    # The teacher context changes the demonstrations (a teacher-prompt evaluation's cache must see that).
    version = PAPER_VERSION if oracle else f"{PAPER_VERSION}+{src.teacher_context}"
    return TaskSpec(name=name, version=version, source=describe(src, where), scorer="judge_knowledge",
                    splits=splits, description=f"questions about new articles; {what}", extra=extra)


def _read(src: TaskSourceConfig) -> tuple[dict[str, str], list[dict], list[str]]:
    records, articles_where = local_records("knowledge", src, "articles", LOCAL_FILES["articles"])
    articles: dict[str, str] = {}
    for number, record in enumerate(records, start=1):
        title = text_of(record, "title", articles_where, number)
        if title in articles:
            raise UserError(f"{articles_where}: row {number} repeats the title {title!r}")
        articles[title] = text_of(record, "text", articles_where, number)
    qa, qa_where = local_records("knowledge", src, "qa", LOCAL_FILES["qa"])
    return articles, qa, [articles_where, qa_where]


def _row(record: dict, articles: dict[str, str], src: TaskSourceConfig, oracle: bool, where: str, number: int) -> Row:
    question, answer = text_of(record, "question", where, number), text_of(record, "answer", where, number)
    title = text_of(record, "title", where, number)
    if title not in articles:
        raise UserError(f"{where}: row {number} names the article {title!r}, which articles.jsonl does not hold")
    return knowledge_row(title, articles[title], question, answer, src.teacher_context, oracle)
