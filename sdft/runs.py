"""Run folders: where every command that trains or evaluates writes, atomically.

runs/<name>/config.yaml   the resolved config, every default written out
runs/<name>/env.json      package versions, git hash, device, seed
runs/<name>/results.json  the command's scores

The atomic writers live in sdft/files.py (stdlib only, so leaf modules can use them too).
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from sdft.config import Config, config_to_dict
from sdft.errors import UserError
from sdft.files import atomic_write_json, atomic_write_text  # noqa: F401  (the commands import them from here)

_PACKAGES = ("sdft", "torch", "transformers", "peft", "trl", "accelerate", "datasets", "tokenizers")


CONFIG_FILE, ENV_FILE = "config.yaml", "env.json"


def read_json(path: Path) -> Any:
    """A JSON file sdft wrote; a damaged one (edited, or a disk fault: sdft's own writes are atomic) is one line."""
    try:
        return json.loads(Path(path).read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path} is damaged (not JSON: {err}); restore it, or delete it to have it recomputed "
                        "where it is a cache (base.json, row.json, eval_before.json)") from None


def write_run_header(run_dir: Path, cfg: Config, command: str, device: str, resumed: bool = False) -> None:
    """env.json, then config.yaml: enough to know later exactly what ran where. env.json is written first because it
    marks the folder as a run (sdft/claim.py). A resumed run keeps the first env.json and adds itself to its
    "resumed" list; config.yaml then records the settings that may differ on resume (sdft/config/compare.py)."""
    env, now = Path(run_dir) / ENV_FILE, environment(command, device, cfg.seed)
    if resumed and env.is_file():
        first = read_json(env)
        now = {**first, "resumed": [*first.get("resumed", []), now]}
    atomic_write_json(env, now)
    atomic_write_text(Path(run_dir) / CONFIG_FILE, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def environment(command: str, device: str, seed: int) -> dict[str, Any]:
    return {
        "command": command,
        "argv": sys.argv,
        "time": datetime.now().isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {name: _version(name) for name in _PACKAGES},
        "git": _git_hash(),
        "device": device,
        "seed": seed,
    }


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _git_hash() -> str | None:
    """The commit of the sdft source tree (with '+dirty' for local changes); None outside a checkout."""
    source = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=source, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


LINEAGE_FILE = "lineage.json"


def lineage_of(model: str) -> dict | None:
    """The lineage of a trained model: {"base_model": .., "stages": [{"task", "method", "run"}, ..]}.
    `model` may be a run folder or its model/ (merged/) folder; None for a model sdft did not train."""
    path = Path(model)
    for folder in (path, path.parent):
        if (folder / LINEAGE_FILE).is_file():
            return read_json(folder / LINEAGE_FILE)
    return None


def write_lineage(run_dir: Path, start_model: str, task: str, method: str) -> dict:
    """This run's lineage: the lineage of the model it started from, plus this stage."""
    parent = lineage_of(start_model) or {"base_model": start_model, "stages": []}
    lineage = {"base_model": parent["base_model"],
               "stages": [*parent["stages"], {"task": task, "method": method, "run": str(Path(run_dir).resolve())}]}
    atomic_write_json(Path(run_dir) / LINEAGE_FILE, lineage)
    return lineage
