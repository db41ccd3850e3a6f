"""The paper's tasks on hand-written fixture files in the real schemas (tests/fixtures/paper/), read through
the same code paths as the real data, and their scorers on real-looking model outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sdft.config import TaskSourceConfig, load_config
from sdft.errors import UserError
from sdft.scoring import multiple_choice_letter, tool_call_match
from sdft.tasks.paper import medical
from sdft.tasks.paper.knowledge import load_knowledge
from sdft.tasks.paper.medical import load_medical
from sdft.tasks.paper.science import HUB_REVISION, load_science
from sdft.tasks.paper.tools import load_tools
from sdft.tasks.registry import load_tasks, task_registry

FIXTURES = Path(__file__).parent / "fixtures" / "paper"
JSONL = {"train": "train_data.jsonl", "test": "eval_data.jsonl"}


def local(task: str, **kw) -> TaskSourceConfig:
    return TaskSourceConfig(source="local", path=str(FIXTURES / task), **kw)


def saved_to_disk(src_dir: Path, tmp_path: Path) -> Path:
    """The fixture files as datasets save_to_disk folders: the form the authors released."""
    import datasets

    for split, name in JSONL.items():
        records = [json.loads(line) for line in (src_dir / name).read_text().splitlines()]
        datasets.Dataset.from_list(records).save_to_disk(str(tmp_path / name.removesuffix(".jsonl")))
    return tmp_path


# --- science -------------------------------------------------------------------------------------------

def test_science_released_files_give_prompts_demonstrations_and_letters(tmp_path):
    task = load_science(local("science", files=JSONL))
    assert task.split_sizes() == {"train": 3, "test": 3} and task.scorer == "multiple_choice"
    first = task.split("train")[0]
    assert first.prompt.startswith("What is the molar mass of sodium carbonate") and first.prompt.endswith("D: 122.00")
    assert first.demonstration.startswith("<reasoning>") and first.answer == "B"
    assert [r.answer for r in task.split("test")] == ["B", "A", "C"]
    assert "<reasoning>" in task.system_prompt and "<answer>" in task.system_prompt  # the data's own system turn
    from_disk = load_science(TaskSourceConfig(source="local", path=str(saved_to_disk(FIXTURES / "science", tmp_path))))
    assert from_disk.splits == task.splits and from_disk.system_prompt == task.system_prompt


def test_science_hub_path_reads_the_pinned_config_and_keeps_l3_four_option_rows():
    src = TaskSourceConfig(source="hub", hub=str(FIXTURES / "science" / "hub"), seed=0)
    task = load_science(src)
    rows = [r for split in task.splits.values() for r in split]
    assert len(rows) == 7  # 10 rows: one L1, one two-option, one open-ended are left out
    assert task.split_sizes() == {"train": 5, "validation": 0, "test": 2}
    assert task.source.endswith(f"@{HUB_REVISION[:7]}")
    water = next(r for r in rows if "molar mass of water" in r.prompt)
    assert water.prompt.endswith("\n\nA: 16.00\nB: 17.01\nC: 18.02\nD: 20.00") and water.answer == "C"
    assert water.demonstration == "<answer>\nC\n</answer>"
    assert load_science(src).splits == task.splits  # the seeded split is reproducible
    assert load_science(TaskSourceConfig(source="hub", hub=src.hub, seed=1)).splits != task.splits


@pytest.mark.parametrize("response, expected", [
    ("<reasoning>\n2 x 22.99 + 12.01 + 48.00 = 105.99\n</reasoning>\n<answer>\nB\n</answer>", 1.0),
    ("<reasoning>\nThe carbonate weighs 60.\n</reasoning>\n<answer>\nD\n</answer>", 0.0),
    ("<reasoning>\n...\n</reasoning>\n<answer>(B)</answer>", 1.0),
    ("The answer is B.", 0.0),                                    # malformed: no <answer> tag
    ("<reasoning>\n...\n</reasoning>\n<answer>\nB or C\n</answer>", 0.0),
    ("<reasoning>\n...", 0.0),                                    # cut off at the length cap
])
def test_science_scorer_on_model_outputs(response, expected):
    row = load_science(local("science", files=JSONL)).split("train")[0]
    assert multiple_choice_letter(response, row.answer) == expected


def test_science_bad_rows_name_the_file_and_row(tmp_path):
    (tmp_path / "train.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "Q?"}],
                                                       "output_text": "I think it is B."}) + "\n")
    (tmp_path / "test.jsonl").write_text(json.dumps({"prompt": [{"role": "user", "content": "Q?"}], "answer": "E"}) + "\n")
    src = TaskSourceConfig(source="local", path=str(tmp_path), files={"train": "train.jsonl", "test": "test.jsonl"})
    with pytest.raises(UserError, match=r"train.jsonl: row 1 output_text has no <answer> with a letter A-D"):
        load_science(src)
    with pytest.raises(UserError, match=r"science: '.*nowhere/train_data' not found"):
        load_science(TaskSourceConfig(source="local", path=str(tmp_path / "nowhere")))


# --- tools ---------------------------------------------------------------------------------------------

def test_tools_released_files_read_both_golden_answer_shapes(tmp_path):
    task = load_tools(local("tools", files=JSONL))
    assert task.split_sizes() == {"train": 3, "test": 3} and task.scorer == "tool_call"
    books = task.split("train")[1]  # golden_answer as a struct of lists, two steps in golden_response
    assert books.prompt.startswith("Your task is to answer the user's question using available tools.")
    assert "Documentation:\nsearchBooks:" in books.prompt and books.prompt.endswith("OL123W.")
    assert books.demonstration.count("\nAction: ") == 2 and books.demonstration.startswith(" I should search")
    assert books.answer == ('Action: searchBooks\nAction Input: {"query": "volcanoes", "author": "Simon Winchester", "limit": 5}\n'
                            'Action: getBookDetails\nAction Input: {"bookId": "OL123W"}')
    two = task.split("test")[2]  # a list of {Action, Action_Input}; no written response: the calls themselves
    assert two.demonstration == two.answer and two.answer.count("getBookDetails") == 2
    assert load_tools(TaskSourceConfig(source="local", path=str(saved_to_disk(FIXTURES / "tools", tmp_path)))).splits == task.splits


TIDE_ROW = 0
OUTPUTS = [
    ('Thought: I need the tides for the station on that date.\nAction: getTidePredictions\n'
     'Action Input: {"stationId": "8518750", "date": "2024-05-01", "units": "english"}', 1.0),
    ('Thought: Same call, arguments in another order.\nAction: getTidePredictions\n'
     'Action Input: {"units": "english", "date": "2024-05-01", "stationId": "8518750"}', 1.0),
    ('Thought: Wrong units.\nAction: getTidePredictions\n'
     'Action Input: {"stationId": "8518750", "date": "2024-05-01", "units": "metric"}', 0.0),
    ('Thought: I should look the station up first.\nAction: searchStations\nAction Input: {"name": "8518750"}', 0.0),
    ('Thought: Malformed input.\nAction: getTidePredictions\nAction Input: {stationId: 8518750, date: 2024-05-01}', 0.0),
    ("The high tides are at 6 am and 6 pm.", 0.0),
]


@pytest.mark.parametrize("response, expected", OUTPUTS)
def test_tools_scorer_on_model_outputs(response, expected):
    row = load_tools(local("tools", files=JSONL)).split("test")[TIDE_ROW]
    assert tool_call_match(response, row.answer) == expected


def test_tools_multi_call_rows_need_every_call():
    row = load_tools(local("tools", files=JSONL)).split("test")[2]
    both = ('Thought: two books.\nAction: getBookDetails\nAction Input: {"bookId": "OL45W"}\n'
            'Observation: ...\nThought: and the second.\nAction: getBookDetails\nAction Input: {"bookId": "OL46W"}')
    one = 'Thought: one book.\nAction: getBookDetails\nAction Input: {"bookId": "OL45W"}'
    assert tool_call_match(both, row.answer) == 1.0
    assert tool_call_match(one, row.answer) == 0.0  # the multiset of actions differs


def test_tools_bad_rows_and_missing_hub(tmp_path):
    record = json.loads((FIXTURES / "tools" / "eval_data.jsonl").read_text().splitlines()[0])
    record["golden_answer"][0]["Action_Input"] = "stationId=8518750"
    (tmp_path / "eval_data.jsonl").write_text(json.dumps(record) + "\n")
    src = TaskSourceConfig(source="local", path=str(tmp_path), files={"train": "eval_data.jsonl", "test": "eval_data.jsonl"})
    with pytest.raises(UserError, match="eval_data.jsonl: row 1 Action_Input of getTidePredictions is not JSON"):
        load_tools(src)
    with pytest.raises(UserError, match="not on the hub"):
        load_tools(TaskSourceConfig(source="hub"))


# --- medical -------------------------------------------------------------------------------------------

def test_medical_local_files_train_on_responses_and_test_on_unseen_verifiable_problems():
    task = load_medical(local("medical"))
    assert task.scorer == "judge_medical" and task.split_sizes() == {"train": 3, "test": 3}
    gout = task.split("train")[0]
    assert gout.prompt.startswith("A 45-year-old man") and gout.demonstration == gout.answer
    assert gout.demonstration.startswith("The diagnosis is acute gouty arthritis")
    test_answers = {r.answer for r in task.split("test")}
    assert test_answers == {"Graves disease", "N-acetylcysteine", "Parainfluenza virus"}  # scurvy is a train question
    assert load_medical(local("medical", test_size=2, seed=5)).split_sizes()["test"] == 2


def test_medical_hub_path_gives_the_rows_of_the_local_files(monkeypatch):
    monkeypatch.setattr(medical, "TEST_HUB", str(FIXTURES / "medical" / "hub-verifiable"))
    hub = load_medical(TaskSourceConfig(source="hub", hub=str(FIXTURES / "medical" / "hub-sft")))
    assert hub.splits == load_medical(local("medical")).splits


# --- knowledge -----------------------------------------------------------------------------------------

def test_knowledge_teacher_contexts_splits_corpus_and_oracle():
    task = load_knowledge(local("knowledge"))
    assert task.split_sizes() == {"train": 3, "test": 2, "ood": 1} and task.scorer == "judge_knowledge"
    row = task.split("train")[0]
    assert row.prompt == "What was the magnitude of the 2025 Marlow Bay earthquake?"
    assert row.demonstration.startswith("2025 Marlow Bay earthquake\nThe 2025 Marlow Bay") and row.demonstration.endswith("Answer: 7.1")
    assert load_knowledge(local("knowledge", teacher_context="answer")).split("train")[0].demonstration == "7.1"
    assert len(task.extra["corpus"]) == 2 and task.extra["corpus"][1].startswith("Cyclone Teodora")
    oracle = load_knowledge(local("knowledge"), oracle=True)
    ood = oracle.split("ood")[0]
    assert "Article: Cyclone Teodora" in ood.prompt and ood.prompt.endswith(ood.question)
    assert ood.question.startswith("Which town flooded") and "corpus" not in oracle.extra


def test_knowledge_question_about_an_unknown_article(tmp_path):
    (tmp_path / "articles.jsonl").write_text((FIXTURES / "knowledge" / "articles.jsonl").read_text())
    (tmp_path / "qa.jsonl").write_text(json.dumps({"question": "Q?", "answer": "A", "title": "Nope", "split": "test"}) + "\n")
    with pytest.raises(UserError, match=r"qa.jsonl: row 1 names the article 'Nope'"):
        load_knowledge(TaskSourceConfig(source="local", path=str(tmp_path)))


# --- the registry and evaluation ------------------------------------------------------------------------

def test_task_sources_route_names_to_the_paper_data_and_mistakes_are_named():
    sources = {"science": local("science", files=JSONL), "knowledge": local("knowledge")}
    registry = task_registry(sources=sources)
    science, oracle = load_tasks(["science", "knowledge_oracle"], registry)
    assert science.extra["world"] == "paper" and oracle.name == "knowledge_oracle"
    assert load_tasks(["tools"], registry)[0].source == "embedded"  # not listed: the miniature
    assert load_tasks(["knowledge"], task_registry())[0].extra["world"] == "embedded"  # not listed: the miniature
    with pytest.raises(UserError, match="did you mean 'science'"):
        task_registry(sources={"sciense": local("science")})
    with pytest.raises(UserError, match="needs 'path'"):
        task_registry(sources={"tools": TaskSourceConfig(source="local")})


def test_a_judged_task_without_a_judge_is_refused_before_any_model_loads(tmp_path):
    from sdft.run_eval import plan_evaluation

    cfg = load_config(None, [f"task_sources.medical={{source: local, path: {FIXTURES / 'medical'}}}",
                             "tasks=[medical]", "eval.general=[]"])
    with pytest.raises(UserError, match="medical: graded by an LLM judge, but no judge is configured"):
        plan_evaluation(cfg, "eval", tmp_path / "run", None)


class ScriptedBackend:
    identity = "scripted:judge"

    def __init__(self, reply):
        self.reply, self.prompts = reply, []

    def complete_many(self, prompts):
        self.prompts.extend(prompts)
        return [self.reply] * len(prompts)


def test_evaluation_grades_with_the_judge_and_reports_lenient_accuracy(tiny_model_dir):
    from sdft.config import EvalConfig, ModelConfig
    from sdft.evaluate import evaluate_task
    from sdft.judge import Judge
    from sdft.models import load_model

    loaded = load_model(ModelConfig(name_or_path=str(tiny_model_dir), device="cpu"))
    oracle = load_knowledge(local("knowledge"), oracle=True)
    backend = ScriptedBackend("PARTIAL")
    result = evaluate_task(loaded, oracle, EvalConfig(max_new_tokens=4), judge=Judge(backend, None))
    summary = result.summary()
    assert (summary["accuracy"], summary["lenient_accuracy"], summary["n"]) == (0.0, 1.0, 2)
    assert {s["verdict"] for s in result.samples} == {"PARTIAL"}
    assert "[Question]\nHow deep was the hypocentre" in backend.prompts[0]  # the bare question, not the article
    with pytest.raises(UserError, match="graded by an LLM judge and no judge is configured"):
        evaluate_task(loaded, oracle, EvalConfig(max_new_tokens=4))
