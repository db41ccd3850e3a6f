"""One Hugging Face Trainer session for the methods that train on fixed token sequences: SFT and DFT (prompt +
demonstration) and CPT (raw corpus blocks). They differ only in their examples and TRL's loss type; everything else
is here once: TRL's SFTTrainer over pre-tokenised examples (no re-tokenising, no truncation), our optimizer and
schedule, the run folder's shape (metrics.jsonl, checkpoints/, model/), the progress bar, the NaN guard, Ctrl-C, and
resume. The sharing rules of transformers' Trainer apply (DDP under `accelerate launch`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from transformers import PrinterCallback, TrainerCallback

from sdft.console import err_console, progress_bar
from sdft.distributed import on_any_process
from sdft.errors import UserError
from sdft.methods.harness import (MetricsLog, StageResult, build_optimizer, build_scheduler, graceful_interrupt,
                                  per_device_batch_size, require_same_device, save_model)
from sdft.methods.hf_trainer import CHECKPOINT_PREFIX, MetricsCallback, checkpoint_step, resume_checkpoint
from sdft.methods.registry import method_of
from sdft.methods.stage import Stage
from sdft.models import process_state

Examples = list[dict[str, list[int]]]
"""{input_ids, labels} per example; labels -100 where no loss is taken."""

# Trainer/TRL log keys we drop: per-session totals, TRL's token count (not restored on resume), summary-only keys.
_DROPPED_KEYS = {"num_tokens", "num_input_tokens_seen", "total_flos", "train_runtime", "train_tokens_per_second",
                 "train_samples_per_second", "train_steps_per_second", "train_loss"}


def train_on_examples(stage: Stage, examples: Examples, label: str, extra: dict[str, Any],
                      callbacks: Sequence[TrainerCallback] = ()) -> StageResult:
    """Train `stage` on `examples` (loss type from train.method: dft, else nll); `extra` joins every metrics line;
    `callbacks` are extra transformers callbacks."""
    cfg = stage.cfg.train
    resume_from = resume_checkpoint(stage)
    main = process_state(stage.cfg.model).is_main_process
    log = MetricsLog(stage.run_dir, checkpoint_step(resume_from) if resume_from else None, cfg.report_to) if main else None
    with _no_transformers_bars():
        with _training_session(stage), (progress_bar() if main else nullcontext()) as progress, \
                graceful_interrupt() as stop:
            run = RunCallback(log, progress, label, stage.checkpoint_dir, extra=extra, stop_requested=stop)
            trainer = build_trainer(stage, examples, [*callbacks, run])
            try:
                train_from(trainer, resume_from)
            except KeyboardInterrupt:
                _save_on_interrupt(trainer)
                raise
        if trainer.state.global_step < trainer.state.max_steps:  # a first Ctrl-C: the step finished and was saved
            raise KeyboardInterrupt(f"stopped at step {trainer.state.global_step}; resume with --resume")
        if main:
            save_model(stage.loaded.model, stage.loaded.tokenizer, stage.model_dir)
        trainer.accelerator.wait_for_everyone()
    return StageResult(steps=trainer.state.global_step, metrics=run.last, model_dir=stage.model_dir)


def train_from(trainer, resume_from: Path | None) -> None:
    """trainer.train from the checkpoint, if any; one whose optimizer state does not fit this run is named."""
    try:
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    except ValueError as err:
        if resume_from is None or "parameter group" not in str(err):
            raise
        raise UserError(f"cannot resume from {resume_from}: its optimizer state does not fit this run ({err}); it was "
                        "saved with other lora settings, or by an sdft from before 2026-11-25 whose SFT used "
                        "transformers' optimizer; start again in a new --output") from None


def build_trainer(stage: Stage, examples: list[dict], callbacks: Sequence[TrainerCallback] = ()):
    """An SFTTrainer over pre-tokenised examples; TRL's dataset preparation is skipped (it would only
    re-tokenise or truncate), so its collator pads our ids on the right and keeps our labels."""
    from datasets import Dataset
    from trl import SFTTrainer

    args = sft_config(stage)
    require_same_device(stage.loaded.device, args.device)
    # our optimizer and schedule, as in SDFT runs: the methods differ in their loss only (transformers' warm-up
    # would start at lr 0, ours at lr / (warmup_steps + 1))
    optimizer = build_optimizer(stage.loaded.model, stage.cfg.train)
    trainer = SFTTrainer(
        model=stage.loaded.model, args=args, train_dataset=Dataset.from_list(examples),
        processing_class=stage.loaded.tokenizer, callbacks=list(callbacks),
        optimizers=(optimizer, build_scheduler(optimizer, stage.cfg.train)),
    )
    trainer.remove_callback(PrinterCallback)  # it prints every log dict to stdout; RunCallback logs instead
    return trainer


def sft_config(stage: Stage):
    """TrainConfig -> SFTConfig. Every field TRL or transformers would default differently is set here."""
    from trl import SFTConfig

    cfg, train, device = stage.cfg, stage.cfg.train, stage.loaded.device
    return SFTConfig(
        output_dir=str(stage.checkpoint_dir),
        loss_type=method_of(cfg).hf_loss_type,
        max_steps=train.steps,
        per_device_train_batch_size=per_device_batch_size(train, process_state(cfg.model).num_processes),
        gradient_accumulation_steps=train.gradient_accumulation,
        learning_rate=train.learning_rate,  # what the optimizer and schedule of build_trainer use (harness.py)
        max_grad_norm=train.max_grad_norm,
        seed=cfg.seed,
        bf16=cfg.model.dtype == "bfloat16",  # TRL defaults bf16 to True: never leave it unset
        fp16=False,
        activation_checkpointing=False,  # TRL defaults gradient checkpointing to True
        use_cpu=device.type == "cpu",
        logging_steps=train.log_every,
        logging_nan_inf_filter=False,  # the default hides a nan loss behind the previous average
        include_num_input_tokens_seen="non_padding",  # kept in the checkpoint state, unlike TRL's num_tokens
        save_strategy="steps",
        save_steps=train.checkpoint_every,
        save_total_limit=train.keep_checkpoints,
        eval_strategy="no",
        report_to="none",  # MetricsLog forwards to cfg.train.report_to, as in SDFT runs
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=device.type == "cuda",
        max_length=None,  # we checked the lengths; TRL must not truncate
        dataset_kwargs={"skip_prepare_dataset": True},
        packing=False,
        padding_free=False,
    )


class RunCallback(MetricsCallback):
    """metrics.jsonl lines (with tokens seen and tokens/s), the progress bar, the NaN guard and the graceful stop."""

    dropped_keys = _DROPPED_KEYS

    def __init__(self, log: MetricsLog | None, progress, label: str, checkpoint_dir: Path,
                 extra: dict[str, Any] | None = None, stop_requested: Callable[[], bool] = lambda: False):
        super().__init__(log, progress, label, checkpoint_dir)
        self.extra, self.stop_requested = extra or {}, stop_requested

    def on_train_begin(self, args, state, control, **kwargs):
        self._mark(state)
        super().on_train_begin(args, state, control, **kwargs)

    def on_step_end(self, args, state, control, **kwargs):
        if on_any_process(self.stop_requested(), args.device):  # every process stops at the same step
            control.should_save = control.should_training_stop = True
        if control.should_save:  # log first, so no checkpoint is written past a nan loss
            control.should_log = True
        super().on_step_end(args, state, control, **kwargs)

    def enrich(self, record: dict[str, Any], state) -> None:
        now, steps = time.perf_counter(), max(1, state.global_step - self._step)
        record.update(tokens_seen=state.num_input_tokens_seen,
                      tokens_per_second=(state.num_input_tokens_seen - self._tokens) / max(now - self._time, 1e-9),
                      step_seconds=(now - self._time) / steps, **self.extra)
        self._mark(state)

    def _mark(self, state) -> None:
        self._time, self._step, self._tokens = time.perf_counter(), state.global_step, state.num_input_tokens_seen


def _save_on_interrupt(trainer) -> None:
    """A hard KeyboardInterrupt (second Ctrl-C, or one without our handler): save where training stands, unless
    there is nothing new to save or the weights are no longer finite."""
    step = trainer.state.global_step
    target = Path(trainer.args.output_dir) / f"{CHECKPOINT_PREFIX}{step}"
    if step == 0 or target.exists():
        return
    if not all(torch.isfinite(p).all() for p in trainer.model.parameters() if p.requires_grad):
        err_console.print(f"[red]interrupted at step {step} with non-finite weights: no checkpoint saved[/]")
        return
    trainer._save_checkpoint(trainer.model, trial=None)
    err_console.print(f"[yellow]interrupted: saved {target}[/]")


@contextmanager
def _training_session(stage: Stage):
    """Right padding for SFT collation; afterwards left padding again, TRL's fused-LM-head forward (an instance
    attribute it puts on the model) removed, and the model in eval mode."""
    from peft import PeftModel

    model, tokenizer = stage.loaded.model, stage.loaded.tokenizer
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    had_forward, padding_side = "forward" in vars(base), tokenizer.padding_side
    tokenizer.padding_side = "right"
    try:
        yield
    finally:
        tokenizer.padding_side = padding_side
        if not had_forward:
            vars(base).pop("forward", None)
        model.eval()


@contextmanager
def _no_transformers_bars():
    """No tqdm bars from transformers (each checkpoint write draws one) under our rich bar; restored after."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()
