"""The fault suite, part 4: a process killed with SIGKILL at every phase of a train run and of a sequence, a checkpoint
damaged on disk, a half-written evaluation cache line, and a judge endpoint that never answers.

After a kill nothing may look finished (no results.json), every file left must read back whole, and the same command
(`--resume` for a train run that had started writing) must finish with exactly the results of an uninterrupted run.
The kills run sdft as its own process (tests/fault_runner.py); the reruns run in this one."""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from conftest import write_jsonl
from faults import invoke, make_world, read_json, refused, sdft_process, tree

pytestmark = pytest.mark.usefixtures("one_thread")


def same_weights(a: Path, b: Path) -> bool:
    x, y = load_file(str(a)), load_file(str(b))
    return x.keys() == y.keys() and all((x[k] == y[k]).all() for k in x)


def assert_whole(folder: Path) -> None:
    """Every JSON file reads back, and every checkpoint folder a resume would use holds all its files."""
    for path in folder.rglob("*.json"):
        if not path.name.startswith("."):
            json.loads(path.read_text())
    for checkpoint in folder.rglob("step-*"):
        if checkpoint.is_dir():
            assert {p.name for p in checkpoint.iterdir()} == {"student.safetensors", "teacher.safetensors", "trainer.pt"}


# --- a train run ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def train_world(tmp_path_factory, tiny_model_dir):
    """A world and the uninterrupted train run every killed one is compared with."""
    root = tmp_path_factory.mktemp("kill-train")
    world = make_world(root / "world", tiny_model_dir)
    result = invoke("train", world, "--output", root / "reference")
    assert result.exit_code == 0, result.output
    return world, root / "reference"


TRAIN_PHASES = {  # phase -> where the process dies (tests/fault_runner.py: module:function[:n[:text]])
    "loading the model": "sdft.train_run:load_model",
    "the base evaluation": "sdft.eval_service:evaluate_task:2",
    "a training step": "sdft.methods.sdft:train_step:3",
    "writing a checkpoint": "sdft.methods.checkpoint:save_file:3",
    "saving the trained model": "sdft.methods.loop:save_model",
    "the evaluation after training": "sdft.eval_service:evaluate_task:3",
    "writing results.json": "os:replace:1:results.json",
}


@pytest.mark.slow
@pytest.mark.parametrize("phase", TRAIN_PHASES)
def test_a_train_run_killed_then_resumed_equals_an_uninterrupted_one(train_world, tmp_path, phase):
    world, reference = train_world
    run = tmp_path / "run"
    killed = sdft_process(["train", world, "--output", run], tmp_path, kill_at=TRAIN_PHASES[phase])
    assert killed.returncode == -9, killed.stderr
    assert not (run / "results.json").exists()  # nothing looks finished
    assert_whole(run)
    again = ["--resume"] if (run / "env.json").exists() else []  # what the user does: continue what started
    result = invoke("train", world, "--output", run, *again)
    assert result.exit_code == 0, result.output
    for key in ("before", "after", "steps"):
        assert read_json(run / "results.json")[key] == read_json(reference / "results.json")[key]
    assert same_weights(run / "model" / "model.safetensors", reference / "model" / "model.safetensors")


@pytest.mark.slow
def test_an_sft_run_killed_while_the_trainer_writes_a_checkpoint_resumes_from_the_whole_one(train_world, tmp_path):
    """The Trainer writes a checkpoint in place (weights, optimizer, RNG, then trainer_state.json): the one it was
    writing is passed over."""
    world, _ = train_world
    sft = ("--set", "train.method=sft", "--set", "train.max_completion_tokens=24")
    reference = invoke("train", world, "--output", tmp_path / "reference", *sft)
    assert reference.exit_code == 0, reference.output
    run = tmp_path / "run"
    killed = sdft_process(["train", world, "--output", run, *sft], tmp_path,
                          kill_at="transformers.trainer:Trainer._save_rng_state:2")
    assert killed.returncode == -9, killed.stderr
    assert not (run / "checkpoints" / "checkpoint-4" / "trainer_state.json").exists()  # cut off mid-write
    result = invoke("train", world, "--output", run, "--resume", *sft)
    assert result.exit_code == 0, result.output
    assert same_weights(run / "model" / "model.safetensors", tmp_path / "reference" / "model" / "model.safetensors")


