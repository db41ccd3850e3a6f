"""The native training loop: state, checkpoints with exact resume, Ctrl-C, the NaN stop, the progress bar and
metrics.jsonl. A method plugs in one function, `step(state) -> (metrics, samples)`, that makes one optimizer step;
SDFT does (methods/sdft.py), and so can any method that trains on its own rollouts.

Under `accelerate launch` (DDP) every process draws the same global batch from the stream and keeps its share;
`wrapped` is the DDP-wrapped model (its backward averages gradients across processes), `model` the plain module used
for sampling, a teacher and saving. With train.sharding=fsdp (sdft/distributed.py) `model` and `wrapped` are the
same sharded module, the teacher is sharded too, rollouts run inside `state.rollout_weights()` and checkpoints are
written by every process. A method's own state that must survive a resume (SDFT: its teacher) is the
loop's `companion`: saved in every checkpoint beside the student, and its settings compared on resume.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object

from sdft import distributed
from sdft.config import TrainConfig
from sdft.console import err_console, progress_bar
from sdft.errors import UserError
from sdft.methods import checkpoint as ckpt
from sdft.methods.harness import (MetricsLog, PromptStream, StageResult, build_optimizer, build_scheduler,
                                  graceful_interrupt, per_device_batch_size, save_model)
from sdft.methods.stage import Stage


class Companion(Protocol):
    """Method state kept in every checkpoint (e.g. the SDFT teacher)."""

    SETTING: str
    """The settings that built it: a checkpoint records them, and resume refuses others."""

    def state_dict(self) -> dict[str, torch.Tensor]: ...

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None: ...


@dataclass
class LoopState:
    """Everything a checkpoint holds, plus the run's handles."""

    stage: Stage
    accelerator: Accelerator
    model: torch.nn.Module
    wrapped: torch.nn.Module
    tokenizer: object
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    stream: PromptStream
    companion: Companion | None = None
    step: int = 0
    sharded: bool = False
    """train.sharding=fsdp: student, teacher and optimizer state are sharded over the processes."""

    def rollout_weights(self) -> contextlib.AbstractContextManager:
        """The context a rollout samples in: the student's weights gathered whole when sharded."""
        return distributed.full_weights(self.model) if self.sharded else contextlib.nullcontext()

    @property
    def cfg(self) -> TrainConfig:
        return self.stage.cfg.train


StepFunction = Callable[[Any], tuple[dict, list[dict]]]
"""One optimizer step on the loop's state: (metrics for metrics.jsonl, sample completions for samples.jsonl)."""


def build_loop(stage: Stage, state_class: type, rows: Callable[[], list],
               companion: Callable[[torch.nn.Module], Companion | None], **fields) -> Any:
    """Fresh state at stage start (a `state_class`, LoopState or a method's subclass with `fields`), or the newest
    checkpoint's state when resuming. `rows` prepares the training rows; `companion` builds the method's own state
    from the model at stage start (before the optimizer exists, so a copy of the model is a copy of its start). The
    optimizer is built after the model is wrapped (DDP) or sharded (FSDP: its states are then shards)."""
    cfg, loaded = stage.cfg, stage.loaded
    accelerator = Accelerator(cpu=loaded.device.type == "cpu")
    distributed.require_plain_launch(accelerator)
    sharded = cfg.train.sharding == "fsdp"
    if sharded:
        distributed.ensure_process_group(accelerator.device)
    per_device_batch_size(cfg.train, accelerator.num_processes)  # the batch splits evenly, or one clear error
    torch.manual_seed(cfg.seed + accelerator.process_index)
    prepared = rows()
    loaded.device = accelerator.device
    model = loaded.model.to(accelerator.device).train()
    extra = companion(model)
    if sharded:
        wrapped = distributed.shard(model, accelerator.device)
        if extra is not None:
            distributed.shard_teacher(extra, accelerator.device)
    else:
        wrapped = accelerator.prepare_model(model)
    optimizer = build_optimizer(model, cfg.train)
    state = state_class(stage, accelerator, model, wrapped, loaded.tokenizer, optimizer,
                        build_scheduler(optimizer, cfg.train), PromptStream(prepared, cfg.seed), extra, sharded=sharded,
                        **fields)
    if stage.resume:
        restore(state, ckpt.latest_checkpoint(stage.checkpoint_dir))
    return state


def run_loop(state: LoopState, step: StepFunction, label: str) -> StageResult:
    """Steps until train.steps (or a Ctrl-C: the step finishes, a checkpoint is saved, KeyboardInterrupt)."""
    stage, cfg = state.stage, state.cfg
    main = state.accelerator.is_main_process
    log = MetricsLog(stage.run_dir, state.step if stage.resume else None, cfg.report_to) if main else None
    metrics: dict = {}
    with progress_bar(disable=not main) as progress, graceful_interrupt() as stop:
        bar = progress.add_task(label, total=cfg.steps, completed=state.step)
        while state.step < cfg.steps and not distributed.on_any_process(stop(), state.accelerator.device):
            metrics, samples = step(state)
            if main:
                log.log(state.step, metrics)
                if state.step % cfg.log_every == 0:
                    log.samples(state.step, samples)
            if state.step % cfg.checkpoint_every == 0:
                save(state)
            progress.update(bar, advance=1, description=f"{label} loss {metrics['loss']:.4f}")
    if state.step % cfg.checkpoint_every != 0:
        save(state)
    if state.step < cfg.steps:
        raise KeyboardInterrupt(f"stopped at step {state.step}; resume with --resume")
    if state.sharded:
        distributed.save_consolidated(stage, state.model)  # every process hands its shards; the main one writes
    elif main:
        save_model(state.model, state.tokenizer, stage.model_dir)
    state.accelerator.wait_for_everyone()
    return StageResult(state.step, metrics, stage.model_dir)


