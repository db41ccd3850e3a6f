"""SFT and DFT through TRL's SFTTrainer on the tiny random model: the loss covers exactly the demonstration and
the eos token, training lowers it and moves every trainable weight (and with LoRA no base weight), DFT matches a
hand-written reference, overlong rows fail or are skipped, nan stops the run, and resume equals an
uninterrupted run."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from transformers import TrainerCallback
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from sdft.adapters import wrap_with_lora
from sdft.config import ModelConfig, load_config
from sdft.errors import UserError
from sdft.methods.hf_session import build_trainer, sft_config
from sdft.methods.sft import train_sft
from sdft.methods.tokens import demonstration_examples
from sdft.methods.stage import Stage
from sdft.models import load_model
from sdft.prompts import render_prompt
from sdft.tasks.spec import Row, TaskSpec

ROWS = [Row("What is 2+2?", "It is 4.", "4"), Row("Name a colour.", "Blue, like the sky.", "blue")]
THREE_ROWS = [*ROWS, Row("Say hi.", "Hi!", "hi")]
BASE = ["train.method=sft", "train.batch_size=2", "train.warmup_steps=0", "train.learning_rate=0.01",
        "train.log_every=1", "train.checkpoint_every=100", "train.max_completion_tokens=64"]


def tokenize_rows(stage):
    return demonstration_examples(stage.train_rows(), stage.task, stage.loaded.tokenizer, stage.cfg.train)


pytestmark = pytest.mark.usefixtures("one_thread")


def make_stage(run_dir, model_dir, *overrides, rows=ROWS, resume=False) -> Stage:
    cfg = load_config(None, [*BASE, *overrides])
    loaded = load_model(ModelConfig(name_or_path=str(model_dir)))
    if cfg.lora.enabled:
        loaded.model = wrap_with_lora(loaded.model, cfg.lora)
    task = TaskSpec(name="toy", version="1", source="test", scorer="exact", splits={"train": list(rows)})
    return Stage(cfg, loaded, task, run_dir, resume=resume)


def collate(stage: Stage) -> dict[str, torch.Tensor]:
    examples, _ = tokenize_rows(stage)
    return DataCollatorForLanguageModeling(pad_token_id=stage.loaded.tokenizer.pad_token_id)(examples)


def token_logprobs(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(label) at every position that predicts a label, from plain logits (not TRL's fused head)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    labels = batch["labels"][:, 1:]
    logp = torch.log_softmax(logits, dim=-1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]
    return logp, labels != -100


def reference_loss(model, batch, method: str) -> torch.Tensor:
    """nll: mean over completion tokens of -log p. dft: mean over completion tokens of -p.detach() * log p."""
    logp, mask = token_logprobs(model, batch)
    per_token = -logp if method == "sft" else -logp.exp().detach() * logp
    return (per_token * mask).sum() / mask.sum()


def weights(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def records(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def steps_in(run_dir) -> list[int]:
    return [record["step"] for record in records(run_dir)]


# ---- what the loss covers ----


def test_loss_covers_exactly_the_demonstration_and_eos(tmp_path, tiny_model_dir):
    stage = make_stage(tmp_path / "run", tiny_model_dir)
    tokenizer = stage.loaded.tokenizer
    trainer = build_trainer(stage, tokenize_rows(stage)[0])
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(ROWS))])
    for i, row in enumerate(ROWS):
        prompt = tokenizer(render_prompt(tokenizer, row.prompt), add_special_tokens=False)["input_ids"]
        demo = tokenizer(row.demonstration, add_special_tokens=False)["input_ids"]
        real = batch["attention_mask"][i].bool()
        ids, labels = batch["input_ids"][i][real].tolist(), batch["labels"][i]
        assert ids == prompt + demo + [tokenizer.eos_token_id]  # no extra special token, no second template
        assert labels[labels != -100].tolist() == demo + [tokenizer.eos_token_id]
        assert (labels[: len(prompt)] == -100).all() and (labels[~real] == -100).all()
        assert real[: len(ids)].all()  # right padding: real tokens first
        assert tokenizer.decode(ids) == render_prompt(tokenizer, row.prompt) + row.demonstration + tokenizer.eos_token


# ---- training moves the model ----


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory, tiny_model_dir):
    """20 full-parameter SFT steps on two rows; the stage, the weights before, and the loss before and after."""
    stage = make_stage(tmp_path_factory.mktemp("sft") / "run", tiny_model_dir, "train.steps=20",
                       "train.lr_schedule=constant", "train.log_every=5", "train.checkpoint_every=10")
    batch, model = collate(stage), stage.loaded.model
    with torch.no_grad():
        before_loss = reference_loss(model, batch, "sft").item()
    before = weights(model)
    result = train_sft(stage)
    with torch.no_grad():
        after_loss = reference_loss(model, batch, "sft").item()
    return stage, result, before, before_loss, after_loss


def test_sft_lowers_the_loss_and_changes_every_trainable_parameter(sft_run):
    stage, result, before, before_loss, after_loss = sft_run
    assert result.steps == 20
    assert after_loss < 0.5 * before_loss, (before_loss, after_loss)
    after = weights(stage.loaded.model)
    unchanged = [name for name, p in stage.loaded.model.named_parameters() if torch.equal(before[name], after[name])]
    assert not unchanged


def test_run_folder_holds_metrics_per_logged_step_and_a_loadable_model(sft_run):
    stage, result, *_ = sft_run
    logged = records(stage.run_dir)
    assert [r["step"] for r in logged] == [5, 10, 15, 20]
    for key in ("loss", "learning_rate", "grad_norm", "tokens_per_second", "step_seconds", "skipped_rows"):
        assert all(key in r for r in logged), key
    assert result.metrics == {k: v for k, v in logged[-1].items() if k != "step"}
    assert sorted(p.name for p in stage.checkpoint_dir.iterdir() if p.is_dir()) == ["checkpoint-10", "checkpoint-20"]
    reloaded = load_model(ModelConfig(name_or_path=str(stage.run_dir)))
    for name, p in weights(reloaded.model).items():
        assert torch.equal(p, dict(stage.loaded.model.named_parameters())[name].detach()), name
    # handed back ready for generation: eval mode, left padding, TRL's fused forward removed
    assert not stage.loaded.model.training and stage.loaded.tokenizer.padding_side == "left"
    assert "forward" not in vars(stage.loaded.model)


def test_lora_trains_only_the_adapters(tmp_path, tiny_model_dir):
    stage = make_stage(tmp_path / "run", tiny_model_dir, "lora.enabled=true", "train.steps=3")
    model = stage.loaded.model
    before = weights(model)
    train_sft(stage)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    changed = {name for name, p in model.named_parameters() if not torch.equal(before[name], p.detach())}
    assert changed == trainable
    assert (stage.model_dir / "adapter_config.json").is_file()


def test_gradient_accumulation_gives_the_update_of_one_big_batch(tmp_path, tiny_model_dir):
    rows = [*THREE_ROWS, Row("Count to five.", "One, two, three, four, five.", "5")]  # unequal lengths
    final = {}
    for accumulation in (1, 2):
        stage = make_stage(tmp_path / str(accumulation), tiny_model_dir, "train.steps=2",
                           f"train.gradient_accumulation={accumulation}", rows=rows)
        train_sft(stage)
        final[accumulation] = weights(stage.loaded.model)
    for name, p in final[1].items():
        torch.testing.assert_close(final[2][name], p, rtol=0, atol=1e-5, msg=name)


# ---- the DFT loss ----


@pytest.mark.parametrize("method", ["sft", "dft"])
def test_trl_loss_matches_a_hand_written_reference(tmp_path, tiny_model_dir, method):
    stage = make_stage(tmp_path / "run", tiny_model_dir, f"train.method={method}")
    trainer = build_trainer(stage, tokenize_rows(stage)[0])
    model = trainer.model.train()
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(ROWS))])
    params = [p for p in model.parameters() if p.requires_grad]
    trl_loss = trainer.compute_loss(model, dict(batch))
    trl_grads = torch.autograd.grad(trl_loss, params)
    ref_loss = reference_loss(model, batch, method)
    ref_grads = torch.autograd.grad(ref_loss, params)
    torch.testing.assert_close(trl_loss, ref_loss, rtol=1e-5, atol=1e-6)
    for trl_grad, ref_grad in zip(trl_grads, ref_grads):
        torch.testing.assert_close(trl_grad, ref_grad, rtol=1e-4, atol=1e-7)
    other = reference_loss(model, batch, "dft" if method == "sft" else "sft")
    assert abs(other.item() - ref_loss.item()) > 0.1  # the two losses are far apart: the check tells them apart


# ---- lengths ----


@pytest.mark.parametrize("cap, row, message", [
    ("train.max_prompt_tokens=30", Row("x" * 30, "ok", "ok"), "the prompt has 33 tokens"),
    ("train.max_completion_tokens=10", Row("q", "y" * 10, "y"), "the demonstration and its eos token make 11 tokens"),
])
def test_overlong_row_is_an_error_naming_the_row(tmp_path, tiny_model_dir, cap, row, message):
    stage = make_stage(tmp_path / "run", tiny_model_dir, cap, rows=[Row("q", "a", "a"), row])
    with pytest.raises(UserError, match=r"task 'toy' split 'train' row 2: ") as err:
        tokenize_rows(stage)
    assert message in str(err.value)


def test_completion_cap_counts_the_eos_token(tmp_path, tiny_model_dir):
    rows = [Row("q", "y" * 9, "y")]
    fits = make_stage(tmp_path / "a", tiny_model_dir, "train.max_completion_tokens=10", rows=rows)
    assert len(tokenize_rows(fits)[0]) == 1  # 9 tokens + eos = 10
    with pytest.raises(UserError, match="make 10 tokens"):
        tokenize_rows(make_stage(tmp_path / "b", tiny_model_dir, "train.max_completion_tokens=9", rows=rows))


def test_overlong_rows_are_skipped_counted_and_logged(tmp_path, tiny_model_dir, capsys):
    rows = [ROWS[0], Row("q", "y" * 80, "y"), ROWS[1]]
    stage = make_stage(tmp_path / "run", tiny_model_dir, "train.overlong_prompts=skip", "train.steps=1", rows=rows)
    examples, skipped = tokenize_rows(stage)
    assert skipped == 1 and len(examples) == 2
    assert "skipped 1 of 3 rows" in " ".join(capsys.readouterr().err.split())
    result = train_sft(stage)
    assert result.metrics["skipped_rows"] == 1
    assert records(stage.run_dir)[0]["skipped_rows"] == 1


# ---- nan, interruption, resume ----


class NanGradientAt(TrainerCallback):
    """Turns the lm_head gradient into nan during optimizer step `step` (as an overflowing backward would)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        weight = model.get_output_embeddings().weight
        weight.register_hook(lambda grad: grad * float("nan") if state.global_step == self.step - 1 else grad)


