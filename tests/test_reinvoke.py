"""SFT + re-invoke: SFT, then on-policy distillation from the stage-start model on general prompts. The teacher is
the stage-start weights (not SFT's), it sees no demonstration, and a kill in either phase resumes to the
uninterrupted result."""

from __future__ import annotations


import pytest
import torch

from conftest import doubling_task, stop_after
from sdft.adapters import wrap_with_lora
from sdft.config import load_config
from sdft.errors import UserError
from sdft.methods import hf_session, loop, reinvoke
from sdft.methods.stage import Stage
from sdft.models import load_model
from sdft.tasks.spec import TaskSpec

pytestmark = pytest.mark.usefixtures("one_thread")
FIELDS = {"prompt": "question", "demonstration": "response", "answer": "label"}


@pytest.fixture
def task() -> TaskSpec:
    return doubling_task(12)


def make_stage(tiny_model_dir, task, run_dir, *overrides, lora=False, resume=False) -> Stage:
    cfg = load_config(None, [
        f"model.name_or_path={tiny_model_dir}", "tasks=[doubling]", "train.task=doubling", "train.method=sft_reinvoke",
        "train.steps=3", "train.batch_size=4", "train.max_completion_tokens=24", "train.learning_rate=1e-2",
        "train.warmup_steps=0", "train.checkpoint_every=2", "train.log_every=1", "train.reinvoke.steps=3",
        "train.reinvoke.tasks=[repeat]", f"lora.enabled={str(lora).lower()}", "lora.r=4",
        "lora.target_modules=[q_proj, v_proj]", *overrides])
    loaded = load_model(cfg.model)
    if lora:
        loaded.model = wrap_with_lora(loaded.model, cfg.lora)
    return Stage(cfg, loaded, task, run_dir, resume)


def trained_weights(stage: Stage) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in stage.loaded.model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("lora", [False, True])
def test_the_teacher_is_the_stage_start_model_and_sees_no_demonstration(tiny_model_dir, task, tmp_path, monkeypatch,
                                                                          lora):
    stage = make_stage(tiny_model_dir, task, tmp_path, lora=lora)
    start = load_model(stage.cfg.model).model  # the stage-start weights, as loaded
    before = {n: p.detach().clone() for n, p in stage.loaded.model.named_parameters()}
    seen = {}
    real_run_loop, real_sft = reinvoke.run_loop, hf_session.train_on_examples

    def after_sft(*args, **kwargs):  # the student as SFT left it: the teacher must not be this
        result = real_sft(*args, **kwargs)
        seen["after_sft"] = {n: p.detach().clone() for n, p in stage.loaded.model.named_parameters()}
        return result

    def capture(trainer, step, label):
        seen["trainer"] = trainer
        return real_run_loop(trainer, step, label)

    monkeypatch.setattr(hf_session, "train_on_examples", after_sft)
    monkeypatch.setattr(reinvoke, "run_loop", capture)
    result = reinvoke.train_sft_reinvoke(stage)
    trainer = seen["trainer"]
    assert result.steps == 6 and result.metrics["sft_steps"] == 3 and result.metrics["reinvoke_steps"] == 3
    rows = list(trainer.stream.rows)
    assert rows and all(r.student_ids == r.teacher_ids for r in rows)  # the teacher's prompt is the student's
    assert all(r.row.prompt.startswith("Repeat:") for r in rows)  # general prompts, not the task's
    ids = torch.tensor([rows[0].student_ids])
    from sdft.generation.base import completion_from_tokens

    rollout = completion_from_tokens(torch.tensor([[20, 21, 22]]), eos_id=1, pad_id=0)
    from sdft.methods.rollout import completion_logits

    with torch.no_grad():
        expected = completion_logits(start, ids, torch.ones_like(ids), rollout)
    torch.testing.assert_close(trainer.teacher.logits(ids, torch.ones_like(ids), rollout), expected, atol=1e-6, rtol=1e-6)
    assert any(not torch.equal(p, before[n]) for n, p in seen["after_sft"].items())  # SFT moved the student


@pytest.mark.parametrize("lora", [False, True])
@pytest.mark.parametrize("phase", ["sft", "reinvoke"])
def test_a_kill_in_either_phase_resumes_to_the_uninterrupted_result(tiny_model_dir, task, tmp_path, monkeypatch,
                                                                     lora, phase):
    uninterrupted = make_stage(tiny_model_dir, task, tmp_path / "a", lora=lora)
    reinvoke.train_sft_reinvoke(uninterrupted)
    expected = trained_weights(uninterrupted)

    killed = make_stage(tiny_model_dir, task, tmp_path / "b", lora=lora)
    module = hf_session if phase == "sft" else loop
    monkeypatch.setattr(module, "graceful_interrupt", stop_after(1))
    with pytest.raises(KeyboardInterrupt):
        reinvoke.train_sft_reinvoke(killed)
    monkeypatch.undo()
    resumed = make_stage(tiny_model_dir, task, tmp_path / "b", lora=lora, resume=True)
    reinvoke.train_sft_reinvoke(resumed)
    got = trained_weights(resumed)
    assert expected.keys() == got.keys() and expected
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=0, rtol=0)


def test_resuming_a_folder_without_checkpoints_says_so(tiny_model_dir, task, tmp_path):
    with pytest.raises(UserError, match="nothing to resume"):
        reinvoke.train_sft_reinvoke(make_stage(tiny_model_dir, task, tmp_path, resume=True))
