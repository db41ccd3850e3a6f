"""engine trl: TRL's experimental SDFTTrainer with our config mapped onto it, on the random tiny model. The mapping
(and TRL's loss under it equals ours), the teacher prompt's tokens equal the native engine's, unsupported settings
name their key, a short run writes the run folder and moves the weights, and resume equals an uninterrupted run."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from conftest import qa_records
from sdft.adapters import wrap_with_lora
from sdft.config import load_config
from sdft.errors import UserError
from sdft.methods import trl_engine
from sdft.methods.losses import distillation_loss
from sdft.methods.hf_trainer import latest_checkpoint
from sdft.methods.rollout import prepare_rows
from sdft.methods.trl_callbacks import TEACHER_FILE
from sdft.methods.stage import Stage
from sdft.models import load_model
from sdft.prompts import teacher_prompt
from sdft.tasks.loading import rows_from_records
from sdft.tasks.spec import TaskSpec

FIELDS = {"prompt": "question", "demonstration": "response", "answer": "label"}
BASE = ["tasks=[doubling]", "train.task=doubling", "train.engine=trl", "train.steps=3", "train.batch_size=4",
        "train.gradient_accumulation=2", "train.max_completion_tokens=8", "train.learning_rate=1e-2",
        "train.warmup_steps=0", "train.checkpoint_every=2", "train.log_every=1", "lora.r=4",
        "lora.target_modules=[q_proj, v_proj]"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def task() -> TaskSpec:
    rows = rows_from_records(qa_records(8), FIELDS, "fixture")
    return TaskSpec("doubling", "1", "fixture", "normalized", {"train": rows}, system_prompt="You double numbers.")


def config(*overrides, model="embedded"):
    return load_config(None, [f"model.name_or_path={model}", *BASE, *overrides])


def make_stage(tiny_model_dir, task, run_dir, *overrides, resume=False) -> Stage:
    cfg = config(*overrides, model=tiny_model_dir)
    loaded = load_model(cfg.model)
    if cfg.lora.enabled:
        loaded.model = wrap_with_lora(loaded.model, cfg.lora)
    return Stage(cfg, loaded, task, run_dir, resume)


def test_config_mapping(tmp_path):
    cfg = config("train.loss.divergence=jsd", "train.loss.alpha=0.3", "train.loss.skip_first_tokens=3",
                 "train.rollout.temperature=0.9", "train.rollout.top_p=0.95", "train.teacher=ema", "train.ema_rate=0.02",
                 "train.batch_size=8", "train.max_completion_tokens=77", "seed=7", "train.warmup_steps=5")
    args = trl_engine.trl_config(cfg, tmp_path, use_cpu=True)
    assert (args.distillation_mode, args.distillation_alpha, args.num_loss_tokens_to_skip) == ("full_logits", 0.3, 3)
    assert args.distillation_is_clip is None
    assert (args.num_generations, args.steps_per_generation, args.generation_batch_size, args.num_iterations) == (1, 2, 8, 1)
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (4, 2)
    assert (args.temperature, args.top_p, args.top_k, args.max_completion_length) == (0.9, 0.95, 0, 77)
    assert args.max_prompt_length is None  # never truncated: our caps are checked before TRL sees a prompt
    assert (args.teacher_model_kind, args.teacher_update_rate, args.teacher_sync_steps) == ("ema", 0.02, 1)
    assert (args.learning_rate, args.max_steps, args.seed, args.warmup_steps) == (1e-2, 3, 7, 5)
    assert (args.lr_scheduler_type.value, args.max_grad_norm, args.weight_decay) == ("cosine", 1.0, 0.0)
    assert (args.bf16, args.activation_checkpointing, args.use_vllm, args.disable_dropout) == (False, False, False, False)
    assert (args.save_steps, args.save_total_limit, args.logging_steps, args.report_to) == (2, 2, 1, [])
    # TRL's teacher template renders our published teacher prompt
    assert args.teacher_prompt_template.format(prompt="Q?", privileged_context="A.") == teacher_prompt("Q?", "A.")
    assert trl_engine.trl_config(config("model.dtype=bfloat16"), tmp_path, use_cpu=True).bf16


@pytest.mark.parametrize("overrides, mode, alpha", [
    ([], "full_logits", 0.0),  # forward KL
    (["train.loss.divergence=reverse_kl"], "full_logits", 1.0),
    (["train.loss.divergence=jsd", "train.loss.alpha=0.25"], "full_logits", 0.25),
    (["train.loss.top_k=5", "train.loss.topk_source=student"], "topk_logits", 0.0),
])
def test_trl_loss_under_the_mapping_equals_ours(tmp_path, overrides, mode, alpha):
    """TRL's loss functions, fed the mapped settings, compute our loss (TRL's reduction, every sequence with tokens)."""
    from trl.experimental.sdft import loss_utils

    cfg = config("train.loss.skip_first_tokens=2", *overrides)
    kwargs = trl_engine.trl_config_kwargs(cfg, tmp_path, use_cpu=True)
    assert (kwargs["distillation_mode"], kwargs["distillation_alpha"]) == (mode, alpha)
    torch.manual_seed(0)
    student, teacher = torch.randn(3, 6, 50, dtype=torch.float64), torch.randn(3, 6, 50, dtype=torch.float64)
    completion_mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 3 + [0] * 3])
    if mode == "topk_logits":
        per_token = loss_utils.compute_topk_self_distillation_loss(
            student, teacher, distillation_topk=kwargs["distillation_topk"], distillation_alpha=alpha,
            distillation_add_tail=kwargs["distillation_add_tail"])
    else:
        per_token = loss_utils.compute_full_logit_self_distillation_loss(student, teacher, distillation_alpha=alpha)
    mask = completion_mask * (torch.arange(6) >= kwargs["num_loss_tokens_to_skip"]).long()
    trl_loss = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()
    ours, _ = distillation_loss(student, teacher, completion_mask, cfg.train.loss)
    torch.testing.assert_close(trl_loss, ours, atol=1e-9, rtol=1e-7)


@pytest.mark.parametrize("overrides, key", [
    (["train.loss.top_k=5"], "train.loss.topk_source"),  # the default topk_source is the teacher's
    (["train.capped_completions_in_loss=false"], "train.capped_completions_in_loss"),
    (["train.batch_size=6", "train.gradient_accumulation=4"], "train.batch_size"),
])
def test_unsupported_settings_name_the_key(tmp_path, overrides, key):
    with pytest.raises(UserError, match=key.replace(".", r"\.")):
        trl_engine.trl_config(config(*overrides), tmp_path, use_cpu=True)


def test_too_few_rows_overlong_prompts_and_nothing_to_resume(tiny_model_dir, task, tmp_path):
    with pytest.raises(UserError, match=r"train\.batch_size=16 training rows, got 8"):
        trl_engine.build_trainer(make_stage(tiny_model_dir, task, tmp_path, "train.batch_size=16"))
    with pytest.raises(UserError, match=r"row \d+: the teacher prompt has \d+ tokens"):
        trl_engine.build_trainer(make_stage(tiny_model_dir, task, tmp_path, "train.max_teacher_prompt_tokens=100"))
    with pytest.raises(UserError, match="nothing to resume"):
        trl_engine.train_trl_sdft(make_stage(tiny_model_dir, task, tmp_path, resume=True))


def test_trl_tokenises_the_student_and_teacher_prompts_like_the_native_engine(tiny_model_dir, task, tmp_path):
    """The ids TRL builds (its chat template call, its teacher template, system prompt kept) are our ids."""
    stage = make_stage(tiny_model_dir, task, tmp_path)
    trainer = trl_engine.build_trainer(stage)
    native = prepare_rows(stage.train_rows(), task, stage.loaded.tokenizer, stage.cfg.train)
    examples = list(trainer.train_dataset)
    prompts, demos = [e["prompt"] for e in examples], [e["privileged_context"] for e in examples]
    teacher_prompts = trainer.teacher_context_builder.select_generation_prompts(prompts, demos)
    assert trainer._tokenize_prompts(prompts) == [r.student_ids for r in native]
    assert trainer._tokenize_prompts(teacher_prompts) == [r.teacher_ids for r in native]
    assert teacher_prompts[0][0] == {"role": "system", "content": "You double numbers."}


def test_short_run_writes_the_run_folder_and_moves_the_weights(tiny_model_dir, task, tmp_path):
    stage = make_stage(tiny_model_dir, task, tmp_path, "train.teacher=ema", "train.ema_rate=0.5")
    start = {n: p.detach().clone() for n, p in stage.loaded.model.named_parameters() if p.requires_grad}
    result = trl_engine.train_trl_sdft(stage)
    assert result.steps == 3 and result.model_dir == tmp_path / "model"
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3]
    assert all(line["loss"] >= 0 and line["grad_norm"] > 0 and line["completion_tokens"] > 0 for line in lines)
    assert {"step": 3, **result.metrics} == lines[-1]
    assert (tmp_path / "samples.jsonl").is_file()
    params = dict(stage.loaded.model.named_parameters())
    assert [n for n, value in start.items() if torch.equal(params[n], value)] == []
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-3"]
    assert (tmp_path / "checkpoints" / "checkpoint-3" / TEACHER_FILE).is_file()
    reloaded = dict(load_model(type(stage.cfg.model)(name_or_path=str(tmp_path))).model.named_parameters())
    assert all(torch.equal(reloaded[n], params[n]) for n in start)


class _CrashAtStep(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise RuntimeError("killed")


@pytest.mark.parametrize("lora", [False, True])
def test_resume_after_a_crash_equals_an_uninterrupted_run(tiny_model_dir, task, tmp_path, lora):
    """The EMA teacher is part of the checkpoint (TRL's own EMA is not), so the resumed run is the same run."""
    overrides = ["train.teacher=ema", "train.ema_rate=0.5", f"lora.enabled={str(lora).lower()}"]

    def final_state(stage):
        trl_engine.train_trl_sdft(stage)
        weights = {n: p.detach().clone() for n, p in stage.loaded.model.named_parameters() if p.requires_grad}
        teacher = load_file(str(latest_checkpoint(stage.checkpoint_dir) / TEACHER_FILE))
        return weights, teacher

    expected = final_state(make_stage(tiny_model_dir, task, tmp_path / "a", *overrides))
    with pytest.raises(RuntimeError, match="killed"):  # dies before step 3: the newest checkpoint is step 2's
        trl_engine.train_trl_sdft(make_stage(tiny_model_dir, task, tmp_path / "b", *overrides), [_CrashAtStep(2)])
    got = final_state(make_stage(tiny_model_dir, task, tmp_path / "b", *overrides, resume=True))
    for want, have in zip(expected, got):
        assert want.keys() == have.keys() and want
        for name in want:
            torch.testing.assert_close(have[name], want[name], atol=0, rtol=0)
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]


@pytest.mark.parametrize("setting", ["train.loss.top_k=5", "train.capped_completions_in_loss=false",
                                     "train.rollout.backend=hf"])
def test_settings_trl_cannot_express_stop_before_any_model_loads_and_in_the_dry_run(tmp_path, monkeypatch, setting):
    from typer.testing import CliRunner

    from sdft import models
    from sdft.cli import app

    key = setting.split("=")[0]
    with pytest.raises(UserError, match=key.replace(".", r"\.")):
        load_config(None, ["train.engine=trl", setting])
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    config = tmp_path / "trl.yaml"
    config.write_text("train: {engine: trl}\n")
    for extra in (["--dry-run"], ["--output", str(tmp_path / "run")]):
        result = CliRunner().invoke(app, ["train", str(config), "--set", setting, *extra], prog_name="sdft")
        assert result.exit_code == 1 and key in result.output
    assert not (tmp_path / "run").exists()
