"""The hand-off to a trainer: one stage of training, and the model prepared for it (LoRA or full)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sdft.config import Config
from sdft.models import LoadedModel
from sdft.tasks.spec import Row, TaskSpec

CHECKPOINT_DIR = "checkpoints"


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
        return self.run_dir / CHECKPOINT_DIR

    @property
    def model_dir(self) -> Path:
        return self.run_dir / "model"

    def train_rows(self) -> list[Row]:
        return self.task.rows(self.cfg.train.split, self.cfg.train.max_rows)



def holds_checkpoint(checkpoint_dir: Path) -> bool:
    """Whether a stage left a whole checkpoint to resume from, of either engine (the native loop's step-N, the
    Trainer's checkpoint-N). A write that a kill cut off does not count: the native loop writes a hidden .tmp folder
    and renames it, and a Trainer checkpoint counts once its trainer_state.json (written last) reads back."""
    from sdft.methods import checkpoint as native
    from sdft.methods.hf_trainer import latest_checkpoint

    return bool(native.checkpoints(checkpoint_dir)) or latest_checkpoint(checkpoint_dir) is not None
