"""Self-Distillation Fine-Tuning: the student samples its own answer to the plain prompt, the teacher
(the same model with the demonstration in its prompt) scores every token of it, and the student is pulled
toward the teacher's next-token distributions (sdft/methods/losses.py)."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from accelerate import Accelerator
from accelerate.utils import gather_object

from sdft.config import TrainConfig
from sdft.console import err_console, progress_bar
from sdft.errors import UserError
from sdft.methods import checkpoint as ckpt
from sdft.methods.harness import (
    MetricsLog,
    PromptStream,
    StageResult,
    build_optimizer,
    build_scheduler,
    graceful_interrupt,
    save_model,
)
from sdft.methods.losses import distillation_loss
from sdft.generation import backend, left_pad, prompt_pass
from sdft.methods.rollout import (
    PreparedRow,
    completion_logits,
    has_active_dropout,
    prepare_rows,
    student_completion_logits,
)
from sdft.methods.stage import Stage
from sdft.methods.teacher import Teacher, build_teacher


@dataclass
class Trainer:
    """The state of an SDFT stage: everything a checkpoint holds, plus the run's handles.

    Under `accelerate launch` (DDP) every process draws the same global batch from the stream and keeps
    its share; `wrapped` is the DDP-wrapped student (its backward averages gradients across processes),
    `model` the plain module used for sampling, the teacher and saving."""

    stage: Stage
    accelerator: Accelerator
    model: torch.nn.Module
    wrapped: torch.nn.Module
    tokenizer: object
    teacher: Teacher
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    stream: PromptStream
    step: int = 0
    share_prompt_pass: bool | None = None
    """Whether the student's prompt pass (with grad) doubles as the sampler's prefill: None = decide per micro-batch
    (_shares_prompt_pass); False with dropout, where the training-mode forward is not the sampler's eval-mode one."""

    @property
    def cfg(self) -> TrainConfig:
        return self.stage.cfg.train


def train_sdft(stage: Stage) -> StageResult:
    trainer = build_trainer(stage)
    main = trainer.accelerator.is_main_process
    log = MetricsLog(stage.run_dir, trainer.step if stage.resume else None, trainer.cfg.report_to) if main else None
    metrics: dict = {}
    with progress_bar(disable=not main) as progress, graceful_interrupt() as stop:
        bar = progress.add_task(f"sdft on {stage.task.name}", total=trainer.cfg.steps, completed=trainer.step)
        while trainer.step < trainer.cfg.steps and not stop():
            metrics, samples = train_step(trainer)
            if main:
                log.log(trainer.step, metrics)
                if trainer.step % trainer.cfg.log_every == 0:
                    log.samples(trainer.step, samples)
            if trainer.step % trainer.cfg.checkpoint_every == 0:
                save(trainer)
            progress.update(bar, advance=1, description=f"sdft on {stage.task.name} loss {metrics['loss']:.4f}")
    if trainer.step % trainer.cfg.checkpoint_every != 0:
        save(trainer)
    if trainer.step < trainer.cfg.steps:
        raise KeyboardInterrupt(f"stopped at step {trainer.step}; resume with --resume")
    if main:
        save_model(trainer.model, trainer.tokenizer, stage.model_dir)
    trainer.accelerator.wait_for_everyone()
    return StageResult(trainer.step, metrics, stage.model_dir)


def build_trainer(stage: Stage) -> Trainer:
    """Fresh state at stage start, or the newest checkpoint's state when resuming."""
    cfg, loaded = stage.cfg, stage.loaded
    accelerator = Accelerator(cpu=loaded.device.type == "cpu")
    _check_batch_split(cfg.train, accelerator.num_processes)
    torch.manual_seed(cfg.seed + accelerator.process_index)
    rows = prepare_rows(stage.train_rows(), stage.task, loaded.tokenizer, cfg.train)
    loaded.device = accelerator.device
    model = loaded.model.to(accelerator.device).train()
    teacher = build_teacher(model, cfg.train.teacher, cfg.train.ema_rate, lora=cfg.lora.enabled,
                            lora_ema=cfg.train.lora_ema)
    optimizer = build_optimizer(model, cfg.train)
    wrapped = accelerator.prepare_model(model)
    trainer = Trainer(stage, accelerator, model, wrapped, loaded.tokenizer, teacher, optimizer,
                      build_scheduler(optimizer, cfg.train), PromptStream(rows, cfg.seed),
                      share_prompt_pass=False if has_active_dropout(model) else None)
    if stage.resume:
        _restore(trainer, ckpt.latest_checkpoint(stage.checkpoint_dir))
    return trainer


