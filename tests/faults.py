"""What the fault suite (tests/test_faults*.py) shares: a small world to break (a tiny model, a custom task, a config),
the CLI run as a user runs it (in this process, or as a separate process that can be killed with SIGKILL at a chosen
function), and the checks every case makes: the exit code, one error line, no traceback, and what survived."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import qa_records, write_jsonl

TESTS = Path(__file__).resolve().parent
RUNNER = TESTS / "fault_runner.py"


def invoke(*args, env: dict | None = None):
    """`sdft ARGS` in this process (stderr is not a terminal: progress comes as plain lines)."""
    from transformers.utils import logging

    from sdft.cli import app

    logging.disable_progress_bar()  # as the CLI does (sdft/cli.py), which it cannot here: transformers is imported
    return CliRunner().invoke(app, [str(a) for a in args], prog_name="sdft", env=env)


def lines_of(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip()]


def refused(result, *expected: str) -> str:
    """Exit 1; the output ends with the one error line, which holds every `expected` text; no traceback. Progress
    lines may come before it (a fault that strikes mid-run); nothing comes after it."""
    output = getattr(result, "output", None) or (result.stdout + result.stderr)
    code = getattr(result, "exit_code", None)
    code = result.returncode if code is None else code
    lines = lines_of(output)
    assert code == 1, output
    assert "Traceback" not in output, output
    assert lines and lines[-1].startswith("error: "), output
    assert sum(line.startswith("error: ") for line in lines) == 1, output
    for text in expected:
        assert text in lines[-1], lines[-1]
    return lines[-1]


def refused_alone(result, *expected: str) -> str:
    """A mistake in the input: refused before any work, so the error line is the whole output."""
    line = refused(result, *expected)
    output = getattr(result, "output", None) or (result.stdout + result.stderr)
    assert lines_of(output) == [line], output
    return line


def tree(folder: Path) -> dict[str, str]:
    """Every file under `folder` (hidden ones too) -> sha256 of its bytes: what survived, byte for byte."""
    folder = Path(folder)
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def make_world(root: Path, model_dir: Path, train_rows: int = 6, test_rows: int = 4) -> Path:
    """A custom task 'doubling' and a config that trains and evaluates it quickly on the tiny model."""
    write_jsonl(root / "data" / "train.jsonl", qa_records(train_rows))
    write_jsonl(root / "data" / "test.jsonl", qa_records(test_rows))
    task = root / "doubling.yaml"
    task.write_text("name: doubling\nscorer: normalized\n"
                    "fields: {prompt: question, demonstration: response, answer: label}\n"
                    "splits: {train: data/train.jsonl, test: data/test.jsonl}\n")
    config = root / "world.yaml"
    config.write_text(
        f"model: {{name_or_path: '{model_dir}', device: cpu}}\n"
        f"custom_tasks: ['{task}']\n"
        "tasks: [doubling]\n"
        "eval: {general: [doubling], max_new_tokens: 4, batch_size: 4}\n"
        "train: {task: doubling, steps: 4, batch_size: 2, max_completion_tokens: 6, checkpoint_every: 2,\n"
        "        warmup_steps: 0, learning_rate: 0.01, log_every: 1}\n"
        "sequence: {methods: [sdft]}\n"
        f"output_root: '{root / 'runs'}'\n"
    )
    return config


def sdft_process(args, cwd: Path, kill_at: str | None = None, env: dict | None = None, timeout: float = 300):
    """`sdft ARGS` as its own process (tests/fault_runner.py); `kill_at` 'module:function[:n[:text]]' kills it with
    SIGKILL when that function is called for the n-th time (with `text` in its arguments)."""
    command = [sys.executable, str(RUNNER), *(["--kill-at", kill_at] if kill_at else []), "--", *map(str, args)]
    # one thread, as the in-process reference runs use (conftest's one_thread): the same arithmetic, bit for bit
    path = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p] + [str(TESTS.parent), str(TESTS)]
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join(path), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(command, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


def read_json(path: Path):
    return json.loads(Path(path).read_text())


class Mounts:
    """Small tmpfs filesystems for disk-full and read-only cases: mounting needs root (CAP_SYS_ADMIN), and a case
    that cannot have one is skipped with the reason."""

    def __init__(self, root: Path):
        self.root, self.mounted = root, []

    def tmpfs(self, name: str, options: str) -> Path:
        target = self.root / name
        target.mkdir(parents=True)
        if os.geteuid() != 0 or shutil.which("mount") is None:
            pytest.skip("mounting a small tmpfs needs root")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        self.mounted.append(target)
        return target

    def remount(self, target: Path, options: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{options}", str(target)], check=True, capture_output=True)

    def unmount_all(self) -> None:
        for target in reversed(self.mounted):
            subprocess.run(["umount", "-l", str(target)], capture_output=True)
