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
from sdft.prior import decoding_settings
from sdft.report import decoding_phrase
from sdft.report.prior import prior_report_markdown
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
    assert results["decoding"] == {"temperature": 0.0, "top_p": 1.0, "samples": 1, "max_new_tokens": 4, "backend": "hf"}
    assert "Greedy decoding, test split." in (tmp_path / "prior" / "report.md").read_text()

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


def test_the_prior_report_names_the_decoding_it_used(tmp_path, tiny_model_dir):
    files = [arithmetic_task(tmp_path, "doubling", 2)]
    settings = [f"model.name_or_path={tiny_model_dir}", f"custom_tasks=[{files[0]}]", "tasks=[doubling]",
                "eval.general=[]", "eval.max_new_tokens=4", "train.task=doubling", "train.steps=1",
                "train.batch_size=2", "train.max_completion_tokens=6", "train.warmup_steps=0", "train.evaluate=false"]
    run_train(load_config(None, settings), tmp_path / "stage1")
    sampled = ["eval.sampling.temperature=0.7", "eval.sampling.top_p=0.9", "eval.samples=2"]
    result = CliRunner().invoke(app, ["eval", str(tmp_path / "stage1"), "--prior-tasks", "--config",
                                      str(tmp_path / "stage1" / "config.yaml"), "--output", str(tmp_path / "prior"),
                                      *[arg for s in sampled for arg in ("--set", s)]], prog_name="sdft")
    assert result.exit_code == 0, result.output
    report = (tmp_path / "prior" / "report.md").read_text()
    assert "Greedy decoding" not in report and "greedy" not in report
    assert "Sampling at temperature 0.7, top-p 0.9, 2 samples per prompt, test split." in report
    results = json.loads((tmp_path / "prior" / "results.json").read_text())
    assert results["decoding"] == {"temperature": 0.7, "top_p": 0.9, "samples": 2, "max_new_tokens": 4, "backend": "hf"}


def test_the_decoding_phrase_says_greedy_only_at_temperature_zero():
    greedy = {"temperature": 0.0, "top_p": 0.9, "samples": 1, "max_new_tokens": 8}
    assert decoding_phrase(greedy) == "greedy decoding"
    assert decoding_phrase({**greedy, "temperature": 0.7, "samples": 4}) == (
        "sampling at temperature 0.7, top-p 0.9, 4 samples per prompt")
    assert decoding_phrase({**greedy, "temperature": 1.0}).endswith("temperature 1, top-p 0.9, 1 sample per prompt")


@pytest.mark.parametrize("temperature, sentence", [
    (0.0, "Greedy decoding, test split."),
    (0.8, "Sampling at temperature 0.8, top-p 0.95, 3 samples per prompt, test split."),
])
def test_the_prior_report_states_the_decoding_of_its_results(temperature, sentence):
    results = {"model": "runs/b", "base_model": "base", "world": "embedded", "split": "test",
               "lineage": {"stages": [{"task": "doubling", "method": "sdft"}]},
               "decoding": {"temperature": temperature, "top_p": 0.95, "samples": 3, "max_new_tokens": 8},
               "rows": [{"name": "doubling", "base": 0.25, "now": 0.5, "delta": 0.25}]}
    report = prior_report_markdown(results)
    assert sentence in report and ("reedy" in report) == (temperature == 0)
    assert "| doubling | 0.250 | 0.500 | +0.250 |" in report


def test_the_decoding_recorded_is_the_configs_eval_sampling():
    cfg = load_config(None, ["eval.sampling.temperature=0.6", "eval.sampling.top_p=0.8",
                             "eval.samples=5", "eval.max_new_tokens=32"])
    assert decoding_settings(cfg) == {"temperature": 0.6, "top_p": 0.8, "samples": 5, "max_new_tokens": 32,
                                      "backend": "hf"}


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