def _check_batch_split(cfg: TrainConfig, processes: int) -> None:
    if cfg.batch_size % (cfg.gradient_accumulation * processes) != 0:
        raise UserError(f"train.batch_size={cfg.batch_size} must split evenly over train.gradient_accumulation="
                        f"{cfg.gradient_accumulation} x {processes} processes")


def save(trainer: Trainer) -> None:
    """Every process hands its RNG state to the main one, which writes the checkpoint."""
    rng_states = gather_object([ckpt.rng_state()]) if trainer.accelerator.num_processes > 1 else [ckpt.rng_state()]
    if trainer.accelerator.is_main_process:
        state = {
            "step": trainer.step,
            "optimizer": trainer.optimizer.state_dict(),
            "scheduler": trainer.scheduler.state_dict(),
            "stream": trainer.stream.state_dict(),
            "rng": rng_states,
            "teacher": trainer.teacher.SETTING,
        }
        ckpt.save_checkpoint(trainer.stage.checkpoint_dir, trainer.step, trainer.model, trainer.teacher.state_dict(),
                             state, trainer.cfg.keep_checkpoints)
    trainer.accelerator.wait_for_everyone()


def _restore(trainer: Trainer, path) -> None:
    teacher_state, state = ckpt.load_checkpoint(path, trainer.model)
    saved = state.get("teacher", trainer.teacher.SETTING)  # checkpoints from before 2026-11-25 do not say
    if saved != trainer.teacher.SETTING:
        raise UserError(f"cannot resume from {path}: it was saved with {saved}, this run has "
                        f"{trainer.teacher.SETTING}; resume with the run's own settings")
    trainer.teacher.load_state_dict(teacher_state)
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.scheduler.load_state_dict(state["scheduler"])
    trainer.stream.load_state_dict(state["stream"])
    ckpt.set_rng_state(state["rng"][trainer.accelerator.process_index])
    trainer.step = state["step"]
    err_console.print(f"resumed from {path} at step {trainer.step}")


def train_step(trainer: Trainer) -> tuple[dict, list[dict]]:
    """One optimizer step over cfg.batch_size prompts, in cfg.gradient_accumulation micro-batches."""
    cfg = trainer.cfg
    timings = {"generation": 0.0, "teacher_forward": 0.0, "student_forward_backward": 0.0}
    parts, samples = [], []
    for micro, (batch, share) in enumerate(_my_micro_batches(trainer)):
        last = micro == cfg.gradient_accumulation - 1
        with contextlib.nullcontext() if last else trainer.accelerator.no_sync(trainer.wrapped):
            part, micro_samples = _micro_step(trainer, batch, timings, share)
        parts.append(part)
        samples.extend(micro_samples)
    started = time.perf_counter()
    grad_norm = torch.nn.utils.clip_grad_norm_([p for p in trainer.model.parameters() if p.requires_grad], cfg.max_grad_norm)
    learning_rate = trainer.scheduler.get_last_lr()[0]
    trainer.optimizer.step()
    trainer.scheduler.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.teacher.update()
    timings["optimizer"] = time.perf_counter() - started
    trainer.step += 1
    metrics = _step_metrics(parts, timings, float(grad_norm), learning_rate)
    return _mean_over_processes(trainer.accelerator, metrics), samples[: cfg.sample_count]


def _mean_over_processes(accelerator: Accelerator, metrics: dict) -> dict:
    if accelerator.num_processes == 1:
        return metrics
    keys = sorted(metrics)
    values = accelerator.reduce(torch.tensor([float(metrics[k]) for k in keys], device=accelerator.device), "mean")
    return dict(zip(keys, values.tolist()))


SHARED_PROMPT_PASS_MIN_TOKENS = 256
"""With full fine-tuning the student's prompt pass doubles as the sampler's prefill only from this many prompt tokens
per process in a micro-batch on. Sharing saves the prefill (a forward over the prompt tokens), but the backward then
runs twice over every weight and builds a second full-size weight gradient to add to the first. Measured on the
Qwen2.5-0.5B shape, 2 CPU cores (BENCHMARKS.md): 31 prompt tokens, backward +1.6 s for 0.4 s of prefill saved; 126
tokens, +1.2 s for 1.0 s; on the embedded model (1,300-2,600 prompt tokens per step) sharing gains. With LoRA the
second gradient is the adapters' only and sharing costs at most what it saves (0.5B shape, 31 tokens: +0.30 s for
0.35 s), so LoRA always shares."""


