"""The callbacks and the sampler wrapper that make TRL's SDFTTrainer behave as sdft's engine trl (trl_engine.py):
our teacher's update and its state in every checkpoint, metrics.jsonl / samples.jsonl / the progress bar / the NaN
guard, and an epoch-seeded order of rows so that a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from sdft.errors import UserError
from sdft.methods.hf_trainer import CHECKPOINT_PREFIX, MetricsCallback
from sdft.methods.teacher import Teacher

TEACHER_FILE = "sdft_teacher.safetensors"
_DROPPED_KEYS = {"sdft/distillation_loss", "total_flos", "train_runtime", "train_samples_per_second",
                 "train_steps_per_second", "train_loss"}  # a duplicate key and end-of-run summaries


class EpochSeeded(torch.utils.data.Sampler):
    """TRL's RepeatSampler seeds its generator once and draws one permutation per pass, but on resume transformers
    skips whole epochs without iterating them, so a run resumed at or after an epoch boundary replays epoch 0's order.
    With set_epoch (transformers calls it at every epoch start) the order is a function of (seed, epoch)."""

    def __init__(self, sampler):
        self.sampler = sampler

    def set_epoch(self, epoch: int) -> None:
        if self.sampler.shuffle:
            self.sampler.generator.manual_seed(self.sampler.seed * 100_003 + epoch)

    def __iter__(self):
        return iter(self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


class TeacherCallback(TrainerCallback):
    """The teacher's update after every optimizer step, and its state in every checkpoint."""

    def __init__(self, teacher: Teacher):
        self.teacher = teacher

    def on_step_end(self, args, state, control, **kwargs):
        self.teacher.update()

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            from safetensors.torch import save_file

            tensors = {k: v.detach().contiguous() for k, v in self.teacher.state_dict().items()}
            save_file(tensors, str(Path(args.output_dir) / f"{CHECKPOINT_PREFIX}{state.global_step}" / TEACHER_FILE))


def load_teacher(teacher: Teacher, checkpoint: Path) -> None:
    from safetensors.torch import load_file

    path = Path(checkpoint) / TEACHER_FILE
    if not path.is_file():
        raise UserError(f"cannot resume from {checkpoint}: it has no {TEACHER_FILE} (not written by engine trl)")
    teacher.load_state_dict(load_file(str(path)))


class RunLog(MetricsCallback):
    """metrics.jsonl every step (TRL's keys plus the native engine's names for the comparable ones), samples.jsonl,
    the progress bar and the NaN guard. `log` and `progress` are set by train_trl_sdft."""

    dropped_keys = _DROPPED_KEYS

    def __init__(self, batch_size: int, log_every: int, sample_count: int, checkpoint_dir: Path):
        super().__init__(None, None, "sdft (trl)", checkpoint_dir)
        self.batch_size, self.log_every, self.sample_count = batch_size, log_every, sample_count
        self._started, self._seconds, self._samples = 0.0, 0.0, []

    def on_step_begin(self, args, state, control, **kwargs):
        self._started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self._seconds = time.perf_counter() - self._started
        super().on_step_end(args, state, control, **kwargs)

    def on_self_distillation_batch_prepared(self, processing_class=None, prompt_ids=None, completion_ids=None, **kwargs):
        """A TRL event: a step's rollouts are sampled; keep a few as text for samples.jsonl."""
        decode = lambda ids: processing_class.batch_decode(ids[: self.sample_count], skip_special_tokens=True)  # noqa: E731
        self._samples = [{"prompt": p, "completion": c} for p, c in zip(decode(prompt_ids), decode(completion_ids))]

    def enrich(self, record: dict[str, Any], state) -> None:
        tokens = record.get("completions/mean_length", 0.0) * self.batch_size
        record.update(completion_tokens=record.get("completions/mean_length"), capped_share=record.get("completions/clipped_ratio"),
                      step_seconds=self._seconds, tokens_per_second=tokens / self._seconds if self._seconds else 0.0)

    def logged(self, state) -> None:
        if state.global_step % self.log_every == 0:
            self.log.samples(state.global_step, self._samples)