def save(state: LoopState) -> None:
    """Every process hands its RNG state to the main one, which writes the checkpoint (sharded: every process writes
    its own shards into it first)."""
    rng_states = gather_object([ckpt.rng_state()]) if state.accelerator.num_processes > 1 else [ckpt.rng_state()]
    if state.sharded:
        return _save_sharded(state, rng_states)
    if state.accelerator.is_main_process:
        companion_state = state.companion.state_dict() if state.companion else {}
        ckpt.save_checkpoint(state.stage.checkpoint_dir, state.step, state.model, companion_state,
                             _trainer_state(state, rng_states, state.optimizer.state_dict()), state.cfg.keep_checkpoints)
    state.accelerator.wait_for_everyone()


def _trainer_state(state: LoopState, rng_states: list, optimizer_state: dict | None) -> dict:
    return {
        "step": state.step,
        "optimizer": optimizer_state,  # None when sharded: each process's shards are in its rank file
        "scheduler": state.scheduler.state_dict(),
        "stream": state.stream.state_dict(),
        "rng": rng_states,
        "teacher": state.companion.SETTING if state.companion else None,  # key named before the loop was shared
    }


def _save_sharded(state: LoopState, rng_states: list) -> None:
    root, step, main = state.stage.checkpoint_dir, state.step, state.accelerator.is_main_process
    if main:
        ckpt.begin_checkpoint(root, step)
    state.accelerator.wait_for_everyone()
    companion_state = state.companion.state_dict() if state.companion else {}
    ckpt.write_whole(root, step, lambda: distributed.write_shards(ckpt.staging_dir(root, step), state.model,
                                                                  companion_state, state.optimizer))
    state.accelerator.wait_for_everyone()
    if main:
        tmp = ckpt.staging_dir(root, step)
        ckpt.write_whole(root, step, lambda: torch.save(_trainer_state(state, rng_states, None), tmp / "trainer.pt"))
        ckpt.commit_checkpoint(root, step, state.cfg.keep_checkpoints)
    state.accelerator.wait_for_everyone()


def restore(state: LoopState, path) -> None:
    if state.sharded:
        saved = ckpt.read_trainer_state(path)
        _require_same_teacher(state, path, saved)
        distributed.read_shards(path, state.model, state.companion, state.optimizer)
    else:
        companion_state, saved = ckpt.load_checkpoint(path, state.model)
        _require_same_teacher(state, path, saved)
        if state.companion is not None:
            state.companion.load_state_dict(companion_state)
        state.optimizer.load_state_dict(saved["optimizer"])
    state.scheduler.load_state_dict(saved["scheduler"])
    state.stream.load_state_dict(saved["stream"])
    ckpt.set_rng_state(saved["rng"][state.accelerator.process_index])
    state.step = saved["step"]
    err_console.print(f"resumed from {path} at step {state.step}")


def _require_same_teacher(state: LoopState, path, saved: dict) -> None:
    if state.companion is None:
        return
    setting = _current_names(saved.get("teacher") or state.companion.SETTING)  # pre-2026-11-25: not recorded
    if setting != state.companion.SETTING:
        raise UserError(f"cannot resume from {path}: it was saved with {setting}, this run has "
                        f"{state.companion.SETTING}; resume with the run's own settings")


def _current_names(setting: str) -> str:
    # checkpoints written before the teacher's settings moved under train name lora.ema (sdft/config/renamed.py)
    return setting.replace("with lora.ema=", "with train.lora_ema=")


def optimizer_step(state: LoopState) -> tuple[float, float]:
    """Clip, step the optimizer and the schedule, zero the gradients; (gradient norm, learning rate used)."""
    trainable = [p for p in state.model.parameters() if p.requires_grad]
    grad_norm = torch.nn.utils.clip_grad_norm_(trainable, state.cfg.max_grad_norm)
    learning_rate = state.scheduler.get_last_lr()[0]
    state.optimizer.step()
    state.scheduler.step()
    state.optimizer.zero_grad(set_to_none=True)
    return distributed.scalar(grad_norm), learning_rate


def mean_over_processes(accelerator: Accelerator, metrics: dict) -> dict:
    if accelerator.num_processes == 1:
        return metrics
    keys = sorted(metrics)
    values = accelerator.reduce(torch.tensor([float(metrics[k]) for k in keys], device=accelerator.device), "mean")
    return dict(zip(keys, values.tolist()))


def require_finite(loss: torch.Tensor, state: LoopState) -> None:
    """Stop on a nan/inf loss, naming the last good checkpoint (none is written past it)."""
    if not math.isfinite(loss.item()):
        found = ckpt.checkpoints(state.stage.checkpoint_dir)
        last = f"the last good checkpoint is {found[-1]}" if found else "no checkpoint was saved yet"
        raise UserError(f"the loss became {loss.item()} at step {state.step + 1}; {last}; try a lower train.learning_rate")
