"""The embedded knowledge world (sdft/tasks/knowledge_world.py), its scorers, the paper's table built from
sequence rows (sdft/knowledge_table.py), and the sequence and check pieces it uses."""

from __future__ import annotations

import json

import pytest

from sdft.config import load_config
from sdft.errors import UserError
from sdft.knowledge_table import knowledge_table
from sdft.metrics import mean_ci95
from sdft.scoring import contained_match, normalized_match
from sdft.sequence import plan_sequence, stage_config
from sdft.tasks import knowledge_world as K
from sdft.tasks.knowledge_world import VERSION
from sdft.tasks.registry import load_tasks, task_registry


def test_the_task_asks_every_fact_of_every_event_in_three_splits():
    task, oracle = load_tasks(["knowledge", "knowledge_oracle"], task_registry())
    events = K.events("task", VERSION)
    assert task.split_sizes() == {"train": 4 * 4 * len(events), "test": 4 * len(events), "ood": 3 * len(events)}
    assert task.extra["world"] == "embedded" and len(task.extra["corpus"]) == len(events)
    train = {r.prompt for r in task.split("train")}
    assert not train & {r.prompt for r in task.split("test")} and not train & {r.prompt for r in task.split("ood")}
    for row in task.split("train"):  # the teacher context holds the article and the answer
        assert row.demonstration.endswith(f"\n\nAnswer: {row.answer}")
        assert row.answer in row.demonstration.split("\n\nAnswer:")[0]
    for row, plain in zip(oracle.split("test"), task.split("test")):
        assert row.question == plain.prompt and row.prompt.endswith(f"Question: {plain.prompt}")
        assert row.answer in row.prompt


def test_pretraining_never_sees_a_task_event():
    task_names = {e.name.split()[0] for e in K.events("task", VERSION)}
    background = {e.name.split()[0] for e in K.events("background", VERSION)}
    assert len(task_names) == K.EVENTS["task"] and len(background) == K.EVENTS["background"]
    assert not task_names & background


def test_the_ood_view_and_the_teacher_context_of_the_embedded_source():
    registry = task_registry(sources={"knowledge": _embedded(teacher_context="answer")})
    ood, plain = load_tasks(["knowledge_ood", "knowledge"], registry)
    assert ood.split_sizes() == {"test": 3 * K.EVENTS["task"]} and "corpus" not in ood.extra
    assert all(row.demonstration == row.answer for row in plain.split("train"))
    assert plain.version.endswith("+answer")  # the teacher context is part of the version (caches see it)


def test_self_edits_by_template_hold_the_facts_and_never_a_test_phrasing():
    import random

    rng, event = random.Random(0), K.events("task", VERSION)[0]
    facts = [event.fact(relation) for relation in K.QUESTIONS]
    tests = {q.split(event.name)[0] for q, _ in K.questions(event, "test")}  # each test phrasing's opening words
    rewrite, self_qa = K.self_edit(event, "rewrite", rng), K.self_edit(event, "self_qa", rng)
    assert sorted(rewrite.splitlines()) == sorted(K.restatements(event)) and "?" not in rewrite
    questions = self_qa.splitlines()
    assert len(questions) == 2 * len(facts) and all("?" in line for line in questions)
    for line in questions:  # a train phrasing of some fact, then that fact
        question, answer = line.rsplit("? ", 1)
        assert (f"{question}?", answer) in K.questions(event, "train")
    mixes = {_mix(K.self_edit(event, "implications", rng), event) for _ in range(200)}
    assert mixes == {"restate", "vague", "question", "mixed"}  # its samples differ in how much they could help
    for template in ("rewrite", "self_qa", "implications"):
        for line in K.self_edit(event, template, rng).splitlines():
            assert not any(line.startswith(t) for t in tests), line


def _mix(edit: str, event) -> str:
    kinds = {"restate": set(K.restatements(event)), "vague": set(K.vague_lines(event))}
    lines = set(edit.splitlines())
    if all("?" in line for line in lines):
        return "question"
    return next((kind for kind, known in kinds.items() if lines == known), "mixed")


def _embedded(**kwargs):
    from sdft.config import TaskSourceConfig

    return TaskSourceConfig(source="embedded", **kwargs)


@pytest.mark.parametrize("response, answer, strict, lenient", [
    ("Ok. Answer: Lima", "Lima", 1, 1),
    ("Ok. Answer: It hit Lima.", "Lima", 0, 1),
    ("Ok. Answer: Limassol", "Lima", 0, 0),
    ("Ok. Answer: L", "L", 1, 1),
    ("Ok. Answer: Lima", "L", 0, 0),
    ("Ok. Answer: 340 homes", "340", 0, 1),
])
def test_strict_and_lenient_grades(response, answer, strict, lenient):
    assert (normalized_match(response, answer), contained_match(response, answer)) == (strict, lenient)


def _row(strict, lenient, ood, general, oracle=None):
    scores = {"knowledge": {"accuracy": strict, "lenient_accuracy": lenient}, "knowledge_ood": {"accuracy": ood}}
    if oracle is not None:
        scores["knowledge_oracle"] = {"accuracy": oracle[0], "lenient_accuracy": oracle[1]}
        scores["knowledge_oracle_ood"] = {"accuracy": oracle[2]}
    return {"scores": scores, "general": {"mean": general}}