def test_nan_stops_the_run_and_names_the_last_good_checkpoint(tmp_path, tiny_model_dir):
    # log_every is larger than the run: logging is forced at each checkpoint, so no checkpoint holds nan weights
    stage = make_stage(tmp_path / "run", tiny_model_dir, "train.steps=5", "train.log_every=100",
                       "train.checkpoint_every=1")
    expected = r"gradient norm became nan at step 3; the last good checkpoint is .*checkpoint-2;"
    with pytest.raises(UserError, match=expected):
        train_sft(stage, callbacks=[NanGradientAt(3)])
    assert sorted(p.name for p in stage.checkpoint_dir.iterdir() if p.is_dir()) == ["checkpoint-1", "checkpoint-2"]
    assert steps_in(stage.run_dir) == [1, 2, 3]


class InterruptBefore(TrainerCallback):
    """Interrupts before optimizer step `step`: a real SIGINT (graceful: finish the step, checkpoint, stop) or a
    KeyboardInterrupt raised on the spot (hard: checkpoint where training stands)."""

    def __init__(self, step: int, kind: str):
        self.step, self.kind = step, kind

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step != self.step - 1:
            return
        if self.kind == "hard":
            raise KeyboardInterrupt
        assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler  # ours, or pytest would stop
        os.kill(os.getpid(), signal.SIGINT)


