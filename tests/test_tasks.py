"""Loading task rows from every supported source, and one clear line for every bad row."""

import json

import pytest

from conftest import qa_records, write_jsonl
from sdft.errors import UserError
from sdft.tasks.custom import load_custom_task
from sdft.tasks.loading import DataSource, load_records, rows_from_records
from sdft.tasks.registry import load_tasks, task_registry

FIELDS = {"prompt": "question", "demonstration": "response", "answer": "label"}


def test_custom_task_from_jsonl_with_field_mapping(custom_task_file):
    task = load_custom_task(custom_task_file)
    assert (task.name, task.version, task.scorer) == ("doubling", "2", "normalized")
    assert task.split_sizes() == {"train": 6, "test": 5}
    first = task.split("test")[0]
    assert (first.prompt, first.answer, first.unseen) == ("What is 0 + 0?", "0", True)
    with pytest.raises(UserError, match="no split 'validation'"):
        task.split("validation")


def test_json_parquet_disk_and_hub_sources_give_the_same_rows(tmp_path):
    import datasets

    records = qa_records(4)
    (tmp_path / "d.json").write_text(json.dumps(records))
    dataset = datasets.Dataset.from_list(records)
    dataset.to_parquet(str(tmp_path / "d.parquet"))
    dataset.save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict({"test": dataset}).save_to_disk(str(tmp_path / "saved_dict"))
    write_jsonl(tmp_path / "hubdir" / "test.jsonl", records)  # a local folder read by the hub code path
    sources = [
        DataSource(path=str(tmp_path / "d.json")),
        DataSource(path=str(tmp_path / "d.parquet")),
        DataSource(path=str(tmp_path / "saved")),
        DataSource(path=str(tmp_path / "saved_dict"), split="test"),
        DataSource(hub=str(tmp_path / "hubdir"), split="test"),
    ]
    expected = rows_from_records(records, FIELDS, "expected")
    for source in sources:
        assert rows_from_records(load_records(source), FIELDS, source.describe()) == expected, source


def test_row_without_its_answer_names_file_row_and_field(tmp_path):
    records = qa_records(3)
    del records[1]["label"]
    path = write_jsonl(tmp_path / "bad.jsonl", records)
    with pytest.raises(UserError, match=r"bad.jsonl: row 2 has no field 'label' \(the row's answer\)"):
        rows_from_records(load_records(DataSource(path=str(path))), FIELDS, str(path))


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: None, "data file '.*missing.jsonl' not found"),
        (lambda p: p.write_text('{"question": 1}\nnot json\n'), r"line 2 is not valid JSON"),
        (lambda p: p.write_text("[1, 2]"), "row 1 is not a JSON object"),
    ],
)
def test_bad_data_files(tmp_path, setup, message):
    name = "missing.jsonl" if "not found" in message else ("x.json" if "object" in message else "x.jsonl")
    path = tmp_path / name
    setup(path)
    with pytest.raises(UserError, match=message):
        rows_from_records(load_records(DataSource(path=str(path))), FIELDS, str(path))


def test_custom_task_yaml_mistakes(tmp_path, custom_task_file):
    bad_scorer = tmp_path / "t1.yaml"
    bad_scorer.write_text("name: t\nscorer: exakt\nsplits: {test: data/test.jsonl}\n")
    with pytest.raises(UserError, match="did you mean 'exact'"):
        load_custom_task(bad_scorer)
    no_splits = tmp_path / "t2.yaml"
    no_splits.write_text("name: t\nscorer: exact\n")
    with pytest.raises(UserError, match="t2.yaml: missing key 'splits'"):
        load_custom_task(no_splits)
    typo = tmp_path / "t3.yaml"
    typo.write_text("name: t\nscorer: exact\nsplits: {test: data/test.jsonl}\nfeilds: {}\n")
    with pytest.raises(UserError, match="unknown key 'feilds' \\(did you mean 'fields'\\?\\)"):
        load_custom_task(typo)


def test_registry_resolves_custom_tasks_and_rejects_unknown_names(custom_task_file):
    registry = task_registry([str(custom_task_file)])
    (task,) = load_tasks(["doubling"], registry)
    assert task.name == "doubling"
    with pytest.raises(UserError, match="unknown task 'doublin' \\(did you mean 'doubling'\\?\\)"):
        load_tasks(["doubling", "doublin"], registry)