def test_the_table_reads_the_row_after_the_knowledge_stage_and_averages_seeds():
    base = _row(0.0, 0.1, 0.05, 0.9, oracle=(0.95, 1.0, 0.8))
    science = _row(0.0, 0.1, 0.05, 0.8)
    chains = {"sdft": {0: [base, science, _row(0.6, 0.7, 0.3, 0.85)], 1: [base, science, _row(0.8, 0.9, 0.5, 0.75)]},
              "cpt": {0: [base, science, _row(0.1, 0.2, 0.0, 0.5)]}}
    table = knowledge_table(["science", "knowledge"], chains)
    assert table["base"] == {"strict": 0.0, "strict_ci95": None, "lenient": 0.1, "lenient_ci95": None,
                             "ood": 0.05, "ood_ci95": None, "general_delta": 0.0, "general_delta_ci95": None}
    assert (table["oracle"]["strict"], table["oracle"]["lenient"], table["oracle"]["ood"]) == (0.95, 1.0, 0.8)
    sdft = table["sdft"]
    assert (sdft["strict"], sdft["strict_ci95"]) == pytest.approx(mean_ci95([0.6, 0.8]))
    assert (sdft["ood"], sdft["lenient"]) == pytest.approx((0.4, 0.8))
    # the general change over the knowledge stage, not since the base: 0.85 - 0.8 and 0.75 - 0.8
    assert sdft["general_delta"] == pytest.approx(0.0) and sdft["general_delta_ci95"] > 0
    assert table["cpt"]["general_delta"] == pytest.approx(-0.3) and table["cpt"]["strict_ci95"] is None
    assert knowledge_table(["science"], chains) is None


def test_the_report_shows_the_table_with_every_interval():
    from sdft.report.sequence import _knowledge_md

    base = _row(0.0, 0.1, 0.05, 0.9, oracle=(0.95, 1.0, 0.8))
    chains = {"sdft": {0: [base, _row(0.6, 0.7, 0.3, 0.85)], 1: [base, _row(0.8, 0.9, 0.5, 0.75)]}}
    lines = _knowledge_md({"world": "embedded", "knowledge_table": knowledge_table(["knowledge"], chains)})
    half = mean_ci95([0.6, 0.8])[1]
    delta_half = mean_ci95([-0.05, -0.15])[1]
    text = "\n".join(lines)
    assert (f"| sdft | 0.700 ± {half:.3f} | 0.800 ± {half:.3f} | 0.400 ± {half:.3f} "
            f"| -0.100 ± {delta_half:.3f} |") in text.splitlines()
    assert "| oracle | 0.950 | 1.000 | 0.800 | +0.000 |" in text.splitlines()
    assert lines[0] == "## Knowledge injection (embedded world)"


def test_a_cell_nobody_evaluated_is_none():
    row = {"scores": {"knowledge": {"accuracy": 0.5}}, "general": {"mean": None}}
    table = knowledge_table(["knowledge"], {"sft": {0: [row, row]}})
    assert table["sft"]["lenient"] is None and table["sft"]["ood"] is None and table["sft"]["general_delta"] is None
    assert table["oracle"]["strict"] is None


@pytest.fixture
def knowledge_config(tiny_model_dir):
    def make(*overrides):
        return load_config(None, [f"model.name_or_path={tiny_model_dir}", "tasks=[knowledge]", "eval.general=[]",
                                  "sequence.methods=[sdft, sft, cpt]", *overrides])
    return make


def test_method_overrides_give_sft_the_answer_as_its_target(knowledge_config, tmp_path):
    cfg = knowledge_config("sequence.method_overrides={sft: {task_sources.knowledge.teacher_context: answer}}",
                           "eval.tasks=[knowledge_ood, knowledge_oracle]")
    assert stage_config(cfg, "knowledge", "sft", 0).task_sources["knowledge"].teacher_context == "answer"
    assert "knowledge" not in stage_config(cfg, "knowledge", "sdft", 0).task_sources
    plan = plan_sequence(cfg, tmp_path / "run")
    assert [t.name for t in plan.also] == ["knowledge_ood", "knowledge_oracle"]
    # a method the command line leaves out keeps its overrides in the config, unused
    only_sdft = knowledge_config("sequence.method_overrides={sft: {task_sources.knowledge.teacher_context: answer}}",
                                 "sequence.methods=[sdft]")
    assert plan_sequence(only_sdft, tmp_path / "only-sdft").cfg.sequence.methods == ["sdft"]


def test_bad_method_overrides_fail_before_training(knowledge_config, tmp_path):
    with pytest.raises(UserError, match=r"method_overrides names \['sfd'\], which are not methods"):
        plan_sequence(knowledge_config("sequence.method_overrides={sfd: {train.steps: 3}}"), tmp_path / "a")
    with pytest.raises(UserError, match="unknown key"):
        plan_sequence(knowledge_config("sequence.method_overrides={sft: {train.stepz: 3}}"), tmp_path / "b")
    with pytest.raises(UserError, match="unknown task 'knowledge_odd'"):
        plan_sequence(knowledge_config("eval.tasks=[knowledge_odd]"), tmp_path / "c")


def test_check_shows_the_oracle_beside_student_and_teacher(tmp_path, tiny_model_dir):
    from typer.testing import CliRunner

    from sdft.cli import app

    out = tmp_path / "check"
    result = CliRunner().invoke(app, ["check", "--output", str(out), "--limit", "2", "--set",
                                      f"model.name_or_path={tiny_model_dir}", "--set", "eval.general=[]",
                                      "--set", "eval.max_new_tokens=4", "--tasks", "knowledge"])
    assert result.exit_code == 0, result.output
    scores = json.loads((out / "results.json").read_text())["scores"]["knowledge"]
    assert set(scores) >= {"student", "teacher", "oracle"} and "oracle" in result.output