class CountSteps(TrainerCallback):
    def __init__(self):
        self.steps = 0

    def on_step_end(self, args, state, control, **kwargs):
        self.steps += 1


RESUME = ["train.steps=4", "train.batch_size=1", "train.warmup_steps=1", "train.lr_schedule=cosine"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_model_dir):
    """4 steps over 3 rows, one row per step: the resumed run crosses an epoch boundary mid-way."""
    stage = make_stage(tmp_path_factory.mktemp("full") / "run", tiny_model_dir, *RESUME, "train.checkpoint_every=2",
                       rows=THREE_ROWS)
    train_sft(stage)
    return weights(stage.loaded.model), records(stage.run_dir)


@pytest.mark.parametrize("kind, stopped_after", [("graceful", 3), ("hard", 2)])
def test_interrupt_then_resume_equals_an_uninterrupted_run(tmp_path, tiny_model_dir, uninterrupted, kind,
                                                           stopped_after):
    full_weights, full_records = uninterrupted
    run_dir = tmp_path / "run"
    # checkpoint_every=3: the checkpoint we resume from is the one the interruption wrote
    stage = make_stage(run_dir, tiny_model_dir, *RESUME, "train.checkpoint_every=3", rows=THREE_ROWS)
    with pytest.raises(KeyboardInterrupt):
        train_sft(stage, callbacks=[InterruptBefore(3, kind)])
    assert (stage.checkpoint_dir / f"checkpoint-{stopped_after}").is_dir() and not stage.model_dir.exists()
    resumed = make_stage(run_dir, tiny_model_dir, *RESUME, "train.checkpoint_every=3", rows=THREE_ROWS, resume=True)
    with torch.no_grad():  # scramble the fresh weights: only the checkpoint can bring the run back on track
        for p in resumed.loaded.model.parameters():
            p.add_(torch.randn_like(p))
    counter = CountSteps()
    result = train_sft(resumed, callbacks=[counter])
    assert result.steps == 4 and counter.steps == 4 - stopped_after
    for name, p in weights(resumed.loaded.model).items():
        torch.testing.assert_close(p, full_weights[name], rtol=0, atol=1e-6, msg=name)
    resumed_records = records(run_dir)
    assert [r["step"] for r in resumed_records] == [r["step"] for r in full_records] == [1, 2, 3, 4]
    for mine, theirs in zip(resumed_records, full_records):
        assert mine["loss"] == pytest.approx(theirs["loss"], abs=1e-5)
        assert mine["learning_rate"] == pytest.approx(theirs["learning_rate"])


