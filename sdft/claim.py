"""Who may write into a run folder, decided before anything is written there: the one guard for output folders and
the one for resume. Every command that writes a run folder claims it here first.

- A new run needs a folder that does not exist or is empty: --output, or <output_root>/<timestamp>-<command> (with
  -2, -3, ... when that name is taken). A folder holding an earlier run is refused, so a run that fails can never
  mix its config.yaml and env.json with an earlier run's results.json; a folder holding anything else is refused
  too (sdft never writes among a user's own files). The one exception: the header alone (env.json, config.yaml)
  of an attempt of the same command that stopped before doing anything, which holds nothing to lose.
- `sdft train --resume` continues a folder holding a train run, under a config that differs from its config.yaml
  in nothing that changes a result (sdft/config/compare.py names every key that does).
- `sdft sequence` continues its folder the same way; other methods or seeds may join (they add chains).
- A path that is a file, or a folder that cannot be written (read-only, no permission), is refused up front.

A run folder is marked by env.json, the first file a run writes (runs.write_run_header); its `command` says which
command wrote it. A folder with env.json but no config.yaml was killed before anything ran under its config.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sdft.config import Config, load_config
from sdft.config.compare import SEQUENCE_CHAINS, describe_differences, result_differences
from sdft.errors import UserError
from sdft.runs import CONFIG_FILE, ENV_FILE, read_json


@dataclass(frozen=True)
class Claim:
    run_dir: Path
    resuming: bool
    """The folder holds this command's earlier run, which continues (env.json is kept; the resume is added)."""


def claim_new(output: str | Path | None, command: str, cfg: Config) -> Claim:
    """A folder for a new run: --output if it does not exist or is empty, else a fresh default name."""
    run_dir = Path(output) if output is not None else _fresh_default(Path(cfg.output_root), command)
    _require_writable(run_dir)
    _require_cache_writable(cfg)
    if _entries(run_dir) and not _only_a_header(run_dir, command):
        raise UserError(_occupied(run_dir, command))
    return Claim(run_dir, resuming=False)


def claim_resume(output: str | Path, command: str, cfg: Config) -> Claim:
    """`command`'s earlier run in `output`, to be continued under `cfg`."""
    run_dir = Path(output)
    _require_writable(run_dir)
    _require_cache_writable(cfg)
    earlier = earlier_command(run_dir)
    if earlier != command:
        held = f"holds a `sdft {_typed(earlier)}` run" if earlier else ("does not exist" if not run_dir.exists() else
                                                                "holds no sdft run (no env.json)")
        raise UserError(f"nothing to resume: {run_dir} {held}; --resume continues a folder written by `sdft {command}`")
    _require_same_results(run_dir, cfg, ())
    return Claim(run_dir, resuming=True)


def claim_continuing(output: str | Path | None, command: str, cfg: Config) -> Claim:
    """For commands whose rerun on the same folder continues (`sdft ttt`): the earlier run of `command` in `output`
    under a config that changes no result, else a new folder."""
    if output is not None and earlier_command(Path(output)) == command:
        return claim_resume(output, command, cfg)
    return claim_new(output, command, cfg)


def claim_sequence(run_dir: Path, cfg: Config) -> Claim:
    """A sequence folder: new, or an earlier sequence whose config differs at most in its chains."""
    _require_writable(run_dir)
    _require_cache_writable(cfg)
    if not _entries(run_dir):
        return Claim(run_dir, resuming=False)
    if earlier_command(run_dir) != "sequence":
        raise UserError(_occupied(run_dir, "sequence"))
    _require_same_results(run_dir, cfg, SEQUENCE_CHAINS)
    return Claim(run_dir, resuming=True)


def earlier_command(run_dir: Path) -> str | None:
    """The command that wrote the run in `run_dir` (env.json), None when there is none."""
    env = Path(run_dir) / ENV_FILE
    return read_json(env).get("command") if env.is_file() else None


def _require_same_results(run_dir: Path, cfg: Config, also_allowed: tuple[str, ...]) -> None:
    stored = Path(run_dir) / CONFIG_FILE
    if not stored.is_file():
        return  # killed before its config was written: nothing ran under it
    differences = result_differences(load_config(stored), cfg, also_allowed)
    if differences:
        raise UserError(f"cannot continue the run in {run_dir}: this config differs from its config.yaml in "
                        f"{describe_differences(differences)}, which change the result; run with its own settings, "
                        "or pass another --output")


def _only_a_header(run_dir: Path, command: str) -> bool:
    """An attempt of the same command that stopped before it finished anything (only env.json and config.yaml were
    written, e.g. an evaluation whose model did not load, or whose disk was full): nothing in it can be lost, so it is
    taken over."""
    names = {p.name for p in _entries(run_dir) if not (p.is_dir() and not any(p.iterdir()))}  # empty folders: nothing
    return names <= {ENV_FILE, CONFIG_FILE} and earlier_command(run_dir) == command


def _occupied(run_dir: Path, command: str) -> str:
    earlier = earlier_command(run_dir)
    if earlier is None:
        names = sorted(p.name for p in _entries(run_dir))
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        return f"{run_dir} is not empty ({shown}) and holds no sdft run; a run needs a new or empty folder: pass another --output"
    resume = "pass --resume to continue it, or " if earlier == command == "train" else ""
    return f"{run_dir} already holds a `sdft {_typed(earlier)}` run; {resume}pass another --output (or delete the folder)"


def _typed(command: str) -> str:
    """What the user typed for the command env.json records."""
    return {"eval-prior": "eval --prior-tasks", "sequence-stage": "sequence` stage (not a `sdft sequence"}.get(command, command)


def _entries(run_dir: Path) -> list[Path]:
    return list(run_dir.iterdir()) if run_dir.is_dir() else []


def _require_writable(folder: Path, what: str = "the run folder", fix: str = "--output") -> None:
    """The folder, or the nearest folder above it that exists, can be written: checked without writing."""
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{what} '{folder}' is a file; name a folder ({fix})")
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"cannot create {what} '{folder}': '{existing}' is a file ({fix})")
    if not os.access(existing, os.W_OK | os.X_OK):  # also False on a read-only filesystem, even for root
        raise UserError(f"cannot write {what} '{folder}': '{existing}' is read-only or not yours; "
                        f"name a folder you can write ({fix})")


def _require_cache_writable(cfg: Config) -> None:
    """The evaluation and judge caches live under output_root: a run that could not write them would fail after its
    model loaded, so it is refused here instead."""
    if cfg.eval.cache or cfg.eval.judge.backend != "none":
        _require_writable(Path(cfg.output_root), "output_root", "set output_root, or eval.cache=false")


def _fresh_default(root: Path, command: str) -> Path:
    """<root>/<timestamp>-<command>, with -2, -3, ... when a run of the same second has it."""
    base = root / f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{command}"
    run_dir, n = base, 1
    while run_dir.exists():
        n += 1
        run_dir = base.with_name(f"{base.name}-{n}")
    return run_dir
