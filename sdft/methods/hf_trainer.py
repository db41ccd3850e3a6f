"""What the engines built on transformers' Trainer (hf_session.py for SFT/DFT/CPT, trl_engine.py) share: its
checkpoint folders and where to resume, and the metrics callback (metrics.jsonl, the progress bar, and the
non-finite guard that runs in on_log, before that step's checkpoint is written)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from sdft.errors import UserError

CHECKPOINT_PREFIX = "checkpoint-"  # transformers' folder name: checkpoints/checkpoint-<step>
TRAINER_STATE_FILE = "trainer_state.json"  # the last file the Trainer writes into a checkpoint


def latest_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The newest whole checkpoints/checkpoint-<step> folder, or None. The Trainer writes a checkpoint in place, its
    trainer_state.json last: a folder whose state does not read back was cut off by a kill and is passed over."""
    root = Path(checkpoint_dir)
    found = [p for p in root.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir() and re.fullmatch(r"checkpoint-\d+", p.name)
             and _whole(p)]
    return max(found, key=checkpoint_step) if found else None


def _whole(checkpoint: Path) -> bool:
    try:
        json.loads((checkpoint / TRAINER_STATE_FILE).read_text())
    except (OSError, ValueError):
        return False
    return True


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


def resume_checkpoint(stage) -> Path | None:
    """The checkpoint a resumed stage continues from (None for a fresh run); resuming a folder without one is an
    error that says so."""
    if not stage.resume:
        return None
    found = latest_checkpoint(stage.checkpoint_dir)
    if found is None:
        raise UserError(f"nothing to resume in {stage.checkpoint_dir}: it holds no {CHECKPOINT_PREFIX}<step> folder")
    from sdft.console import err_console

    err_console.print(f"resuming from {found}")
    return found


class MetricsCallback(TrainerCallback):
    """metrics.jsonl lines, the progress bar and the NaN guard for a transformers Trainer run. Subclasses add their
    engine's own keys in `enrich`; `dropped_keys` are the Trainer's keys not worth a column."""

    dropped_keys: frozenset[str] | set[str] = frozenset()

    def __init__(self, log, progress, label: str, checkpoint_dir: Path):
        self.log, self.progress, self.label, self.checkpoint_dir = log, progress, label, Path(checkpoint_dir)
        self.last: dict[str, Any] = {}
        self._bar = None

    def on_train_begin(self, args, state, control, **kwargs):
        if self.progress is not None:
            self._bar = self.progress.add_task(self.label, total=state.max_steps, completed=state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        if self._bar is not None:
            self.progress.update(self._bar, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs:  # the end-of-training summary
            return
        record = {key: value for key, value in logs.items() if key not in self.dropped_keys}
        self.enrich(record, state)
        self.last = record
        if self.log is not None and state.is_world_process_zero:
            self.log.log(state.global_step, record)
            self.logged(state)
        if self._bar is not None:
            self.progress.update(self._bar, description=f"{self.label} loss {record['loss']:.4f}")
        require_finite(record, state.global_step, self.checkpoint_dir)

    def enrich(self, record: dict[str, Any], state) -> None:
        """Add the engine's own keys to a metrics line (in place)."""

    def logged(self, state) -> None:
        """Called after a metrics line was written (samples.jsonl, ...)."""
