"""How sdft writes and reads its files: atomic whole-file writes and append-only JSONL records.

One writer for every run file (results.json, report.md, the PNG plots, config.yaml, ...): a temporary file in
the same folder, fsync, then a rename, so a reader (or a killed run) never sees half a file. Every file gets
the mode a plain open() would give it (0o666 less the umask): the temporary file is created with os.open and
mode 0o666, so the kernel applies the umask exactly as for any other file, with no umask juggling.

One reader and one appender for the JSONL caches (the evaluation cache, the judge's verdicts). A writer
killed mid-append leaves at most a torn last line: the reader skips it, the next append cuts it off first.
Any other line that is not JSON is real damage and is named (file and line), never silently skipped.

A write the system refuses (disk full, read-only filesystem, no permission) is one UserError line naming the path,
for these writers and for any other writer wrapped in `refused_writes` (checkpoints, saved models).

Stdlib only (and sdft.errors): judge.py, a leaf the config imports, uses it, so it must not import the
config; runs.py re-exports the writers for the commands."""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sdft.errors import UserError


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write via a temporary file in the same folder and a rename: readers never see half a file. A write the
    system refuses (disk full, read-only, no permission) leaves the old file as it was and is one UserError line."""
    path = Path(path)
    with refused_writes(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp, fd = _new_temp_file(path)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def write_folder_whole(directory: str | Path, write: Callable[[Path], Any]) -> Path:
    """`write(folder)` into a hidden folder beside `directory`, then swap it in: a kill leaves the old folder or
    none, never half of one (a saved model: a resumed stage writes it again)."""
    directory = Path(directory)
    tmp = directory.with_name(f".{directory.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with refused_writes(directory):
            write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(directory, ignore_errors=True)
    tmp.rename(directory)
    return directory


_REFUSALS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
             errno.EROFS: "the filesystem is read-only", errno.EACCES: "permission denied",
             errno.EPERM: "permission denied"}
"""The errors of a write the system refused: the user's to fix, so one line, never a traceback."""


@contextmanager
def refused_writes(path: Path):
    """Turn a refused write under `path` into one line naming it (other errors pass through as they are)."""
    try:
        yield
    except Exception as err:
        reason = refusal(path, err)
        if reason is None:
            raise
        raise refused_error(path, reason) from err


def refused_error(path: str | Path, reason: str) -> UserError:
    return UserError(f"cannot write {path}: {reason}; free space or fix the folder, then run the command again "
                     "(what was finished is kept; `sdft train` continues with --resume)")


def refused_oserror(err: OSError) -> UserError | None:
    """The one line for an OSError of a refused write raised by a library's own writer; None for any other."""
    if err.errno not in _REFUSALS:
        return None
    return refused_error(err.filename or "a file", _REFUSALS[err.errno])


def refusal(path: Path, err: BaseException) -> str | None:
    """Why the system refused a write, or None when `err` is not about the disk. torch.save words a full disk as
    a RuntimeError ('unexpected pos'), safetensors as its own error: for those the disk itself is asked."""
    if isinstance(err, OSError) and err.errno in _REFUSALS:
        return _REFUSALS[err.errno]
    if "No space left" in str(err) or "os error 28" in str(err):
        return _REFUSALS[errno.ENOSPC]
    try:
        existing = next(p for p in (Path(path), *Path(path).parents) if p.exists())
        free = shutil.disk_usage(existing).free
    except (OSError, StopIteration):
        return None
    return _REFUSALS[errno.ENOSPC] if free < 1 << 20 else None


def _new_temp_file(path: Path) -> tuple[Path, int]:
    """A fresh hidden file beside path, opened for writing with the mode open() would give (0o666 & ~umask).
    (tempfile.mkstemp would make it 0o600.) O_EXCL: never reuse a name another writer holds."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_jsonl_records(path: str | Path) -> list[Any]:
    """The JSON value of every line of a JSONL file ([] when there is no file). An unparseable last line is
    the torn write of a killed run and is skipped; an unparseable line before it is a UserError naming it."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if number == len(lines):
                break
            raise UserError(f"{path}, line {number}: not a JSON record ({err.msg}); only the last line may be cut "
                            "off by a killed run. Repair the line or delete the file (a cache is recomputed)") from None
    return records


def append_jsonl(path: str | Path, records: list[Any]) -> None:
    """Append one line per record, flushed and fsynced, after cutting off a killed writer's torn last line
    (appending to it would glue the first new record onto it). One writer per file at a time."""
    path = Path(path)
    with refused_writes(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a+b") as handle:  # a+: writes always go to the end, and the tail can be read
            _cut_torn_tail(handle)
            handle.write("".join(json.dumps(r) + "\n" for r in records).encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())


def _cut_torn_tail(handle, block: int = 65536) -> None:
    """Truncate the file to just after its last newline: every finished append ends with one."""
    end = pos = handle.seek(0, os.SEEK_END)
    keep = 0
    while pos > 0:
        start = max(0, pos - block)
        handle.seek(start)
        newline = handle.read(pos - start).rfind(b"\n")
        if newline >= 0:
            keep = start + newline + 1
            break
        pos = start
    if keep < end:
        handle.truncate(keep)
