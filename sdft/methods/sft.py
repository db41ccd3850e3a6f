"""The SFT and DFT baselines, trained by TRL's SFTTrainer: next-token loss on the demonstration (plus the eos
token, so the model learns to stop) given the student's chat prompt; DFT weights each token's loss by its
detached probability (TRL's `loss_type="dft"`).

We tokenise the rows ourselves and hand TRL finished `input_ids` / `labels`, so the tokens trained are exactly
the tokens checked against the length caps: no special tokens added, no second chat template, no truncation.
Logging, the NaN guard, the progress bar and Ctrl-C are one callback, and the run folder has the shape of an
SDFT run (metrics.jsonl, checkpoints/, model/)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from transformers import PrinterCallback, TrainerCallback

from sdft.config import TrainConfig
from sdft.console import err_console, progress_bar
from sdft.errors import UserError
from sdft.methods.harness import MetricsLog, StageResult, build_optimizer, build_scheduler, graceful_interrupt, save_model
from sdft.methods.hf_trainer import CHECKPOINT_PREFIX, checkpoint_step, latest_checkpoint, require_finite
from sdft.methods.stage import Stage
from sdft.models import process_state
from sdft.prompts import render_prompt

# Trainer/TRL log keys we drop: per-session totals, TRL's token count (not restored on resume), summary-only keys.
_DROPPED_KEYS = {"num_tokens", "num_input_tokens_seen", "total_flos", "train_runtime", "train_tokens_per_second",
                 "train_samples_per_second", "train_steps_per_second", "train_loss"}


def train_sft(stage: Stage, callbacks: Sequence[TrainerCallback] = ()) -> StageResult:
    """Train `stage` with SFT or DFT (cfg.train.method); `callbacks` are extra transformers callbacks."""
    cfg = stage.cfg.train
    resume_from = latest_checkpoint(stage.checkpoint_dir) if stage.resume else None
    if stage.resume and resume_from is None:
        raise UserError(f"nothing to resume in {stage.checkpoint_dir}: it holds no {CHECKPOINT_PREFIX}<step> folder")
    examples, skipped = tokenize_rows(stage)
    if resume_from:
        err_console.print(f"resuming from {resume_from}")
    main = process_state(stage.cfg.model).is_main_process
    resume_step = checkpoint_step(resume_from) if resume_from else None
    log = MetricsLog(stage.run_dir, resume_step, cfg.report_to) if main else None
    bar = progress_bar() if main else nullcontext()
    with _no_transformers_bars():
        with _training_session(stage), bar as progress, graceful_interrupt() as stop:
            run = RunCallback(log, progress, f"{cfg.method} on {stage.task.name}", stage.checkpoint_dir,
                              extra={"skipped_rows": skipped}, stop_requested=stop)
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


def tokenize_rows(stage: Stage) -> tuple[list[dict[str, list[int]]], int]:
    """Each row as {input_ids, labels}: the rendered student prompt (labels -100), then the demonstration and
    the eos token (labels = ids). A row over a cap raises a UserError naming it, or with
    train.overlong_prompts=skip is dropped and counted. Returns (examples, number of skipped rows)."""
    cfg, tokenizer, task = stage.cfg.train, stage.loaded.tokenizer, stage.task
    rows = stage.train_rows()
    if not rows:
        raise UserError(f"task '{task.name}' split '{cfg.split}' has no rows to train on")
    if tokenizer.eos_token_id is None:
        raise UserError("the tokenizer has no eos token; SFT ends every demonstration with it (to learn to stop)")
    prompts = [render_prompt(tokenizer, row.prompt, task.system_prompt) for row in rows]
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    demo_ids = tokenizer([row.demonstration for row in rows], add_special_tokens=False)["input_ids"]
    examples, skipped = [], []
    for number, (prompt, demo) in enumerate(zip(prompt_ids, demo_ids), start=1):
        completion = [*demo, tokenizer.eos_token_id]
        problem = _overlong(len(prompt), len(completion), cfg)
        if problem is None:
            examples.append({"input_ids": prompt + completion, "labels": [-100] * len(prompt) + completion})
        elif cfg.overlong_prompts == "skip":
            skipped.append(number)
        else:
            raise UserError(f"task '{task.name}' split '{cfg.split}' row {number}: {problem}; "
                            "raise the cap or set train.overlong_prompts=skip")
    if skipped:
        more = "..." if len(skipped) > 10 else ""
        err_console.print(f"[yellow]skipped {len(skipped)} of {len(rows)} rows of '{task.name}' over the length caps "
                          f"(rows {skipped[:10]}{more})[/]")
    if not examples:
        raise UserError(f"task '{task.name}': no row fits train.max_prompt_tokens / train.max_completion_tokens")
    return examples, len(skipped)


def _overlong(prompt_tokens: int, completion_tokens: int, cfg: TrainConfig) -> str | None:
    if prompt_tokens > cfg.max_prompt_tokens:
        return f"the prompt has {prompt_tokens} tokens, over train.max_prompt_tokens={cfg.max_prompt_tokens}"
    if completion_tokens > cfg.max_completion_tokens:
        return (f"the demonstration and its eos token make {completion_tokens} tokens, "
                f"over train.max_completion_tokens={cfg.max_completion_tokens}")
    return None


def build_trainer(stage: Stage, examples: list[dict], callbacks: Sequence[TrainerCallback] = ()):
    """An SFTTrainer over pre-tokenised examples; TRL's dataset preparation is skipped (it would only
    re-tokenise or truncate), so its collator pads our ids on the right and keeps our labels."""
    from datasets import Dataset
    from trl import SFTTrainer

    args, model_device = sft_config(stage), stage.loaded.device
    if model_device.type != args.device.type or model_device.index not in (None, args.device.index):
        raise UserError(f"SFT trains on {args.device} (accelerate's device) but model.device is {model_device}; "
                        "use CUDA_VISIBLE_DEVICES to pick the GPU")
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
        loss_type="dft" if train.method == "dft" else "nll",
        max_steps=train.steps,
        per_device_train_batch_size=per_device_batch_size(stage),
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


def per_device_batch_size(stage: Stage) -> int:
    """cfg.train.batch_size counts prompts per optimizer step, across accumulation and processes."""
    train, processes = stage.cfg.train, process_state(stage.cfg.model).num_processes
    per_device, remainder = divmod(train.batch_size, train.gradient_accumulation * processes)
    if remainder or per_device < 1:
        raise UserError(f"train.batch_size={train.batch_size} must be a multiple of train.gradient_accumulation "
                        f"({train.gradient_accumulation}) x processes ({processes})")
    return per_device


class RunCallback(TrainerCallback):
    """metrics.jsonl lines, the progress bar, the NaN guard and the graceful stop, for a TRL/transformers run."""

    def __init__(self, log: MetricsLog | None, progress, label: str, checkpoint_dir: Path,
                 extra: dict[str, Any] | None = None, stop_requested: Callable[[], bool] = lambda: False):
        self.log, self.progress, self.label, self.checkpoint_dir = log, progress, label, Path(checkpoint_dir)
        self.extra, self.stop_requested = extra or {}, stop_requested
        self.last: dict[str, Any] = {}
        self._bar = None

    def on_train_begin(self, args, state, control, **kwargs):
        self._mark(state)
        if self.progress is not None:
            self._bar = self.progress.add_task(self.label, total=state.max_steps, completed=state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        if _on_any_process(self.stop_requested(), args.device):  # every process stops at the same step
            control.should_save = control.should_training_stop = True
        if control.should_save:  # log first, so no checkpoint is written past a nan loss
            control.should_log = True
        if self._bar is not None:
            self.progress.update(self._bar, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs:  # the end-of-training summary
            return
        now, steps = time.perf_counter(), max(1, state.global_step - self._step)
        record = {key: value for key, value in logs.items() if key not in _DROPPED_KEYS}
        record.update(tokens_seen=state.num_input_tokens_seen,
                      tokens_per_second=(state.num_input_tokens_seen - self._tokens) / max(now - self._time, 1e-9),
                      step_seconds=(now - self._time) / steps, **self.extra)
        self._mark(state)
        self.last = record
        if self.log is not None and state.is_world_process_zero:
            self.log.log(state.global_step, record)
        if self._bar is not None:
            self.progress.update(self._bar, description=f"{self.label} loss {record['loss']:.4f}")
        require_finite(record, state.global_step, self.checkpoint_dir)

    def _mark(self, state) -> None:
        self._time, self._step, self._tokens = time.perf_counter(), state.global_step, state.num_input_tokens_seen


def _on_any_process(flag: bool, device: torch.device) -> bool:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return flag
    value = torch.tensor([float(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


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
