"""Resumable checkpoints: student (trainable weights), teacher state, optimizer, scheduler, data position
and RNG states. Written to a temporary folder and renamed, so a checkpoint on disk is always whole."""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from sdft.errors import UserError
from sdft.files import refused_writes

PREFIX = "step-"


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(root: Path, step: int, model, teacher_state: dict, trainer_state: dict, keep: int) -> Path:
    """checkpoints/step-000050/{student,teacher}.safetensors + trainer.pt; keeps the newest `keep`."""
    tmp = begin_checkpoint(root, step)
    write_whole(root, step, lambda: (
        save_file(trainable_state(model), str(tmp / "student.safetensors")),
        save_file({k: v.detach().contiguous() for k, v in teacher_state.items()}, str(tmp / "teacher.safetensors")),
        torch.save(trainer_state, tmp / "trainer.pt")))
    return commit_checkpoint(root, step, keep)


def staging_dir(root: Path, step: int) -> Path:
    """Where a checkpoint is written before it is renamed into place (a hidden .tmp folder: never resumed from)."""
    return Path(root) / f".{PREFIX}{step:06d}.tmp"


def begin_checkpoint(root: Path, step: int) -> Path:
    tmp = staging_dir(root, step)
    shutil.rmtree(tmp, ignore_errors=True)
    with refused_writes(Path(root) / f"{PREFIX}{step:06d}"):
        tmp.mkdir(parents=True)
    return tmp


def write_whole(root: Path, step: int, write) -> None:
    """Run `write` (files into the staging folder); a refused write (disk full, read-only) gives the space back and
    stops with one line; the newest whole checkpoint stays."""
    try:
        with refused_writes(Path(root) / f"{PREFIX}{step:06d}"):
            write()
    except UserError:
        shutil.rmtree(staging_dir(root, step), ignore_errors=True)
        raise


def commit_checkpoint(root: Path, step: int, keep: int) -> Path:
    """Rename the staged checkpoint into place and keep the newest `keep`."""
    final = Path(root) / f"{PREFIX}{step:06d}"
    shutil.rmtree(final, ignore_errors=True)
    staging_dir(root, step).rename(final)
    for old in checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def checkpoints(root: Path) -> list[Path]:
    root = Path(root)
    found = [p for p in root.glob(f"{PREFIX}*") if p.is_dir()] if root.is_dir() else []
    return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]))


def latest_checkpoint(root: Path) -> Path:
    found = checkpoints(root)
    if not found:
        raise UserError(f"nothing to resume: no checkpoint in {root}")
    return found[-1]


def load_checkpoint(path: Path, model) -> tuple[dict, dict]:
    """Restore the student's trainable weights in place; return (teacher state, trainer state)."""
    student = _read(path, "student.safetensors", load_file)
    params = dict(model.named_parameters())
    misfits = student.keys() - params.keys() or {n for n, v in student.items() if v.shape != params[n].shape}
    if misfits:
        raise UserError(f"cannot resume from {path}: its student weights do not fit this model (e.g. "
                        f"'{sorted(misfits)[0]}'): it was saved with another model or lora settings; resume with the "
                        "run's own settings")
    with torch.no_grad():
        for name, value in student.items():
            params[name].copy_(value)
    teacher = _read(path, "teacher.safetensors", load_file)
    return teacher, read_trainer_state(path)


def read_trainer_state(path: Path) -> dict:
    """trainer.pt: step, optimizer (unless sharded), scheduler, data position, RNG states, the teacher's settings."""
    return _read(path, "trainer.pt", lambda file: torch.load(file, weights_only=False))  # our own file


def _read(checkpoint: Path, name: str, reader):
    """One file of a checkpoint. The loop writes checkpoints whole (a .tmp folder, then a rename), so a file that does
    not read back was damaged afterwards (a disk fault, an edit): one line naming it and the way on, not a traceback."""
    try:
        return reader(str(Path(checkpoint) / name))
    except Exception as err:  # safetensors, pickle and zip readers each raise their own types
        older = [c for c in checkpoints(Path(checkpoint).parent) if c != Path(checkpoint)]
        way_on = (f"delete {checkpoint} to resume from {older[-1]}" if older else
                  "start again in a new --output (no older checkpoint is left)")
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"cannot resume: {Path(checkpoint) / name} is damaged ({detail}); {way_on}") from err
