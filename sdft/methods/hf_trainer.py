"""What the engines built on transformers' Trainer (sft.py, trl_engine.py) share: its checkpoint folders
and the non-finite guard that runs in on_log, before that step's checkpoint is written."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from sdft.errors import UserError

CHECKPOINT_PREFIX = "checkpoint-"  # transformers' folder name: checkpoints/checkpoint-<step>


def latest_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The newest checkpoints/checkpoint-<step> folder, or None."""
    root = Path(checkpoint_dir)
    found = [p for p in root.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir() and re.fullmatch(r"checkpoint-\d+", p.name)]
    return max(found, key=checkpoint_step) if found else None


def checkpoint_step(path: Path) -> int:
    return int(Path(path).name[len(CHECKPOINT_PREFIX) :])


def require_finite(record: dict[str, Any], step: int, checkpoint_dir: Path) -> None:
    """Stop on a nan/inf loss or gradient norm, naming the last good checkpoint."""
    for key, name in (("loss", "loss"), ("grad_norm", "gradient norm")):
        value = record.get(key)
        if value is not None and not math.isfinite(float(value)):
            last = latest_checkpoint(checkpoint_dir)
            where = f"the last good checkpoint is {last}" if last else "no checkpoint was saved yet"
            raise UserError(f"the {name} became {value} at step {step}; {where}; try a lower train.learning_rate")
