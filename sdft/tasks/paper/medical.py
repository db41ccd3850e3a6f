"""Medical: HuatuoGPT-o1's data (METHOD.md): ~20k English reasoning examples for training, 1,000 verifiable
problems for testing, graded CORRECT/INCORRECT against the reference answer by an LLM judge.

Schema facts and where they come from:
- train: hub `FreedomIntelligence/medical-o1-reasoning-SFT`, config `en` (the file medical_o1_sft.json),
  split `train`; rows {"Question", "Complex_CoT", "Response"} (its dataset card and files; used the same way
  by public replications, e.g. ayushnangia/Self-Distillation src/data.py). Prompt = Question; the
  demonstration and the reference = Response (the final answer; Complex_CoT, the long reasoning, is left
  out, as in that replication: the authors' medical preprocessing is not published).
- test: hub `FreedomIntelligence/medical-o1-verifiable-problem` (file medical_o1_verifiable_problem.json),
  split `train` (its only split); rows {"Open-ended Verifiable Question", "Ground-True Answer"} (its dataset
  card; HuatuoGPT-o1 code reads these keys). The paper samples 1,000; we draw them with `seed` after
  removing questions that also appear in the training set (the SFT set was built from these problems).
  A test row's demonstration is its reference answer (used only by a teacher-prompt evaluation).
- neither dataset card nor the paper names a commit: `revision` (and `hub`) apply to the training set,
  None = the hub's default; the test set is read at the hub's default.
A local source reads the same two files (downloaded from the hub) and draws the same test sample.
"""

from __future__ import annotations

from sdft.config import TaskSourceConfig
from sdft.tasks.paper.common import (PAPER_VERSION, describe, hub_records, local_records, seeded_sample,
                                     text_of)
from sdft.tasks.spec import Row, TaskSpec

TRAIN_HUB, TRAIN_CONFIG = "FreedomIntelligence/medical-o1-reasoning-SFT", "en"
TEST_HUB = "FreedomIntelligence/medical-o1-verifiable-problem"
LOCAL_FILES = {"train": "medical_o1_sft.json", "test": "medical_o1_verifiable_problem.json"}
TEST_SIZE = 1000
QUESTION, ANSWER = "Open-ended Verifiable Question", "Ground-True Answer"


def load_medical(src: TaskSourceConfig) -> TaskSpec:
    if src.source == "hub":
        train, train_where = hub_records(src.hub or TRAIN_HUB, TRAIN_CONFIG, "train", src.revision)
        test, test_where = hub_records(TEST_HUB, None, "train", None)
    else:
        train, train_where = local_records("medical", src, "train", LOCAL_FILES["train"])
        test, test_where = local_records("medical", src, "test", LOCAL_FILES["test"])
    train_rows = [_train_row(r, train_where, n) for n, r in enumerate(train, start=1)]
    test_rows = _test_rows(test, test_where, {_key(r.prompt) for r in train_rows}, src)
    return TaskSpec(name="medical", version=PAPER_VERSION, source=describe(src, [train_where, test_where]),
                    scorer="judge_medical", splits={"train": train_rows, "test": test_rows},
                    description="HuatuoGPT-o1 medical reasoning; graded by an LLM judge against the reference",
                    extra={"world": "paper"})


def _train_row(record: dict, where: str, number: int) -> Row:
    question = text_of(record, "Question", where, number)
    response = text_of(record, "Response", where, number)
    return Row(prompt=question, demonstration=response, answer=response)


def _test_rows(records: list[dict], where: str, train_questions: set[str], src: TaskSourceConfig) -> list[Row]:
    rows = []
    for number, record in enumerate(records, start=1):
        question, answer = text_of(record, QUESTION, where, number), text_of(record, ANSWER, where, number)
        if _key(question) not in train_questions:
            rows.append(Row(prompt=question, demonstration=answer, answer=answer))
    return seeded_sample(rows, src.test_size or TEST_SIZE, src.seed)


def _key(question: str) -> str:
    return " ".join(question.split()).lower()
