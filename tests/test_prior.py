"""Lineage across training stages, and `sdft eval RUN --prior-tasks` next to the base model."""

from __future__ import annotations

import dataclasses
import json

import pytest

from typer.testing import CliRunner

from sdft.generation import batching
from sdft.cli import app
from sdft.config import load_config
from sdft.models import load_model
from sdft.eval_service import EvalService
from sdft.runs import lineage_of
from sdft.tasks.registry import load_tasks, task_registry
from sdft.train_run import run_train
from test_sequence import arithmetic_task

pytestmark = pytest.mark.usefixtures("one_thread")


def test_two_stages_make_a_lineage_and_prior_tasks_compares_with_the_base(tmp_path, tiny_model_dir, monkeypatch):
    files = [arithmetic_task(tmp_path, "doubling", 2), arithmetic_task(tmp_path, "tripling", 3)]

    def config(model, task):
        return load_config(None, [
            f"model.name_or_path={model}", f"custom_tasks=[{files[0]}, {files[1]}]", "tasks=[doubling, tripling]",
            "eval.general=[doubling]", "eval.max_new_tokens=4", f"train.task={task}", "train.steps=1",
            "train.batch_size=2", "train.max_completion_tokens=6", "train.warmup_steps=0", "train.evaluate=false",
        ])

    run_train(config(tiny_model_dir, "doubling"), tmp_path / "stage1")
    run_train(config(tmp_path / "stage1", "tripling"), tmp_path / "stage2")
    lineage = lineage_of(str(tmp_path / "stage2"))
    assert lineage["base_model"] == str(tiny_model_dir)
    assert [(s["task"], s["method"]) for s in lineage["stages"]] == [("doubling", "sdft"), ("tripling", "sdft")]
    assert lineage["stages"][0]["run"] == str((tmp_path / "stage1").resolve())

    result = CliRunner().invoke(app, ["eval", str(tmp_path / "stage2"), "--prior-tasks", "--config", str(tmp_path / "stage2" / "config.yaml"),
                                      "--output", str(tmp_path / "prior")], prog_name="sdft")
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "prior" / "results.json").read_text())
    assert [r["name"] for r in results["rows"]] == ["doubling", "tripling", "general: doubling", "general mean"]
    assert "what survived" in result.output and (tmp_path / "prior" / "report.md").is_file()

    # the numbers match a direct evaluation of the same models
    cfg = config(tmp_path / "stage2", "tripling")
    tasks = load_tasks(["doubling", "tripling"], task_registry(cfg.custom_tasks))
    direct = EvalService(cfg, tasks[:1]).score(load_model(cfg.model), tasks)
    assert results["scores"] == direct["scores"]
    base = EvalService(cfg, tasks[:1]).score(load_model(config(tiny_model_dir, "x").model), tasks)
    assert results["base"]["scores"] == base["scores"]

    # a second call is served from the evaluation cache: nothing is generated
    calls = {"n": 0}
    monkeypatch.setattr(batching, "_generate_batch", lambda *a: calls.update(n=calls["n"] + 1))
    again = CliRunner().invoke(app, ["eval", str(tmp_path / "stage2"), "--prior-tasks", "--config", str(tmp_path / "stage2" / "config.yaml"),
                                     "--output", str(tmp_path / "prior2")], prog_name="sdft")
    assert again.exit_code == 0 and calls["n"] == 0


def test_prior_tasks_needs_a_run_with_a_lineage(tiny_model_dir):
    result = CliRunner().invoke(app, ["eval", str(tiny_model_dir), "--prior-tasks"], prog_name="sdft")
    assert result.exit_code == 1 and "has no lineage.json" in result.output


def test_a_lora_run_evaluates_without_merging_into_the_base_files(tmp_path, tiny_model_dir):
    import hashlib

    files = [arithmetic_task(tmp_path, "doubling", 2)]
    cfg = load_config(None, [
        f"model.name_or_path={tiny_model_dir}", f"custom_tasks=[{files[0]}]", "tasks=[doubling]",
        "eval.general=[]", "eval.max_new_tokens=4", "train.task=doubling", "train.steps=2",
        "train.batch_size=2", "train.max_completion_tokens=6", "train.warmup_steps=0", "train.learning_rate=0.05",
        "train.evaluate=false", "lora.enabled=true", "lora.r=4", "lora.target_modules=[q_proj, v_proj]",
    ])
    base_weights = tiny_model_dir / "model.safetensors"
    before = hashlib.sha256(base_weights.read_bytes()).hexdigest()
    run_train(cfg, tmp_path / "lora-run")
    saved = sorted(p.name for p in (tmp_path / "lora-run" / "model").iterdir())
    assert "adapter_model.safetensors" in saved and "model.safetensors" not in saved  # only the adapter
    result = CliRunner().invoke(app, ["eval", str(tmp_path / "lora-run"), "--config", str(tmp_path / "lora-run" / "config.yaml"),
                                      "--output", str(tmp_path / "ev")], prog_name="sdft")
    assert result.exit_code == 0, result.output
    assert hashlib.sha256(base_weights.read_bytes()).hexdigest() == before  # the base files are untouched
    # the evaluated model is base + trained adapter: its outputs differ from the base model's
    import torch

    adapted = load_model(dataclasses.replace(cfg.model, name_or_path=str(tmp_path / "lora-run")))
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert not torch.allclose(adapted.model(ids).logits, load_model(cfg.model).model(ids).logits)
