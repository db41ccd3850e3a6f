"""Self-Distillation Fine-Tuning: the student samples its own answer to the plain prompt, the teacher
(the same model with the demonstration in its prompt) scores every token of it, and the student is pulled
toward the teacher's next-token distributions (sdft/methods/losses.py)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from sdft.generation import backend, left_pad, prompt_pass
from sdft.methods.harness import StageResult
from sdft.methods.losses import distillation_loss
from sdft.methods.loop import LoopState, build_loop, mean_over_processes, optimizer_step, require_finite, run_loop
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
class Trainer(LoopState):
    """The native loop's state (methods/loop.py) with SDFT's own: the teacher is the loop's companion, saved in every
    checkpoint."""

    share_prompt_pass: bool | None = None
    """Whether the student's prompt pass (with grad) doubles as the sampler's prefill: None = decide per micro-batch
    (_shares_prompt_pass); False with dropout, where the training-mode forward is not the sampler's eval-mode one."""

    @property
    def teacher(self) -> Teacher:
        return self.companion


def train_sdft(stage: Stage) -> StageResult:
    return run_loop(build_trainer(stage), train_step, f"sdft on {stage.task.name}")


def build_trainer(stage: Stage, rows: Callable[[], list[PreparedRow]] | None = None,
                  teacher: Callable[[torch.nn.Module], Teacher] | None = None) -> Trainer:
    """Fresh state at stage start, or the newest checkpoint's state when resuming. By default the rows are the
    task's (prompt and teacher prompt with the demonstration) and the teacher is train.teacher's; sft_reinvoke
    passes its own (general prompts, the stage-start model)."""
    train = stage.cfg.train
    rows = rows or (lambda: prepare_rows(stage.train_rows(), stage.task, stage.loaded.tokenizer, train))
    teacher = teacher or (lambda model: build_teacher(model, train.teacher, train.ema_rate,
                                                      lora=stage.cfg.lora.enabled, lora_ema=train.lora_ema))
    trainer = build_loop(stage, Trainer, rows, teacher)
    # sharded, a prompt pass kept for backward would be gathered whole with the rollout's weights (sdft/distributed.py)
    trainer.share_prompt_pass = False if has_active_dropout(trainer.model) or trainer.sharded else None
    return trainer


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
    grad_norm, learning_rate = optimizer_step(trainer)
    trainer.teacher.update()
    timings["optimizer"] = time.perf_counter() - started
    trainer.step += 1
    metrics = _step_metrics(parts, timings, grad_norm, learning_rate)
    return mean_over_processes(trainer.accelerator, metrics), samples[: cfg.sample_count]


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
    with _timed(timings, "generation"), trainer.rollout_weights():
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
        require_finite(loss, trainer)
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


@contextmanager
def _timed(timings: dict, key: str):
    started = time.perf_counter()
    yield
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()  # queued kernels belong to this phase, not to the next one
    timings[key] += time.perf_counter() - started
