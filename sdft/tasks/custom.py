"""Custom tasks from a small YAML file: where the data is, which record keys hold the row fields, and the
scorer. Example (paths are relative to the YAML file):

    name: capitals
    version: "1"
    scorer: normalized            # a key of sdft.scoring.SCORERS
    system_prompt: null           # optional
    fields: {prompt: question, demonstration: response, answer: label}
    splits:
      train: data/train.jsonl
      test: {hub: org/capitals, name: default, split: test, revision: 0a1b2c3}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdft.config.mapping import from_mapping
from sdft.config.yamlfile import read_yaml_mapping
from sdft.errors import UserError
from sdft.scoring import get_scorer
from sdft.tasks.loading import DataSource, load_records, rows_from_records
from sdft.tasks.spec import TaskSpec


@dataclass
class CustomTaskFile:
    """The keys a custom task YAML may hold."""

    name: str
    scorer: str
    splits: dict[str, Any]
    """split name -> a path (relative to the YAML file) or {path|hub, name, split, revision}."""
    version: str = "1"
    system_prompt: str | None = None
    fields: dict[str, str] = field(default_factory=dict)
    """Row field (prompt, demonstration, answer, unseen) -> the record key that holds it."""
    kind: str = "task"
    description: str = ""


def read_custom_task_file(path: str | Path) -> CustomTaskFile:
    path = Path(path)
    data = read_yaml_mapping(path, "custom task file")
    for required in ("name", "scorer", "splits"):
        if required not in data:
            raise UserError(f"{path}: missing key '{required}'")
    spec = from_mapping(CustomTaskFile, data, str(path))
    get_scorer(spec.scorer)  # fail now, with a did-you-mean, not at scoring time
    return spec


def load_custom_task(path: str | Path) -> TaskSpec:
    """Read a custom task YAML and load and validate every split it names."""
    path = Path(path)
    spec = read_custom_task_file(path)
    splits = {}
    for split_name, raw in spec.splits.items():
        source = _data_source(raw, path, split_name)
        rows = rows_from_records(load_records(source), spec.fields, source.describe())
        splits[split_name] = rows
    return TaskSpec(
        name=spec.name,
        version=spec.version,
        source=str(path),
        scorer=spec.scorer,
        splits=splits,
        system_prompt=spec.system_prompt,
        kind=spec.kind,
        description=spec.description,
    )


def _data_source(raw: Any, task_file: Path, split_name: str) -> DataSource:
    if isinstance(raw, str):
        raw = {"path": raw}
    if not isinstance(raw, dict):
        raise UserError(f"{task_file}: splits.{split_name} must be a path or a mapping with 'path' or 'hub'")
    source = from_mapping(DataSource, raw, str(task_file), f"splits.{split_name}.")
    if bool(source.path) == bool(source.hub):
        raise UserError(f"{task_file}: splits.{split_name} needs exactly one of 'path' or 'hub'")
    if source.path and not Path(source.path).is_absolute():
        source = DataSource(**{**source.__dict__, "path": str(task_file.parent / source.path)})
    return source
