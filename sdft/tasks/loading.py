"""Rows from data: local JSONL / JSON / parquet files, `save_to_disk` folders, and hub datasets.

Every record is checked when it is loaded: a missing or non-text field names the file, the row and the
field, so a bad dataset fails in seconds, not an hour into a run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdft.errors import UserError
from sdft.tasks.spec import Row

ROW_FIELDS = ("prompt", "demonstration", "answer")


@dataclass(frozen=True)
class DataSource:
    """One split's data: a local `path`, or a hub dataset `hub` (with optional config `name`, `split`,
    and `revision` to pin it)."""

    path: str | None = None
    hub: str | None = None
    name: str | None = None
    split: str | None = None
    revision: str | None = None

    def describe(self) -> str:
        return self.path if self.path else f"hub:{self.hub}" + (f"[{self.split}]" if self.split else "")


def load_records(source: DataSource) -> list[dict[str, Any]]:
    """The raw records of one split, as dicts."""
    if source.hub:
        return _hub_records(source)
    path = Path(source.path)
    if not path.exists():
        raise UserError(f"data file '{path}' not found")
    if path.is_dir():
        return _disk_records(path, source.split)
    readers = {".jsonl": _jsonl_records, ".json": _json_records, ".parquet": _parquet_records}
    if path.suffix not in readers:
        raise UserError(f"{path}: unknown data format '{path.suffix}' (use .jsonl, .json, .parquet or a save_to_disk folder)")
    return readers[path.suffix](path)


def _jsonl_records(path: Path) -> list[dict[str, Any]]:
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise UserError(f"{path}: line {number} is not valid JSON ({err.msg})") from err
    return records


def _json_records(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from err
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    return data


def _parquet_records(path: Path) -> list[dict[str, Any]]:
    import datasets

    return list(datasets.load_dataset("parquet", data_files=str(path), split="train"))


def _disk_records(path: Path, split: str | None) -> list[dict[str, Any]]:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except FileNotFoundError as err:
        raise UserError(f"{path}: not a datasets save_to_disk folder ({err})") from err
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise UserError(f"{path}: name one of its splits with 'split:' (it has {', '.join(loaded)})")
        loaded = loaded[split]
    return list(loaded)


def _hub_records(source: DataSource) -> list[dict[str, Any]]:
    import datasets

    try:
        loaded = datasets.load_dataset(
            source.hub, source.name, split=source.split or "train", revision=source.revision
        )
    except Exception as err:  # offline, unknown id, gated: the datasets library raises many types
        raise UserError(f"could not load hub dataset '{source.hub}': {err}") from err
    return list(loaded)


def rows_from_records(
    records: list[dict[str, Any]], fields: dict[str, str], where: str
) -> list[Row]:
    """Rows from raw records; `fields` maps a Row field to the record key holding it."""
    rows = []
    for number, record in enumerate(records, start=1):
        if not isinstance(record, dict):
            raise UserError(f"{where}: row {number} is not a JSON object")
        values = {f: _text_field(record, f, fields.get(f, f), where, number) for f in ROW_FIELDS}
        unseen_key = fields.get("unseen", "unseen")
        unseen = record.get(unseen_key)
        rows.append(Row(**values, unseen=None if unseen is None else bool(unseen)))
    return rows


def _text_field(record: dict[str, Any], row_field: str, key: str, where: str, number: int) -> str:
    if key not in record or record[key] is None:
        mapped = f" (the row's {row_field})" if key != row_field else ""
        raise UserError(f"{where}: row {number} has no field '{key}'{mapped}; fix the data or the task's field mapping")
    value = record[key]
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)

