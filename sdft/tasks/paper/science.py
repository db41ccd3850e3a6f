"""Science Q&A: SciKnowEval, Chemistry, level L3, four-option multiple choice (METHOD.md).

Schema facts and where they come from:
- hub: `hicai-zju/SciKnowEval`, config `Chemistry`, split `test` (the dataset card's configs), revision
  3284f6fbf3b8063ab8a0408a65fb00157dbdc9fa: the commit recorded in the download checksums of the authors'
  eval_data/dataset_info.json (idanshen/Self-Distillation, as carried by forks such as
  lhzuin/disentangling_self_distillation). A row (SciKnowEval README, "Prepare data"):
  {"question", "choices": {"text": [..4], "label": ["A".."D"]}, "answerKey", "type": "mcq-4-choices",
   "domain", "details": {"level": "L3", "task", "subtask"}}.
- the authors' released files (data/science_data/ in their repository; save_to_disk folders):
  train_data rows {"messages": [{"role": "system", ..}, {"role": "user", ..}], "output_text": <demonstration>}
  (features in its dataset_info.json; used as prompt = messages, teacher = messages[1] + output_text in
  their main.py); eval_data rows {"prompt": [system, user], "answer": "<letter>"} (its dataset_info.json).
  The system message asks for <reasoning>...</reasoning> then <answer>letter</answer>; the user turn is
  the question, a blank line, and the options as "A: ...", one per line (rows shown in public teacher-view
  dumps of the released data, e.g. proesn/Self-Distillation eval_results/).
- split 75/5/20 (METHOD.md); the paper's own split is not published, so the hub path splits with a seed.
- demonstrations: the paper's are written by a strong model and kept only when right; they exist only in
  the released train file. Hub rows and released eval rows carry none, so theirs is answer-only
  ("<answer>\\nB\\n</answer>"), used only by a teacher-prompt evaluation or when training from the hub.
"""

from __future__ import annotations

import re

from sdft.config import TaskSourceConfig
from sdft.errors import UserError
from sdft.scoring import answer_letter
from sdft.tasks.paper.common import PAPER_VERSION, describe, field_of, hub_records, local_records, seeded_split, text_of
from sdft.tasks.spec import Row, TaskSpec

HUB_ID, HUB_CONFIG, HUB_SPLIT = "hicai-zju/SciKnowEval", "Chemistry", "test"
HUB_REVISION = "3284f6fbf3b8063ab8a0408a65fb00157dbdc9fa"
LOCAL_FILES = {"train": "train_data", "test": "eval_data"}
FRACTIONS = {"train": 0.75, "validation": 0.05, "test": 0.20}
LETTERS = ("A", "B", "C", "D")
SYSTEM_PROMPT = (  # ours, for hub rows; the released files carry the authors' own system message
    "Choose the correct option of the multiple-choice question. First reason step by step inside "
    "<reasoning>...</reasoning>, then give only the letter of the correct option (A, B, C or D) inside "
    "<answer>...</answer>, for example:\n<reasoning>\n...\n</reasoning>\n<answer>\nA\n</answer>"
)


def load_science(src: TaskSourceConfig) -> TaskSpec:
    if src.source == "hub":
        splits, system, where = _from_hub(src)
    else:
        splits, system, where = _from_local(src)
    return TaskSpec(name="science", version=PAPER_VERSION, source=describe(src, where), scorer="multiple_choice",
                    splits=splits, system_prompt=system, description="SciKnowEval Chemistry L3, multiple choice A-D",
                    extra={"world": "paper"})


# --- hub: SciKnowEval rows ------------------------------------------------------------------------------

def _from_hub(src: TaskSourceConfig) -> tuple[dict[str, list[Row]], str, list[str]]:
    records, where = hub_records(src.hub or HUB_ID, HUB_CONFIG, HUB_SPLIT, src.revision or HUB_REVISION)
    rows = [_hub_row(r, where, n) for n, r in enumerate(records, start=1) if _is_l3_mcq(r)]
    if not rows:
        raise UserError(f"{where}: no Chemistry L3 four-option multiple-choice rows")
    return seeded_split(rows, FRACTIONS, src.seed), SYSTEM_PROMPT, [where]