@pytest.mark.slow
def test_a_torn_metrics_line_of_a_killed_run_is_dropped_on_resume(train_world, tmp_path):
    world, reference = train_world
    run = shutil.copytree(reference, tmp_path / "run")
    shutil.rmtree(run / "checkpoints" / "step-000004")  # killed after step 4's line, before its checkpoint...
    (run / "results.json").unlink()
    with (run / "metrics.jsonl").open("a") as metrics:
        metrics.write('{"step": 5, "loss": 0.1')  # ...and a torn line after it
    result = invoke("train", world, "--output", run, "--resume")
    assert result.exit_code == 0, result.output
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


# --- a sequence ----------------------------------------------------------------------------------------------

def _tripling(root: Path) -> Path:
    records = [{"question": f"{i} times 3?", "response": f"So {3 * i}. Answer: {3 * i}", "label": str(3 * i)}
               for i in range(6)]
    write_jsonl(root / "tripling" / "train.jsonl", records)
    write_jsonl(root / "tripling" / "test.jsonl", records[:3])
    task = root / "tripling.yaml"
    task.write_text("name: tripling\nscorer: normalized\nfields: {prompt: question, demonstration: response, "
                    "answer: label}\nsplits: {train: tripling/train.jsonl, test: tripling/test.jsonl}\n")
    return task


def sequence_args(world: Path, output: Path, *extra: str) -> list:
    overrides = [f"custom_tasks=[{world.parent / 'doubling.yaml'}, {world.parent / 'tripling.yaml'}]",
                 "train.steps=2", "train.checkpoint_every=1", *extra]
    return ["sequence", "doubling", "tripling", "--config", world, "--output", output,
            *[a for o in overrides for a in ("--set", o)]]


