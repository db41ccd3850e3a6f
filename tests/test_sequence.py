"""The continual runner on a random tiny model: the full matrix, per-stage overrides, and exact resume
after a kill in the middle of a stage."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import write_jsonl
from sdft.config import load_config
from sdft.errors import UserError
from sdft.methods import sdft as sdft_method
from sdft.sequence import plan_sequence, run_sequence, stage_config

pytestmark = pytest.mark.usefixtures("one_thread")


def arithmetic_task(tmp_path, name: str, factor: int) -> str:
    records = [{"question": f"{i} times {factor}?", "response": f"So {i * factor}. Answer: {i * factor}",
                "label": str(i * factor)} for i in range(8)]
    write_jsonl(tmp_path / name / "train.jsonl", records)
    write_jsonl(tmp_path / name / "test.jsonl", records[:3])
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\nscorer: normalized\nfields: {{prompt: question, demonstration: response, answer: label}}\n"
                    f"splits: {{train: {name}/train.jsonl, test: {name}/test.jsonl}}\n")
    return str(path)


@pytest.fixture
def sequence_config(tmp_path, tiny_model_dir):
    def make(*overrides):
        files = [arithmetic_task(tmp_path, "doubling", 2), arithmetic_task(tmp_path, "tripling", 3)]
        return load_config(None, [
            f"model.name_or_path={tiny_model_dir}", f"custom_tasks=[{files[0]}, {files[1]}]",
            "tasks=[doubling, tripling]", "eval.general=[doubling]", "eval.max_new_tokens=4",
            "train.steps=3", "train.batch_size=2", "train.max_completion_tokens=6", "train.learning_rate=1e-2",
            "train.checkpoint_every=1", "train.warmup_steps=0", "sequence.methods=[sdft]", *overrides,
        ])
    return make


def test_stage_overrides_apply_to_their_task_only(sequence_config):
    cfg = sequence_config("sequence.stages={tripling: {steps: 5, learning_rate: 0.5}}")
    assert stage_config(cfg, "tripling", "sft", 7).train.steps == 5
    assert stage_config(cfg, "tripling", "sft", 7).train.learning_rate == 0.5
    doubling = stage_config(cfg, "doubling", "sft", 7)
    assert (doubling.train.steps, doubling.train.method, doubling.train.task, doubling.seed) == (3, "sft", "doubling", 7)


def test_bad_stage_overrides_fail_before_training(sequence_config, tmp_path):
    with pytest.raises(UserError, match="unknown key 'train.stepz'"):
        plan_sequence(sequence_config("sequence.stages={tripling: {stepz: 5}}"), tmp_path / "a")
    with pytest.raises(UserError, match="not tasks of this sequence"):
        plan_sequence(sequence_config("sequence.stages={medical: {steps: 5}}"), tmp_path / "b")


def test_two_methods_fill_the_whole_matrix_and_report(sequence_config, tmp_path):
    cfg = sequence_config("sequence.methods=[sdft, sft]", "train.steps=1", "sequence.stages={doubling: {max_completion_tokens: 24}, tripling: {max_completion_tokens: 24}}")
    results = run_sequence(plan_sequence(cfg, tmp_path / "run"))
    assert results["tasks"] == ["doubling", "tripling"] and results["world"] == "custom"
    for method in ("sdft", "sft"):
        summary = results["methods"][method]
        assert len(summary["matrix"]) == 3 and all(len(row) == 2 for row in summary["matrix"])
        assert len(summary["general"]) == 3 and set(summary["metrics"]) >= {"acc", "bwt", "fwt", "forgetting", "general_delta"}
        assert (tmp_path / "run" / method / "seed-0" / "stage-2-tripling" / "row.json").is_file()
    on_disk = json.loads((tmp_path / "run" / "results.json").read_text())
    assert on_disk["methods"]["sdft"]["matrix"] == results["methods"]["sdft"]["matrix"]
    assert (tmp_path / "run" / "report.md").is_file()
    with pytest.raises(UserError, match=r"differs from its config.yaml in .*train.steps \(1 -> 2\)"):
        plan_sequence(sequence_config("sequence.methods=[sdft, sft]", "train.steps=2"), tmp_path / "run")
    # another seed only adds a chain beside the finished ones, which are reused as they are
    more = sequence_config("sequence.methods=[sdft, sft]", "train.steps=1", "sequence.seeds=[0, 1]",
                           "sequence.stages={doubling: {max_completion_tokens: 24}, tripling: {max_completion_tokens: 24}}")
    extended = run_sequence(plan_sequence(more, tmp_path / "run"))
    assert extended["methods"]["sdft"]["per_seed"]["0"] == results["methods"]["sdft"]["per_seed"]["0"]
    assert set(extended["methods"]["sdft"]["per_seed"]) == {"0", "1"}


def test_a_kill_mid_stage_then_the_same_command_gives_the_uninterrupted_results(sequence_config, tmp_path, monkeypatch):
    cfg = sequence_config()
    expected = run_sequence(plan_sequence(cfg, tmp_path / "a"))
    real_step, calls = sdft_method.train_step, {"n": 0}

    def dies_in_stage_two(trainer):
        calls["n"] += 1
        if calls["n"] == 5:  # stage 1 took 3 steps; this is step 2 of stage 2
            raise KeyboardInterrupt
        return real_step(trainer)

    monkeypatch.setattr(sdft_method, "train_step", dies_in_stage_two)
    with pytest.raises(KeyboardInterrupt):
        run_sequence(plan_sequence(cfg, tmp_path / "b"))
    monkeypatch.undo()
    assert not (tmp_path / "b" / "sdft" / "seed-0" / "stage-2-tripling" / "row.json").exists()
    resumed = run_sequence(plan_sequence(cfg, tmp_path / "b"))
    assert resumed["methods"] == expected["methods"]
    final = "sdft/seed-0/stage-2-tripling/model/model.safetensors"
    a, b = load_file(str(tmp_path / "a" / final)), load_file(str(tmp_path / "b" / final))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    first_stage = load_file(str(tmp_path / "a" / "sdft/seed-0/stage-1-doubling/model/model.safetensors"))
    assert any(not torch.equal(a[k], first_stage[k]) for k in a)  # stage 2 really trained


def test_the_base_model_is_freed_after_row_0_and_not_loaded_when_base_json_exists(sequence_config, tmp_path, monkeypatch):
    """Row 0 loads the base model only to evaluate it: no reference to it outlives the row (a 7B base would hold 15 GB
    for the whole sequence), and a sequence that already has base.json does not load it for row 0 at all."""
    import gc
    import weakref

    from sdft import sequence, train_run

    loaded_models, alive_at_stage_start = [], []
    real_load, real_open = sequence.load_model, train_run.open_stage

    def tracked_load(model_cfg):
        loaded = real_load(model_cfg)
        loaded_models.append(weakref.ref(loaded.model))
        return loaded

    def stage_start(*args, **kwargs):
        gc.collect()
        alive_at_stage_start.extend(ref() is not None for ref in loaded_models)
        return real_open(*args, **kwargs)

    monkeypatch.setattr(sequence, "load_model", tracked_load)
    monkeypatch.setattr(sequence, "open_stage", stage_start)
    cfg = sequence_config("tasks=[doubling]")
    run_sequence(plan_sequence(cfg, tmp_path / "run"))
    assert len(loaded_models) == 1 and alive_at_stage_start == [False]

    loaded_models.clear()
    rerun = sequence_config("tasks=[doubling]", "sequence.seeds=[1]")  # a new chain beside the finished one
    run_sequence(plan_sequence(rerun, tmp_path / "run"))
    assert loaded_models == []  # base.json was there: row 0 was read, not recomputed