def test_resume_without_a_checkpoint_says_so(tmp_path, tiny_model_dir):
    stage = make_stage(tmp_path / "run", tiny_model_dir, resume=True)
    with pytest.raises(UserError, match="nothing to resume in .*checkpoints"):
        train_sft(stage)


# ---- the config mapping ----


def test_train_config_maps_onto_sft_config(tmp_path, tiny_model_dir):
    stage = make_stage(tmp_path / "run", tiny_model_dir, "train.method=dft", "train.batch_size=8",
                       "train.gradient_accumulation=2", "train.lr_schedule=constant", "train.steps=7",
                       "train.checkpoint_every=3", "train.log_every=2", "seed=5")
    args = sft_config(stage)
    assert (args.loss_type, args.max_steps, args.learning_rate, args.seed) == ("dft", 7, 0.01, 5)
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (4, 2)
    assert (args.save_steps, args.logging_steps) == (3, 2)
    # TRL's own defaults would train in bf16 with gradient checkpointing and hide nan losses
    assert not args.bf16 and not args.activation_checkpointing and not args.logging_nan_inf_filter
    assert args.report_to in ([], "none", ["none"])


def test_sft_steps_with_the_learning_rates_of_an_sdft_run(tmp_path, tiny_model_dir):
    """The same warm-up and cosine as SDFT (harness.build_scheduler): the first step at lr / (warmup + 1), not 0."""
    stage = make_stage(tmp_path / "run", tiny_model_dir, "train.steps=4", "train.warmup_steps=2", "train.lr_schedule=cosine",
                       "train.log_every=1")
    train_sft(stage)
    lr = stage.cfg.train.learning_rate
    assert [r["learning_rate"] for r in records(stage.run_dir)] == pytest.approx([lr / 3, 2 * lr / 3, lr, lr / 2])


def test_a_checkpoint_whose_optimizer_does_not_fit_is_named(tmp_path, tiny_model_dir):
    """E.g. a run saved by an sdft whose SFT used transformers' AdamW (two parameter groups): one clear line."""
    stage = make_stage(tmp_path / "run", tiny_model_dir, "train.steps=2", "train.checkpoint_every=2")
    train_sft(stage)
    saved = stage.checkpoint_dir / "checkpoint-2" / "optimizer.pt"
    state = torch.load(saved, weights_only=False)
    state["param_groups"] = [dict(state["param_groups"][0], params=[]), *state["param_groups"]]  # one group more
    torch.save(state, saved)
    resumed = make_stage(tmp_path / "run", tiny_model_dir, "train.steps=4", "train.checkpoint_every=2", resume=True)
    with pytest.raises(UserError, match="cannot resume from .*checkpoint-2: its optimizer state does not fit"):
        train_sft(resumed)


@pytest.mark.parametrize("dft", [False, True], ids=["sft", "dft"])
def test_the_native_demonstration_loss_is_trls_token_mean(tmp_path, tiny_model_dir, dft):
    """train.sharding=fsdp trains SFT/DFT in the native loop (methods/sft_native.py): its token sum over the global
    token count is the mean next-token loss over the demonstration tokens (transformers' labels loss), or DFT's."""
    from types import SimpleNamespace

    from sdft.methods.sft_native import _label_tokens, _token_loss_sum

    stage = make_stage(tmp_path, tiny_model_dir, rows=THREE_ROWS)
    examples, _ = tokenize_rows(stage)
    model = stage.loaded.model
    state = SimpleNamespace(accelerator=SimpleNamespace(device=torch.device("cpu")), tokenizer=stage.loaded.tokenizer,
                            wrapped=model)
    total = sum(_label_tokens(e) for e in examples)
    ours = _token_loss_sum(state, examples, dft) / total
    batch = collate(stage)
    logp, keep = token_logprobs(model, batch)
    reference = -(logp.exp() * logp)[keep].mean() if dft else -logp[keep].mean()
    assert ours.item() == pytest.approx(reference.item(), rel=1e-5)
    if not dft:
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        assert ours.item() == pytest.approx(out.loss.item(), rel=1e-5)
