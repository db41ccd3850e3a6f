"""`sdft train` runs unchanged under `accelerate launch` with 2 CPU processes (DDP)."""

import json
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import qa_records, write_jsonl

pytestmark = pytest.mark.slow  # launches two processes with accelerate


@pytest.mark.skipif(shutil.which("accelerate") is None, reason="the accelerate launcher is not on PATH")
def test_sdft_train_under_accelerate_launch_with_two_processes(tmp_path, tiny_model_dir):
    write_jsonl(tmp_path / "data" / "train.jsonl", qa_records(16))
    write_jsonl(tmp_path / "data" / "test.jsonl", qa_records(4))
    (tmp_path / "task.yaml").write_text(
        "name: doubling\nscorer: normalized\nfields: {prompt: question, demonstration: response, answer: label}\n"
        "splits: {train: data/train.jsonl, test: data/test.jsonl}\n"
    )
    config = tmp_path / "c.yaml"
    config.write_text(
        f"model: {{name_or_path: '{tiny_model_dir}', device: cpu}}\ncustom_tasks: ['{tmp_path / 'task.yaml'}']\n"
        "tasks: [doubling]\neval: {general: [], max_new_tokens: 4}\n"
        "train: {task: doubling, steps: 2, batch_size: 4, max_completion_tokens: 8, checkpoint_every: 2, teacher: ema}\n"
    )
    run_dir = tmp_path / "run"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29533",
        "-m", "sdft.cli", "train", str(config), "--output", str(run_dir),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    trainer_state = torch.load(run_dir / "checkpoints" / "step-000002" / "trainer.pt", weights_only=False)
    assert len(trainer_state["rng"]) == 2  # one RNG state per process: resume is exact per process
    results = json.loads((run_dir / "results.json").read_text())
    assert results["steps"] == 2 and results["after"] is not None
    assert (run_dir / "model" / "model.safetensors").is_file()
