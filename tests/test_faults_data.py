"""The fault suite, part 2: bad data files behind a custom task. Each is refused before any model loads, in one line
naming the file (and the row and field where there is one), exit 1, no traceback, and no run folder appears."""

from __future__ import annotations

import json

import pytest

from conftest import qa_records, write_jsonl
from faults import invoke, make_world, refused_alone

GARBAGE = bytes(range(256)) * 8  # not UTF-8, not JSON, not parquet


@pytest.fixture
def world(tmp_path, tiny_model_dir):
    return make_world(tmp_path / "world", tiny_model_dir)


def point_split_at(world, split: str, name: str):
    """Make the task's `split` read the file `name` (in the world's data folder); returns that path."""
    task = world.parent / "doubling.yaml"
    task.write_text(task.read_text().replace(f"{split}: data/{split}.jsonl", f"{split}: data/{name}"))
    return world.parent / "data" / name


def eval_refused(world, tmp_path, *expected):
    line = refused_alone(invoke("eval", "--config", world, "--output", tmp_path / "out"), *expected)
    assert not (tmp_path / "out").exists()
    return line


@pytest.mark.parametrize("name, expected", [
    ("test.jsonl", "not a text file"), ("test.json", "not a text file"), ("test.parquet", "not a readable parquet file"),
])
def test_a_data_file_of_binary_garbage_is_one_line(world, tmp_path, name, expected):
    point_split_at(world, "test", name).write_bytes(GARBAGE)
    eval_refused(world, tmp_path, name, expected)


def test_a_damaged_save_to_disk_folder_is_one_line(world, tmp_path):
    folder = point_split_at(world, "test", "saved")
    folder.mkdir()
    (folder / "dataset_info.json").write_bytes(GARBAGE)
    (folder / "state.json").write_text("{}")
    eval_refused(world, tmp_path, "saved: not a readable datasets save_to_disk folder")


def test_an_empty_test_split_is_refused_not_scored_zero_of_zero(world, tmp_path):
    (world.parent / "data" / "test.jsonl").write_text("")
    eval_refused(world, tmp_path, "test.jsonl: holds no rows")


def test_an_empty_training_split_is_named_not_blamed_on_the_length_caps(world, tmp_path):
    (world.parent / "data" / "train.jsonl").write_text("\n\n")
    refused_alone(invoke("train", world, "--output", tmp_path / "run"), "train.jsonl: holds no rows")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("field, value, expected", [
    ("question", "", "row 3 field 'question' (the row's prompt) is empty"),
    ("question", "  \n\t ", "row 3 field 'question' (the row's prompt) is empty"),
    ("label", 6, "row 3 field 'label' (the row's answer) must be text, got a number 6"),
    ("label", ["6"], "row 3 field 'label' (the row's answer) must be text, got a list [\"6\"]"),
    ("response", {"text": "6"}, "row 3 field 'response' (the row's demonstration) must be text, got a mapping"),
    ("unseen", "no", "row 3 field 'unseen' must be true, false or null, got \"no\""),
], ids=["empty-prompt", "blank-prompt", "number-answer", "list-answer", "mapping-demonstration", "unseen-word"])
def test_a_bad_field_names_file_row_and_field(world, tmp_path, field, value, expected):
    records = qa_records(4)
    records[2][field] = value
    write_jsonl(world.parent / "data" / "test.jsonl", records)
    eval_refused(world, tmp_path, "test.jsonl", expected)


def test_a_broken_jsonl_line_is_named(world, tmp_path):
    path = world.parent / "data" / "test.jsonl"
    lines = path.read_text().splitlines()
    lines[1] = lines[1][:-5]
    path.write_text("\n".join(lines) + "\n")
    eval_refused(world, tmp_path, "test.jsonl: line 2 is not valid JSON")


def test_a_row_without_its_answer_is_named(world, tmp_path):
    records = qa_records(4)
    del records[3]["label"]
    write_jsonl(world.parent / "data" / "test.jsonl", records)
    eval_refused(world, tmp_path, "test.jsonl: row 4 has no field 'label' (the row's answer)")


def test_a_json_file_that_is_not_a_list(world, tmp_path):
    point_split_at(world, "test", "test.json").write_text(json.dumps({"rows": qa_records(2)}))
    eval_refused(world, tmp_path, "test.json: expected a JSON list of records, got dict")


def test_a_missing_data_file_is_named(world, tmp_path):
    (world.parent / "data" / "test.jsonl").unlink()
    eval_refused(world, tmp_path, "test.jsonl' not found")


def test_an_overlong_prompt_is_named_by_row_before_the_base_evaluation(world, tmp_path):
    refused_alone(invoke("train", world, "--set", "train.max_prompt_tokens=8", "--output", tmp_path / "run"),
                  "task 'doubling' split 'train' row 1: the prompt has", "over train.max_prompt_tokens=8")
    assert not (tmp_path / "run" / "eval_before.json").exists()  # found before minutes of evaluation, not after
