"""What every trainer shares: the prompt stream, optimizer and schedule, the metrics log, and saving the
trained model. Kept out of the training loops so each loop reads as the method it implements."""

from __future__ import annotations

import json
import math
import random
import signal
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sdft.config import TrainConfig
from sdft.console import err_console
from sdft.errors import UserError
from sdft.files import atomic_write_text, read_jsonl_records, write_folder_whole
from sdft.tasks.spec import Row

METRICS_FILE = "metrics.jsonl"
SAMPLES_FILE = "samples.jsonl"


class PromptStream:
    """Rows in a seeded random order, epoch after epoch; its position is part of a checkpoint, so a
    resumed run sees exactly the rows an uninterrupted run would have seen."""

    def __init__(self, rows: list[Row], seed: int):
        if not rows:
            raise UserError("the training split has no rows")
        self.rows, self.seed = rows, seed
        self.epoch, self.position = 0, 0
        self._order = self._shuffled(0)

    def _shuffled(self, epoch: int) -> list[int]:
        order = list(range(len(self.rows)))
        random.Random(self.seed * 100_003 + epoch).shuffle(order)
        return order

    def next_batch(self, size: int) -> list[Row]:
        batch = []
        while len(batch) < size:
            if self.position == len(self._order):
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._shuffled(self.epoch)
            batch.append(self.rows[self._order[self.position]])
            self.position += 1
        return batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = state["epoch"], state["position"]
        self._order = self._shuffled(self.epoch)


def per_device_batch_size(train: TrainConfig, processes: int) -> int:
    """train.batch_size counts prompts per optimizer step, across gradient accumulation and processes: the prompts
    of one process in one micro-batch. A batch that does not split evenly is one clear error."""
    per_device, remainder = divmod(train.batch_size, train.gradient_accumulation * processes)
    if remainder or per_device < 1:
        raise UserError(f"train.batch_size={train.batch_size} must split evenly over train.gradient_accumulation="
                        f"{train.gradient_accumulation} x {processes} processes")
    return per_device


def require_same_device(model_device: torch.device, trainer_device: torch.device) -> None:
    """The Trainer-based engines train on accelerate's device; a model placed elsewhere is refused, not moved."""
    if model_device.type != trainer_device.type or model_device.index not in (None, trainer_device.index):
        raise UserError(f"training runs on {trainer_device} (accelerate's device) but model.device is {model_device}; "
                        "use CUDA_VISIBLE_DEVICES to pick the GPU")


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(trainable_parameters(model), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up, then cosine decay to 0 over the remaining steps (or constant, or linear decay to 0)."""

    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / (cfg.warmup_steps + 1)
        if cfg.lr_schedule == "constant":
            return 1.0
        progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        if cfg.lr_schedule == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class MetricsLog:
    """metrics.jsonl: one JSON object per logged step, flushed as written. On resume, lines past the
    checkpoint's step are dropped so the file matches an uninterrupted run."""

    def __init__(self, run_dir: Path, resume_step: int | None = None, report_to: list[str] | None = None):
        self.path = Path(run_dir) / METRICS_FILE
        self.samples_path = Path(run_dir) / SAMPLES_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for path in (self.path, self.samples_path):
            _truncate_after(path, resume_step)
        self._trackers = [_tracker(name, run_dir) for name in report_to or []]

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        record = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        for tracker in self._trackers:
            tracker(step, record)

    def samples(self, step: int, samples: list[dict[str, Any]]) -> None:
        with self.samples_path.open("a") as handle:
            for sample in samples:
                handle.write(json.dumps({"step": step, **sample}) + "\n")


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, torch.Tensor) else value


def _truncate_after(path: Path, step: int | None) -> None:
    """Keep the lines up to `step` (none when starting over); the torn last line of a killed run is dropped."""
    if not path.exists():
        return
    if step is None:
        path.unlink()
        return
    kept = [record for record in read_jsonl_records(path) if record["step"] <= step]
    atomic_write_text(path, "".join(json.dumps(record) + "\n" for record in kept))


def _tracker(name: str, run_dir: Path):
    """A callable (step, record) for tensorboard or wandb; a clear error when the package is missing."""
    try:
        if name == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(Path(run_dir) / "tensorboard"))
            return lambda step, record: [writer.add_scalar(k, v, step) for k, v in record.items()
                                         if isinstance(v, (int, float)) and k != "step"]
        import wandb

        run = wandb.init(dir=str(run_dir), config={"run_dir": str(run_dir)})
        return lambda step, record: run.log(record, step=step)
    except ImportError as err:
        raise UserError(f"train.report_to names '{name}' but it is not installed: pip install {name}") from err


@dataclass
class StageResult:
    """What a trainer hands back: how far it got and its last logged metrics."""

    steps: int
    metrics: dict[str, Any]
    model_dir: Path


def save_model(model: torch.nn.Module, tokenizer, directory: Path) -> Path:
    """The trained model in Hugging Face format (safetensors); a LoRA model saves only its adapter, which
    records the base model's path."""
    return write_folder_whole(directory, lambda tmp: (model.save_pretrained(str(tmp), safe_serialization=True),
                                                      tokenizer.save_pretrained(str(tmp))))


@contextmanager
def graceful_interrupt():
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
