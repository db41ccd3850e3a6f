"""The hand-off to a trainer: one stage of training, and the model prepared for it (LoRA or full)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sdft.config import Config, LoraConfig
from sdft.errors import UserError
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
        rows = self.task.split(self.cfg.train.split)
        return rows[: self.cfg.train.max_rows] if self.cfg.train.max_rows else rows


def add_lora(model, lora: LoraConfig):
    """Wrap the model with fresh LoRA adapters (peft); the base weights stay frozen."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    peft_config = PeftLoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules), task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, peft_config)
    except ValueError as err:  # e.g. no module matches target_modules
        raise UserError(f"lora.target_modules {lora.target_modules} do not fit this model: {err}") from err
