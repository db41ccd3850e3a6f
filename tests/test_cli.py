"""The command line as a user meets it: help for every command, one line and exit 1 for every mistake,
and `eval` / `check` writing results.json of the documented shape on a fixture model."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sdft.cli import app

runner = CliRunner()
COMMANDS = ["train", "eval", "sequence", "check", "tasks", "ttt"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], prog_name="sdft")


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command):
    result = invoke(command, "--help")
    assert result.exit_code == 0, result.output
    assert "Usage: sdft " + command in " ".join(result.output.split())


def test_top_level_help_lists_all_commands():
    result = invoke("--help")
    assert result.exit_code == 0
    for command in COMMANDS:
        assert command in result.output


@pytest.fixture
def fixture_config(tmp_path, tiny_model_dir, custom_task_file):
    path = tmp_path / "fixture.yaml"
    path.write_text(
        f"model: {{name_or_path: '{tiny_model_dir}'}}\n"
        f"custom_tasks: ['{custom_task_file}']\n"
        "tasks: [doubling]\n"
        "eval: {general: [doubling], max_new_tokens: 8, batch_size: 2}\n"
    )
    return path


def one_error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1, result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


@pytest.mark.parametrize(
    "yaml_text, expected",
    [
        ("tasks: [doubling]\ntrain: {stpes: 3}\n", "unknown key 'train.stpes' (did you mean 'train.steps'?)"),
        ("tasks: [doubling]\ntrain: {steps: three}\n", "'train.steps' must be an integer, got 'three'"),
        ("tasks: [doublin]\n", "unknown task 'doublin' (did you mean 'doubling'?)"),
    ],
)
def test_config_mistakes_give_one_line_and_exit_1(tmp_path, fixture_config, yaml_text, expected):
    bad = tmp_path / "bad.yaml"
    bad.write_text(fixture_config.read_text().replace("tasks: [doubling]\n", "") + yaml_text)
    assert expected in one_error_line(invoke("eval", "--config", bad, "--output", tmp_path / "out"))


def test_missing_config_file(tmp_path):
    assert "config file 'nowhere.yaml' not found" in one_error_line(invoke("check", "--config", "nowhere.yaml"))
    assert "config file 'nowhere.yaml' not found" in one_error_line(invoke("train", "nowhere.yaml"))


def test_dataset_row_without_answer(tmp_path, fixture_config, custom_task_file):
    test_file = custom_task_file.parent / "data" / "test.jsonl"
    lines = test_file.read_text().splitlines()
    row = json.loads(lines[2])
    del row["label"]
    lines[2] = json.dumps(row)
    test_file.write_text("\n".join(lines) + "\n")
    line = one_error_line(invoke("eval", "--config", fixture_config, "--output", tmp_path / "out"))
    assert "test.jsonl: row 3 has no field 'label' (the row's answer)" in line


def test_debug_shows_the_traceback(tmp_path):
    result = invoke("--debug", "check", "--config", "nowhere.yaml")
    assert result.exit_code != 0 and result.exception is not None
    assert type(result.exception).__name__ == "UserError"


def test_eval_writes_results_of_the_documented_shape(tmp_path, fixture_config):
    out = tmp_path / "eval-run"
    result = invoke("eval", "--config", fixture_config, "--output", out, "--limit", 3)
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert results["world"] == "custom" and results["prompt"] == "student"
    scores = results["scores"]["doubling"]
    assert scores["n"] == 3 and 0.0 <= scores["accuracy"] <= 1.0
    assert set(scores) >= {"accuracy", "unseen_accuracy", "n"}
    assert set(results["general"]) == {"mean", "doubling"}
    assert (out / "config.yaml").is_file() and (out / "env.json").is_file()
    samples = (out / "samples" / "doubling.jsonl").read_text().splitlines()
    assert len(samples) == 3 and json.loads(samples[0])["prompt"] == "What is 0 + 0?"


def test_eval_teacher_prompt_is_recorded(tmp_path, fixture_config):
    out = tmp_path / "teacher-run"
    assert invoke("eval", "--config", fixture_config, "--output", out, "--limit", 2, "--teacher").exit_code == 0
    assert json.loads((out / "results.json").read_text())["prompt"] == "teacher"
    assert (out / "samples" / "doubling-teacher.jsonl").is_file()


def test_check_writes_student_teacher_scores_and_a_verdict(tmp_path, fixture_config):
    out = tmp_path / "check-run"
    result = invoke("check", "--config", fixture_config, "--output", out, "--limit", 2)
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert set(results["scores"]["doubling"]) >= {"student", "teacher", "unseen_student", "unseen_teacher", "n"}
    assert results["verdict"] in {"ready", "weak"} and "verdict:" in result.output
    # a random-weight model cannot beat itself by reading a demonstration
    assert results["verdict"] == "weak" and results["reasons"]


def test_tasks_lists_custom_tasks(fixture_config):
    result = invoke("tasks", "--config", fixture_config)
    assert result.exit_code == 0, result.output
    assert "doubling" in result.output and "train 6" in result.output


def test_an_error_keeps_its_square_brackets():
    """Error lines are printed as text, not rich markup: '[my_chat_prompts]' would otherwise vanish as a tag."""
    paper = Path(__file__).resolve().parents[1] / "configs" / "paper" / "science.yaml"
    line = one_error_line(invoke("train", paper, "--dry-run", "--set", "train.method=sft_reinvoke"))
    assert "train.reinvoke.tasks=[my_chat_prompts]" in line
