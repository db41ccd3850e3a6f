"""What every paper-task loader shares: reading a source's records (local files in the published schema,
or the hub through `datasets.load_dataset` with a pinned revision), checked field access that names the
file and the row, and seeded splitting."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from sdft.config import TaskSourceConfig
from sdft.errors import UserError
from sdft.tasks.loading import DataSource, load_records

PAPER_VERSION = "1"
"""Bump a task's version (in its module) when its prompts, parsing or metric change."""


def local_records(task: str, src: TaskSourceConfig, role: str, default: str) -> tuple[list[dict], str]:
    """The records of one file of a local source: `files[role]` (or the task's default name) under `path`."""
    if not src.path:
        raise UserError(f"task_sources.{task}: source 'local' needs 'path', the folder holding '{default}'")
    path = Path(src.path) / src.files.get(role, default)
    if not path.exists():
        raise UserError(f"task_sources.{task}: '{path}' not found; put the task's {role} file there "
                        f"or name it with task_sources.{task}.files.{role}")
    return _as_dicts(load_records(DataSource(path=str(path))), str(path)), str(path)


def hub_records(hub: str, name: str | None, split: str, revision: str | None) -> tuple[list[dict], str]:
    """The records of one hub split, pinned to `revision` when one is known."""
    source = DataSource(hub=hub, name=name, split=split, revision=revision)
    where = f"hub:{hub}" + (f"/{name}" if name else "") + f"[{split}]" + (f"@{revision[:7]}" if revision else "")
    return _as_dicts(load_records(source), where), where


def _as_dicts(records: list, where: str) -> list[dict]:
    if not records:
        raise UserError(f"{where}: holds no rows")
    for number, record in enumerate(records, start=1):
        if not isinstance(record, dict):
            raise UserError(f"{where}: row {number} is not a JSON object")
    return records


def field_of(record: dict, key: str, where: str, number: int, kind: type | tuple[type, ...] = str) -> Any:
    """record[key], which must be present, not null, and of `kind`; otherwise one line naming the row."""
    if record.get(key) is None:
        raise UserError(f"{where}: row {number} has no field '{key}' (present: {', '.join(sorted(record))})")
    value = record[key]
    if not isinstance(value, kind):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise UserError(f"{where}: row {number} field '{key}' must be {names}, got {type(value).__name__}")
    return value


def text_of(record: dict, key: str, where: str, number: int) -> str:
    """A non-empty text field."""
    value = field_of(record, key, where, number, str)
    if not value.strip():
        raise UserError(f"{where}: row {number} field '{key}' is empty")
    return value


def seeded_split(items: list, fractions: dict[str, float], seed: int) -> dict[str, list]:
    """Shuffle with `seed`, then cut into consecutive parts of the given fractions (the last takes the rest)."""
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    parts, start = {}, 0
    names = list(fractions)
    for index, name in enumerate(names):
        end = len(order) if index == len(names) - 1 else start + int(len(order) * fractions[name])
        parts[name] = [items[i] for i in order[start:end]]
        start = end
    return parts


def seeded_sample(items: list, size: int, seed: int) -> list:
    """`size` items drawn without replacement with `seed` (all of them, shuffled, when there are fewer)."""
    rng = random.Random(seed)
    return rng.sample(items, min(size, len(items)))


def describe(src: TaskSourceConfig, where: list[str]) -> str:
    """The TaskSpec.source line: where the rows came from."""
    return ", ".join(dict.fromkeys(where)) if where else src.source
