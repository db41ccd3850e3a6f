"""Self-Distillation Fine-Tuning: the student samples its own answer to the plain prompt, the teacher
(the same model with the demonstration in its prompt) scores every token of it, and the student is pulled
toward the teacher's next-token distributions (sdft/methods/losses.py)."""

from __future__ import annotations

import math
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from sdft.config import TrainConfig
from sdft.console import err_console, progress_bar
from sdft.errors import UserError
from sdft.methods import checkpoint as ckpt
from sdft.methods.harness import MetricsLog, PromptStream, StageResult, build_optimizer, build_scheduler, save_model
from sdft.methods.losses import distillation_loss
from sdft.methods.rollout import PreparedRow, completion_logits, left_pad, prepare_rows, sample_completions
from sdft.methods.stage import Stage
from sdft.methods.teacher import Teacher, build_teacher


@dataclass
class Trainer:
    """The state of an SDFT stage: everything a checkpoint holds, plus the run's handles."""

    stage: Stage
    model: torch.nn.Module
    tokenizer: object
    teacher: Teacher
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    stream: PromptStream
    step: int = 0

    @property
    def cfg(self) -> TrainConfig:
        return self.stage.cfg.train


def train_sdft(stage: Stage) -> StageResult:
    trainer = build_trainer(stage)
    log = MetricsLog(stage.run_dir, trainer.step if stage.resume else None, trainer.cfg.report_to)
    metrics: dict = {}
    with progress_bar() as progress, _graceful_interrupt() as stop:
        bar = progress.add_task(f"sdft on {stage.task.name}", total=trainer.cfg.steps, completed=trainer.step)
        while trainer.step < trainer.cfg.steps and not stop():
            metrics, samples = train_step(trainer)
            log.log(trainer.step, metrics)
            if trainer.step % trainer.cfg.log_every == 0:
                log.samples(trainer.step, samples)
            if trainer.step % trainer.cfg.checkpoint_every == 0:
                save(trainer)
            progress.update(bar, advance=1, description=f"sdft on {stage.task.name} loss {metrics['loss']:.4f}")
    save(trainer)
    if trainer.step < trainer.cfg.steps:
        raise KeyboardInterrupt(f"stopped at step {trainer.step}; resume with --resume")
    return StageResult(trainer.step, metrics, save_model(trainer.model, trainer.tokenizer, stage.model_dir))


def build_trainer(stage: Stage) -> Trainer:
    """Fresh state at stage start, or the newest checkpoint's state when resuming."""
    cfg, loaded = stage.cfg, stage.loaded
    torch.manual_seed(cfg.seed)
    rows = prepare_rows(stage.train_rows(), stage.task, loaded.tokenizer, cfg.train)
    model = loaded.model.train()
    teacher = build_teacher(model, cfg.train.teacher, cfg.train.ema_rate, lora=cfg.lora.enabled)
    optimizer = build_optimizer(model, cfg.train)
    trainer = Trainer(stage, model, loaded.tokenizer, teacher, optimizer, build_scheduler(optimizer, cfg.train),
                      PromptStream(rows, cfg.seed))
    if stage.resume:
        _restore(trainer, ckpt.latest_checkpoint(stage.checkpoint_dir))
    return trainer


def save(trainer: Trainer) -> None:
    state = {
        "step": trainer.step,
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict(),
        "stream": trainer.stream.state_dict(),
        "rng": ckpt.rng_state(),
    }
    ckpt.save_checkpoint(trainer.stage.checkpoint_dir, trainer.step, trainer.model, trainer.teacher.state_dict(),
                         state, trainer.cfg.keep_checkpoints)


def _restore(trainer: Trainer, path) -> None:
    teacher_state, state = ckpt.load_checkpoint(path, trainer.model)
    trainer.teacher.load_state_dict(teacher_state)
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.scheduler.load_state_dict(state["scheduler"])
    trainer.stream.load_state_dict(state["stream"])
    ckpt.set_rng_state(state["rng"])
    trainer.step = state["step"]
    err_console.print(f"resumed from {path} at step {trainer.step}")


def train_step(trainer: Trainer) -> tuple[dict, list[dict]]:
    """One optimizer step over cfg.batch_size prompts, in cfg.gradient_accumulation micro-batches."""
    cfg = trainer.cfg
    micro_size = cfg.batch_size // cfg.gradient_accumulation
    timings = {"generation": 0.0, "teacher_forward": 0.0, "student_forward_backward": 0.0}
    parts, samples = [], []
    for _ in range(cfg.gradient_accumulation):
        part, micro_samples = _micro_step(trainer, trainer.stream.next_batch(micro_size), timings)
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
    return _step_metrics(parts, timings, float(grad_norm), learning_rate), samples[: cfg.sample_count]


def _micro_step(trainer: Trainer, batch: list[PreparedRow], timings: dict) -> tuple[dict, list[dict]]:
    cfg, device, pad = trainer.cfg, trainer.stage.loaded.device, trainer.tokenizer.pad_token_id
    with _timed(timings, "generation"):
        prompt_ids, prompt_mask = left_pad([r.student_ids for r in batch], pad, device)
        rollout = sample_completions(trainer.model, trainer.tokenizer, prompt_ids, prompt_mask, cfg)
    with _timed(timings, "teacher_forward"):
        teacher_ids, teacher_mask = left_pad([r.teacher_ids for r in batch], pad, device)
        teacher_logits = trainer.teacher.logits(teacher_ids, teacher_mask, rollout)
    with _timed(timings, "student_forward_backward"):
        student_logits = completion_logits(trainer.model, prompt_ids, prompt_mask, rollout)
        loss_mask = rollout.mask if cfg.capped_completions_in_loss else rollout.mask * (~rollout.hit_cap[:, None])
        loss, stats = distillation_loss(student_logits, teacher_logits, loss_mask, cfg.loss, completion_ids=rollout.ids)
        _require_finite(loss, trainer)
        (loss / cfg.gradient_accumulation).backward()
    texts = trainer.tokenizer.batch_decode(rollout.ids, skip_special_tokens=True)
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
    timings[key] += time.perf_counter() - started


@contextmanager
def _graceful_interrupt():
    """The first Ctrl-C finishes the current step, saves a checkpoint and stops; a second one aborts."""
    requested = {"stop": False}

    def handler(signum, frame):
        if requested["stop"]:
            raise KeyboardInterrupt
        requested["stop"] = True
        err_console.print("[yellow]stopping after this step and saving a checkpoint (Ctrl-C again to abort)[/]")

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: no signal handling
        previous = None
    try:
        yield lambda: requested["stop"]
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
