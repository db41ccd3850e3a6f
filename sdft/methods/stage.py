"""The hand-off to a trainer: one stage of training, and the model prepared for it (LoRA or full)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sdft.config import Config
from sdft.models import LoadedModel
from sdft.tasks.spec import Row, TaskSpec


@dataclass
class Stage:
    """Everything a trainer needs. `loaded.model` is already wrapped with LoRA when cfg.lora.enabled."""

    cfg: Config
    loaded: LoadedModel
    task: TaskSpec
    run_dir: Path
    resume: bool = False

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def model_dir(self) -> Path:
        return self.run_dir / "model"

    def train_rows(self) -> list[Row]:
        return self.task.rows(self.cfg.train.split, self.cfg.train.max_rows)