@pytest.fixture(scope="module")
def sequence_world(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("kill-sequence")
    world = make_world(root / "world", tiny_model_dir)
    _tripling(world.parent)
    result = invoke(*sequence_args(world, root / "reference"))
    assert result.exit_code == 0, result.output
    return world, root / "reference"


SEQUENCE_PHASES = {
    "the base row": "sdft.eval_service:evaluate_task:2",
    "stage 1, a training step": "sdft.methods.sdft:train_step:2",
    "stage 1, its first checkpoint write": "sdft.methods.checkpoint:save_file:1",
    "stage 1, its evaluation": "sdft.eval_service:evaluate_task:5",
    "stage 2, a training step": "sdft.methods.sdft:train_step:4",
    "writing the report": "os:replace:1:report.md",
    "writing results.json": "os:replace:1:results.json",
}
FINAL_MODEL = Path("sdft") / "seed-0" / "stage-2-tripling" / "model" / "model.safetensors"


@pytest.mark.slow
@pytest.mark.parametrize("phase", SEQUENCE_PHASES)
def test_a_sequence_killed_then_rerun_equals_an_uninterrupted_one(sequence_world, tmp_path, phase):
    world, reference = sequence_world
    run = tmp_path / "run"
    killed = sdft_process(sequence_args(world, run), tmp_path, kill_at=SEQUENCE_PHASES[phase])
    assert killed.returncode == -9, killed.stderr
    assert not (run / "results.json").exists()
    assert_whole(run)
    result = invoke(*sequence_args(world, run))  # the same command continues
    assert result.exit_code == 0, result.output
    assert read_json(run / "results.json")["methods"] == read_json(reference / "results.json")["methods"]
    assert same_weights(run / FINAL_MODEL, reference / FINAL_MODEL)


@pytest.mark.slow
def test_a_lora_sequence_killed_while_merging_a_stage_then_rerun_finishes_it(sequence_world, tmp_path):
    world, _ = sequence_world
    lora = ("lora.enabled=true", "lora.r=2", "tasks=[doubling, tripling]")
    reference = invoke(*sequence_args(world, tmp_path / "reference", *lora))
    assert reference.exit_code == 0, reference.output
    run = tmp_path / "run"
    killed = sdft_process(sequence_args(world, run, *lora), tmp_path, kill_at="sdft.sequence:_merge")
    assert killed.returncode == -9, killed.stderr
    assert not (run / "sdft" / "seed-0" / "stage-1-doubling" / "row.json").exists()
    result = invoke(*sequence_args(world, run, *lora))
    assert result.exit_code == 0, result.output
    merged = Path("sdft") / "seed-0" / "stage-2-tripling" / "merged" / "model.safetensors"
    assert same_weights(run / merged, tmp_path / "reference" / merged)
    assert read_json(run / "results.json")["methods"] == read_json(tmp_path / "reference" / "results.json")["methods"]


@pytest.mark.slow
def test_a_sequence_piped_to_a_file_says_it_is_alive(sequence_world, tmp_path):
    """stderr is not a terminal: plain progress lines (what runs, the step, the loss, time left), not silence."""
    world, _ = sequence_world
    done = sdft_process(sequence_args(world, tmp_path / "run"), tmp_path, env={"SDFT_PROGRESS_SECONDS": "0"})
    assert done.returncode == 0, done.stderr
    assert "sdft on tripling loss" in done.stderr and "left" in done.stderr and "evaluating" in done.stderr


# --- damaged files -------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_damaged_checkpoint_is_named_with_the_way_on(train_world, tmp_path):
    world, reference = train_world
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    student = run / "checkpoints" / "step-000004" / "student.safetensors"
    student.write_bytes(student.read_bytes()[:100])
    # the header is written again on resume (env.json adds the attempt; lineage.json names this copy's path)
    kept = {k: v for k, v in tree(run).items() if k not in ("env.json", "config.yaml", "lineage.json")}
    refused(invoke("train", world, "--output", run, "--resume"), f"{student} is damaged",
            f"delete {run / 'checkpoints' / 'step-000004'} to resume from {run / 'checkpoints' / 'step-000002'}")
    assert {k: v for k, v in tree(run).items() if k in kept} == kept  # results, checkpoints, model: untouched
    shutil.rmtree(run / "checkpoints" / "step-000004")
    result = invoke("train", world, "--output", run, "--resume")
    assert result.exit_code == 0, result.output
    assert same_weights(run / "model" / "model.safetensors", reference / "model" / "model.safetensors")


@pytest.fixture
def evaluated(tmp_path, tiny_model_dir):
    """A world whose test split was evaluated once: its cache file and results."""
    world = make_world(tmp_path / "world", tiny_model_dir)
    result = invoke("eval", "--config", world, "--output", tmp_path / "first", "--set", "eval.general=[]")
    assert result.exit_code == 0, result.output
    (cache,) = (tmp_path / "world" / "runs" / ".eval_cache").glob("*.jsonl")
    return world, cache, read_json(tmp_path / "first" / "results.json")


def test_a_half_written_cache_line_is_redone_not_fatal(evaluated, tmp_path):
    world, cache, first = evaluated
    text = cache.read_text()
    cache.write_text(text[: len(text) - 20])  # a writer killed mid-line
    result = invoke("eval", "--config", world, "--output", tmp_path / "second", "--set", "eval.general=[]")
    assert result.exit_code == 0, result.output
    assert read_json(tmp_path / "second" / "results.json")["scores"] == first["scores"]
    assert all(json.loads(line) for line in cache.read_text().splitlines())  # the torn line was cut off, then redone


def test_a_damaged_cache_line_before_the_last_is_named(evaluated, tmp_path):
    world, cache, _ = evaluated
    lines = cache.read_text().splitlines()
    lines[1] = "#" + lines[1]
    cache.write_text("\n".join(lines) + "\n")
    refused(invoke("eval", "--config", world, "--output", tmp_path / "second", "--set", "eval.general=[]"),
            f"{cache}, line 2: not a JSON record")
    assert not (tmp_path / "second" / "results.json").exists()


# --- a judge that never answers --------------------------------------------------------------------------------

@pytest.fixture
def silent_endpoint():
    """A server that accepts connections and never says a word."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held, stop = [], threading.Event()

    def accept():
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}/v1"
    stop.set()
    for connection in held:
        connection.close()
    server.close()


def test_a_judge_that_hangs_stops_the_run_in_seconds_in_one_line(silent_endpoint, tmp_path, tiny_model_dir):
    medical = Path(__file__).parent / "fixtures" / "paper" / "medical"
    args = ["eval", tiny_model_dir, "--tasks", "medical", "--output", tmp_path / "run", "--limit", 2]
    for override in (f"task_sources.medical={{source: local, path: {medical}}}", "eval.general=[]",
                     "eval.max_new_tokens=4", "model.device=cpu", f"output_root={tmp_path / 'runs'}",
                     "eval.judge={backend: openai, url: " + silent_endpoint + ", model: judge, api_key_env: null, "
                     "timeout_s: 0.5, max_retries: 1, backoff_s: 0.01}"):
        args += ["--set", override]
    started = time.monotonic()
    refused(invoke(*args), f"judge endpoint {silent_endpoint}/chat/completions: no answer after 2 attempts")
    assert time.monotonic() - started < 30
    assert not (tmp_path / "run" / "results.json").exists()
    assert not list((tmp_path / "runs").rglob(".judge_cache/*.jsonl"))  # no verdict was invented