def _is_l3_mcq(record: dict) -> bool:
    details = record.get("details") or {}
    return record.get("type") == "mcq-4-choices" and details.get("level") == "L3"


def _hub_row(record: dict, where: str, number: int) -> Row:
    question = text_of(record, "question", where, number)
    choices = field_of(record, "choices", where, number, dict)
    labels, texts = choices.get("label") or [], choices.get("text") or []
    if tuple(labels) != LETTERS or len(texts) != 4:
        raise UserError(f"{where}: row {number} needs choices labelled A, B, C, D (got labels {labels})")
    answer = text_of(record, "answerKey", where, number).strip()
    if answer not in LETTERS:
        raise UserError(f"{where}: row {number} answerKey must be one of A-D, got {answer!r}")
    options = "\n".join(f"{label}: {text}" for label, text in zip(labels, texts))
    return Row(prompt=f"{question}\n\n{options}", demonstration=answer_only(answer), answer=answer)


def answer_only(letter: str) -> str:
    return f"<answer>\n{letter}\n</answer>"


# --- local: the authors' released train/eval files -------------------------------------------------------

def _from_local(src: TaskSourceConfig) -> tuple[dict[str, list[Row]], str, list[str]]:
    splits, systems, where = {}, {}, []
    for split, default in {**LOCAL_FILES, **src.files}.items():
        records, path = local_records("science", src, split, default)
        pairs = [_released_row(r, path, n) for n, r in enumerate(records, start=1)]
        splits[split] = [row for row, _ in pairs]
        for number, (_, system) in enumerate(pairs, start=1):
            systems.setdefault(system, f"{path} row {number}")
        where.append(path)
    if len(systems) > 1:
        first, second = list(systems.values())[:2]
        raise UserError(f"science: the system prompt differs between {first} and {second}; one task has one")
    system = next(iter(systems), None)
    return splits, system or SYSTEM_PROMPT, where


def _released_row(record: dict, where: str, number: int) -> tuple[Row, str | None]:
    if "messages" in record:  # train_data: the chat and the strong model's demonstration
        system, user = _chat(field_of(record, "messages", where, number, list), "messages", where, number)
        demonstration = text_of(record, "output_text", where, number)
        letter = answer_letter(demonstration)
        if letter not in LETTERS:
            raise UserError(f"{where}: row {number} output_text has no <answer> with a letter A-D")
        return Row(prompt=user, demonstration=demonstration, answer=letter), system
    if "prompt" in record:  # eval_data: the chat and the letter
        system, user = _chat(field_of(record, "prompt", where, number, list), "prompt", where, number)
        letter = text_of(record, "answer", where, number).strip()
        if not re.fullmatch("[A-D]", letter):
            raise UserError(f"{where}: row {number} answer must be a letter A-D, got {letter!r}")
        return Row(prompt=user, demonstration=answer_only(letter), answer=letter), system
    raise UserError(f"{where}: row {number} is neither a released train row (messages, output_text) "
                    f"nor an eval row (prompt, answer); it has {', '.join(sorted(record))}")


def _chat(messages: list, key: str, where: str, number: int) -> tuple[str | None, str]:
    """(system message or None, the one user message) of a released chat."""
    roles = [m.get("role") if isinstance(m, dict) else None for m in messages]
    if roles not in (["system", "user"], ["user"]):
        raise UserError(f"{where}: row {number} '{key}' must be [system, user] or [user] messages, got roles {roles}")
    system = messages[0]["content"] if roles[0] == "system" else None
    user = messages[-1].get("content")
    if not isinstance(user, str) or not user.strip():
        raise UserError(f"{where}: row {number} '{key}' has an empty user message")
    return system, user
