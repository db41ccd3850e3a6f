"""sdft/files.py: atomic writes get the file mode a plain open() gives; the JSONL caches survive a killed writer."""

from __future__ import annotations

import json
import os
import stat

import pytest

from sdft.errors import UserError
from sdft.files import append_jsonl, atomic_write_bytes, atomic_write_json, read_jsonl_records


@pytest.fixture(params=[0o022, 0o077], ids=["umask022", "umask077"])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def mode_of_plain_open(folder) -> int:
    with open(folder / "plain", "w") as handle:
        handle.write("x")
    return stat.S_IMODE((folder / "plain").stat().st_mode)


def test_an_atomic_json_has_the_mode_of_a_plain_open(umask, tmp_path):
    atomic_write_json(tmp_path / "results.json", {"a": 1})
    assert stat.S_IMODE((tmp_path / "results.json").stat().st_mode) == mode_of_plain_open(tmp_path) == 0o666 & ~umask
    assert json.loads((tmp_path / "results.json").read_text()) == {"a": 1}


def test_an_atomic_write_replaces_the_file_and_leaves_no_temp_file(tmp_path):
    atomic_write_bytes(tmp_path / "sub" / "x.bin", b"old")
    atomic_write_bytes(tmp_path / "sub" / "x.bin", b"new")
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["x.bin"]
    assert (tmp_path / "sub" / "x.bin").read_bytes() == b"new"


def test_a_torn_last_line_is_skipped_and_cut_off_by_the_next_append(tmp_path):
    path = tmp_path / "cache.jsonl"
    assert read_jsonl_records(path) == []  # no file yet
    append_jsonl(path, [{"row": 0}, {"row": 1}])
    with path.open("a") as handle:
        handle.write('{"row": 2, "tru')  # a writer killed mid-line
    assert read_jsonl_records(path) == [{"row": 0}, {"row": 1}]
    append_jsonl(path, [{"row": 2}])
    assert read_jsonl_records(path) == [{"row": 0}, {"row": 1}, {"row": 2}]
    assert path.read_text().endswith('{"row": 2}\n')


def test_a_file_that_is_one_torn_line_is_emptied_by_the_next_append(tmp_path):
    path = tmp_path / "cache.jsonl"
    path.write_text('{"row": 0, "tr')
    assert read_jsonl_records(path) == []
    append_jsonl(path, [{"row": 0}])
    assert path.read_text() == '{"row": 0}\n'


def test_a_damaged_line_before_the_last_is_named(tmp_path):
    path = tmp_path / "cache.jsonl"
    path.write_text('{"row": 0}\nnot json\n{"row": 2}\n')
    with pytest.raises(UserError, match=r"cache.jsonl, line 2: not a JSON record"):
        read_jsonl_records(path)
