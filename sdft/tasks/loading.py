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


def _text_of(path: Path) -> str:
    """The file's text; a binary file (or another encoding) is one line naming the file, not a traceback."""
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not a text file (byte {err.start} is not UTF-8); is it the data file you "
                        "meant?") from None


def _jsonl_records(path: Path) -> list[dict[str, Any]]:
    records = []
    for number, line in enumerate(_text_of(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise UserError(f"{path}: line {number} is not valid JSON ({err.msg})") from err
    return records


def _json_records(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(_text_of(path))
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from err
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    return data


def _parquet_records(path: Path) -> list[dict[str, Any]]:
    # pyarrow directly: datasets.load_dataset would copy the file into its cache first
    import pyarrow
    import pyarrow.parquet

    try:
        return pyarrow.parquet.read_table(path).to_pylist()
    except (pyarrow.ArrowException, OSError) as err:
        raise UserError(f"{path}: not a readable parquet file ({_first_line(err)})") from None


def _disk_records(path: Path, split: str | None) -> list[dict[str, Any]]:
    import datasets
    import pyarrow

    try:
        loaded = datasets.load_from_disk(str(path))
    except (OSError, ValueError, pyarrow.ArrowException) as err:  # FileNotFoundError, damaged arrow or json files
        raise UserError(f"{path}: not a readable datasets save_to_disk folder ({_first_line(err)})") from None
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise UserError(f"{path}: name one of its splits with 'split:' (it has {', '.join(loaded)})")
        loaded = loaded[split]
    return list(loaded)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


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
    """Rows from raw records; `fields` maps a Row field to the record key holding it. A split with no records is
    an error here, where the file is known (later it would read as "no row fits the length caps", or score 0 of 0)."""
    if not records:
        raise UserError(f"{where}: holds no rows; a split needs at least one")
    rows = []
    for number, record in enumerate(records, start=1):
        if not isinstance(record, dict):
            raise UserError(f"{where}: row {number} is not a JSON object")
        values = {f: _text_field(record, f, fields.get(f, f), where, number) for f in ROW_FIELDS}
        unseen = _unseen_field(record, fields.get("unseen", "unseen"), where, number)
        rows.append(Row(**values, unseen=unseen))
    return rows


def _text_field(record: dict[str, Any], row_field: str, key: str, where: str, number: int) -> str:
    """A non-blank string: a number, list or mapping is refused, not turned into text (the scorer would compare
    '42' or '["a"]' with the model's answer, which is rarely what was meant)."""
    mapped = f" (the row's {row_field})" if key != row_field else ""
    if key not in record or record[key] is None:
        raise UserError(f"{where}: row {number} has no field '{key}'{mapped}; fix the data or the task's field mapping")
    value = record[key]
    if not isinstance(value, str):
        shown = json.dumps(value)
        shown = shown if len(shown) <= 40 else shown[:37] + "..."
        raise UserError(f"{where}: row {number} field '{key}'{mapped} must be text, got {_kind(value)} {shown}; "
                        "write it as a JSON string")
    if not value.strip():
        raise UserError(f"{where}: row {number} field '{key}'{mapped} is empty")
    return value


def _unseen_field(record: dict[str, Any], key: str, where: str, number: int) -> bool | None:
    value = record.get(key)
    if value is None:
        return None
    if value not in (True, False) or isinstance(value, (str, float)):  # bool("no") would be True; 0 and 1 are fine
        raise UserError(f"{where}: row {number} field '{key}' must be true, false or null, got {json.dumps(value)}")
    return bool(value)


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    return {list: "a list", dict: "a mapping"}.get(type(value), type(value).__name__)