def _my_micro_batches(trainer: Trainer) -> Iterator[tuple[list[PreparedRow], bool]]:
    """This process's share of each micro-batch, and whether its prompt pass is shared. Every process draws the same
    micro-batch and decides from all of it: under DDP every process must run the same number of forward passes
    (each one broadcasts the model's buffers), or they wait on each other for ever."""
    processes, rank = trainer.accelerator.num_processes, trainer.accelerator.process_index
    for _ in range(trainer.cfg.gradient_accumulation):
        everyone = trainer.stream.next_batch(trainer.cfg.batch_size // trainer.cfg.gradient_accumulation)
        share = _shares_prompt_pass(trainer, sum(len(r.student_ids) for r in everyone) / processes)
        yield everyone[rank::processes], share


def _shares_prompt_pass(trainer: Trainer, prompt_tokens_per_process: float) -> bool:
    if trainer.share_prompt_pass is not None:
        return trainer.share_prompt_pass
    return trainer.stage.cfg.lora.enabled or prompt_tokens_per_process >= SHARED_PROMPT_PASS_MIN_TOKENS


def _micro_step(trainer: Trainer, batch: list[PreparedRow], timings: dict,
                share_prompt_pass: bool) -> tuple[dict, list[dict]]:
    cfg, device, pad = trainer.cfg, trainer.stage.loaded.device, trainer.tokenizer.pad_token_id
    prompt_ids, prompt_mask = left_pad([r.student_ids for r in batch], pad, device)
    prompt = None
    if share_prompt_pass:  # the first half of the student's forward, and the sampler's prefill
        with _timed(timings, "student_forward_backward"):
            prompt = prompt_pass(trainer.wrapped, prompt_ids, prompt_mask)
    with _timed(timings, "generation"):
        rollout = backend(cfg.rollout.backend).sample(trainer.model, trainer.tokenizer, prompt_ids, prompt_mask,
                                                      cfg.rollout, cfg.max_completion_tokens, prefill=prompt)
    with _timed(timings, "teacher_forward"):
        teacher_ids, teacher_mask = left_pad([r.teacher_ids for r in batch], pad, device)
        teacher_logits = trainer.teacher.logits(teacher_ids, teacher_mask, rollout)
    with _timed(timings, "student_forward_backward"):
        if prompt is not None:
            student_logits = student_completion_logits(trainer.wrapped, prompt, rollout)
        else:
            student_logits = completion_logits(trainer.wrapped, prompt_ids, prompt_mask, rollout)
        loss_mask = rollout.mask if cfg.capped_completions_in_loss else rollout.mask * (~rollout.hit_cap[:, None])
        loss, stats = distillation_loss(student_logits, teacher_logits, loss_mask, cfg.loss, completion_ids=rollout.ids)
        _require_finite(loss, trainer)
        (loss / cfg.gradient_accumulation).backward()
    texts = trainer.tokenizer.batch_decode(rollout.ids[: cfg.sample_count], skip_special_tokens=True)  # only those kept
    samples = [{"prompt": r.row.prompt, "completion": t, "demonstration": r.row.demonstration} for r, t in zip(batch, texts)]
    part = {"loss": loss.item(), **stats.to_dict(), "completion_tokens": rollout.mask.sum(1).float().mean().item(),
            "capped_share": rollout.hit_cap.float().mean().item(), "tokens": int(rollout.mask.sum())}
    return part, samples


def _step_metrics(parts: list[dict], timings: dict, grad_norm: float, learning_rate: float) -> dict:
    metrics = {key: sum(p[key] for p in parts) / len(parts) for key in parts[0] if key != "tokens"}
    tokens = sum(p["tokens"] for p in parts)
    total = sum(timings.values())
    return {**metrics, "grad_norm": grad_norm, "learning_rate": learning_rate,
            "tokens_per_second": tokens / total if total else 0.0, "step_seconds": total,
            **{f"time_{k}": v for k, v in timings.items()}}


def _require_finite(loss: torch.Tensor, trainer: Trainer) -> None:
    if not math.isfinite(loss.item()):
        found = ckpt.checkpoints(trainer.stage.checkpoint_dir)
        last = f"the last good checkpoint is {found[-1]}" if found else "no checkpoint was saved yet"
        raise UserError(f"the loss became {loss.item()} at step {trainer.step + 1}; {last}; try a lower train.learning_rate")


@contextmanager
def _timed(timings: dict, key: str):
    started = time.perf_counter()
    yield
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()  # queued kernels belong to this phase, not to the next one
    timings[key] += time.perf_counter() - started
