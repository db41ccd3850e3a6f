"""Several processes: `sdft train` under `accelerate launch` (DDP), and train.sharding=fsdp (sdft/distributed.py) on
two CPU processes (gloo) under torchrun: SDFT (frozen, EMA, LoRA EMA teacher), SFT and DFT give the same losses and
final weights as one process on the same global batch,
exact resume after a kill, the sequence's two stages; and the settings sharding refuses, each in one line."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import qa_records, write_jsonl
from safetensors.torch import load_file

from sdft.config import load_config
from sdft.distributed import SHARDING_FILE, require_same_world
from sdft.errors import UserError

LOSS_RTOL = 1e-4
"""Relative tolerance on a step's loss between one process and two sharded ones: the same arithmetic except the
reduction order (a gradient averaged across processes, micro-batches of 2 rows instead of 4). Measured: 2e-6."""
WEIGHT_ATOL = 1e-5
"""Largest absolute difference allowed in a final weight, against updates of about 1e-2 (lr 1e-2). Measured: 1e-6."""


def _task_config(tmp_path: Path, model_dir: Path, train: str) -> Path:
    write_jsonl(tmp_path / "data" / "train.jsonl", qa_records(16))
    write_jsonl(tmp_path / "data" / "test.jsonl", qa_records(4))
    (tmp_path / "task.yaml").write_text(
        "name: doubling\nscorer: normalized\nfields: {prompt: question, demonstration: response, answer: label}\n"
        "splits: {train: data/train.jsonl, test: data/test.jsonl}\n"
    )
    config = tmp_path / "c.yaml"
    config.write_text(
        f"model: {{name_or_path: '{model_dir}', device: cpu}}\ncustom_tasks: ['{tmp_path / 'task.yaml'}']\n"
        f"tasks: [doubling]\neval: {{general: [], max_new_tokens: 4}}\ntrain: {{task: doubling, {train}}}\n"
    )
    return config


@pytest.mark.slow  # launches two processes with accelerate
@pytest.mark.skipif(shutil.which("accelerate") is None, reason="the accelerate launcher is not on PATH")
def test_sdft_train_under_accelerate_launch_with_two_processes(tmp_path, tiny_model_dir):
    config = _task_config(tmp_path, tiny_model_dir,
                          "steps: 2, batch_size: 4, max_completion_tokens: 8, checkpoint_every: 2, teacher: ema")
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


# --- FSDP on two CPU processes -------------------------------------------------------------------------------

FSDP_TRAIN = ("steps: 3, batch_size: 4, max_completion_tokens: 6, checkpoint_every: 2, learning_rate: 1.0e-2, "
              "warmup_steps: 0, evaluate: false, "
              # top-p that keeps only the likeliest token: rollouts that do not depend on which process draws them
              "rollout: {temperature: 1.0, top_p: 1.0e-9, backend: native}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sdft(args: list[str], cwd: Path, processes: int = 1, wait: bool = True):
    """`sdft ...` in one plain process, or under torchrun with `processes` (one thread each: 2 shared cores)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                "--master_port", str(_free_port())] if processes > 1 else [sys.executable]
    command = [*launcher, "-m", "sdft.cli", *args]
    if not wait:
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                start_new_session=True)
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=cwd, env=env, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    folder = run_dir / "model"
    return load_file(folder / ("adapter_model.safetensors" if (folder / "adapter_config.json").is_file()
                               else "model.safetensors"))


SINGLE_SFT = ["--set", "train.sharding=fsdp"]
"""SFT's single-process reference: the native loop in one process (its Trainer path draws another data order)."""


@pytest.mark.slow  # two launches of a few seconds each
@pytest.mark.parametrize("extra, single", [
    ("teacher: frozen", []), ("teacher: ema", []), ("teacher: ema}\nlora: {enabled: true", []),
    ("teacher: ema, gradient_accumulation: 2", []), ("method: sft", SINGLE_SFT), ("method: dft", SINGLE_SFT),
], ids=["frozen", "ema", "lora-ema", "ema-accumulation", "sft", "dft"])
def test_fsdp_on_two_processes_equals_one_process_on_the_same_global_batch(tmp_path, tiny_model_dir, extra, single):
    train = FSDP_TRAIN.replace("max_completion_tokens: 6", "max_completion_tokens: 32") if single else FSDP_TRAIN
    config = _task_config(tmp_path, tiny_model_dir, f"{train}, {extra}")  # 32: a demonstration's length
    _sdft(["train", str(config), "--output", "single", *single], tmp_path)
    _sdft(["train", str(config), "--output", "sharded", "--set", "train.sharding=fsdp"], tmp_path, processes=2)
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    assert _losses(sharded) == pytest.approx(_losses(single), rel=LOSS_RTOL)
    assert len(_losses(sharded)) == 3
    start = load_file(tiny_model_dir / "model.safetensors")
    a, b = _weights(single), _weights(sharded)
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < WEIGHT_ATOL
    moved = max((a[k] - start[k]).abs().max().item() for k in a) if "lora" not in extra else 1.0
    assert moved > 100 * WEIGHT_ATOL  # the runs trained: the tolerance is small against what changed
    assert sorted(p.name for p in (sharded / "checkpoints" / "step-000002").iterdir()) == [
        "rank-0.pt", "rank-1.pt", SHARDING_FILE, "trainer.pt"]
    config_json = json.loads((sharded / "model" / "config.json").read_text()) if "lora" not in extra else None
    assert config_json is None or config_json["architectures"] == ["LlamaForCausalLM"]  # not FSDPLlamaForCausalLM


@pytest.mark.slow  # three two-process launches
def test_fsdp_killed_mid_run_and_resumed_equals_uninterrupted(tmp_path, tiny_model_dir):
    config = _task_config(tmp_path, tiny_model_dir, FSDP_TRAIN.replace("steps: 3", "steps: 8") + ", teacher: ema")
    sharded = ["--set", "train.sharding=fsdp"]
    _sdft(["train", str(config), "--output", "whole", *sharded], tmp_path, processes=2)
    run = _sdft(["train", str(config), "--output", "cut", *sharded], tmp_path, processes=2, wait=False)
    first = tmp_path / "cut" / "checkpoints" / "step-000002"
    deadline = time.monotonic() + 240
    while not first.is_dir() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(run.pid, signal.SIGKILL)  # the launcher and both workers, mid-run
    run.wait()
    assert first.is_dir() and not (tmp_path / "cut" / "model").exists()  # killed after a checkpoint, before the end
    _sdft(["train", str(config), "--output", "cut", "--resume", *sharded], tmp_path, processes=2)
    assert _losses(tmp_path / "cut") == pytest.approx(_losses(tmp_path / "whole"), rel=1e-6)
    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "cut")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6


@pytest.mark.slow  # one two-process launch of two stages
def test_fsdp_sequence_runs_two_stages(tmp_path, tiny_model_dir):
    config = _task_config(tmp_path, tiny_model_dir, FSDP_TRAIN + ", teacher: ema, sharding: fsdp")
    second = tmp_path / "task2.yaml"
    second.write_text((tmp_path / "task.yaml").read_text().replace("name: doubling", "name: again"))
    text = config.read_text().replace("tasks: [doubling]", "tasks: [doubling, again]\nsequence: {methods: [sdft]}")
    config.write_text(text.replace(f"'{tmp_path / 'task.yaml'}'", f"'{tmp_path / 'task.yaml'}', '{second}'"))
    _sdft(["sequence", "--config", str(config), "--output", "seq"], tmp_path, processes=2)
    results = json.loads((tmp_path / "seq" / "results.json").read_text())
    assert len(results["methods"]["sdft"]["matrix"]) == 3  # base, after stage 1, after stage 2
    stages = [tmp_path / "seq" / "sdft" / "seed-0" / name for name in ("stage-1-doubling", "stage-2-again")]
    for stage in stages:
        assert len(_losses(stage)) == 3 and (stage / "model" / "model.safetensors").is_file()
        assert (stage / "checkpoints" / "step-000003" / "rank-1.pt").is_file()
    import yaml

    started_from = yaml.safe_load((stages[1] / "config.yaml").read_text())["model"]["name_or_path"]
    assert tmp_path / started_from == stages[0] / "model"  # stage 2 started from stage 1's consolidated model


# --- the root unit freed once the head's backward is done (one process, in this one) -------------------------------

@pytest.fixture
def one_process_group():
    import torch.distributed as dist

    from sdft.distributed import ensure_process_group

    ours = not dist.is_initialized()
    ensure_process_group(torch.device("cpu"))
    yield
    if ours:
        dist.destroy_process_group()


def _on_backward_into(module, check, record: list) -> None:
    """record check(module) when the gradient of module's output arrives, i.e. just before module's own backward."""

    def hook(m, args, out):
        if out.requires_grad:
            out.register_hook(lambda grad: record.append(check(m)))

    module.register_forward_hook(hook)


def _qwen2(tied: bool):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    return Qwen2ForCausalLM(Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                        num_key_value_heads=2, vocab_size=96, tie_word_embeddings=tied))


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_the_root_is_resharded_before_the_embedding_backward_and_gradients_are_unchanged(one_process_group, tied):
    import copy

    from torch.distributed.tensor import DTensor

    from sdft.distributed import shard

    reference = _qwen2(tied)
    model = copy.deepcopy(reference)
    ids = torch.randint(0, 96, (2, 7), generator=torch.Generator().manual_seed(1))
    expected = reference(input_ids=ids, labels=ids).loss
    expected.backward()
    shard(model, torch.device("cpu"))
    sharded_then = []  # whether the embedding's weight was a shard when its backward began
    _on_backward_into(model.model.embed_tokens, lambda m: isinstance(m.weight, DTensor), sharded_then)
    with torch.no_grad():  # as a rollout does before the trained forward (FSDP records it)
        model(input_ids=ids)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    assert sharded_then == [True]  # FSDP alone keeps it gathered until the root's post-backward
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    grads = {n: p.grad.full_tensor() for n, p in model.named_parameters()}
    assert grads.keys() == {n for n, _ in reference.named_parameters()}
    for name, p in reference.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-5, atol=1e-7)


def test_a_root_with_weights_read_in_the_embedding_backward_stays_gathered(one_process_group):
    from peft import LoraConfig, get_peft_model
    from torch.distributed.tensor import DTensor

    from sdft.distributed import shard

    model = shard(get_peft_model(_qwen2(True), LoraConfig(r=2, target_modules=["embed_tokens", "q_proj"])),
                  torch.device("cpu"))
    embedding = model.get_base_model().model.embed_tokens
    sharded_then = []
    _on_backward_into(embedding, lambda m: isinstance(m.lora_embedding_B["default"], DTensor), sharded_then)
    ids = torch.randint(0, 96, (2, 7), generator=torch.Generator().manual_seed(1))
    model(input_ids=ids, labels=ids).loss.backward()
    assert sharded_then == [False]  # its LoRA B is read by the embedding's backward: gathered until FSDP frees it


# --- what sharding refuses, each in one line before a model loads ------------------------------------------------

@pytest.mark.parametrize("overrides, words", [
    (["lora.enabled=true", "train.teacher=ema", "train.lora_ema=update"], "cannot serve train.lora_ema=update"),
    (["train.method=cpt"], "not ['cpt']"),
    (["train.engine=trl"], "set train.engine=native"),
])
def test_sharding_refuses_what_it_cannot_serve(overrides, words):
    with pytest.raises(UserError, match=words.replace("[", r"\[").replace("]", r"\]")):
        load_config(None, ["train.sharding=fsdp", *overrides])


def test_a_world_size_that_does_not_divide_the_batch_stops_before_the_model_loads(tmp_path, tiny_model_dir,
                                                                                  monkeypatch):
    from sdft import train_run

    class TwoProcesses:
        num_processes, is_main_process = 2, True

        def wait_for_everyone(self):
            pass

    monkeypatch.setattr(train_run, "process_state", lambda model: TwoProcesses())
    monkeypatch.setattr(train_run, "load_model", lambda *a: pytest.fail("the model loaded"))
    cfg = load_config(_task_config(tmp_path, tiny_model_dir, "steps: 1, batch_size: 3, sharding: fsdp"))
    with pytest.raises(UserError, match=r"train.batch_size=3 must split evenly over .* x 2 processes"):
        train_run.run_train(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_sharded_checkpoint_resumes_only_on_its_number_of_processes(tmp_path, tiny_model_dir, monkeypatch):
    from sdft import train_run

    step = tmp_path / "run" / "checkpoints" / "step-000002"
    step.mkdir(parents=True)
    (step / SHARDING_FILE).write_text(json.dumps({"sharding": "fsdp", "world_size": 2}))
    require_same_world(step.parent, 2)  # its own number: fine
    monkeypatch.setattr(train_run, "load_model", lambda *a: pytest.fail("the model loaded"))
    cfg = load_config(_task_config(tmp_path, tiny_model_dir, "steps: 1, batch_size: 2, sharding: fsdp"))
    with pytest.raises(UserError, match=r"shards of 2 processes and this job has 1; resume with 2 processes"):
        train_run.open_stage(cfg, None, tmp_path / "run", "train", resume=True)


# --- on GPUs (where a machine with two is lent; skipped on these CPUs) -------------------------------------------

def _two_gpus() -> bool:
    return torch.cuda.is_available() and torch.cuda.device_count() >= 2


@pytest.mark.gpu
@pytest.mark.skipif(not _two_gpus(), reason="needs 2 CUDA devices")
@pytest.mark.parametrize("launch, train, extra", [
    ("fsdp2.yaml", FSDP_TRAIN + ", teacher: ema", ["--set", "train.sharding=fsdp"]),
    ("ddp.yaml", FSDP_TRAIN + ", teacher: ema", []),
    ("deepspeed-zero2.yaml", "steps: 2, batch_size: 4, method: sft, evaluate: false", []),
    ("deepspeed-zero3.yaml", "steps: 2, batch_size: 4, method: sft, evaluate: false", []),
])
def test_the_launch_configs_train_on_two_gpus(tmp_path, tiny_model_dir, launch, train, extra):
    if launch.startswith("deepspeed"):
        pytest.importorskip("deepspeed")
    config = _task_config(tmp_path, tiny_model_dir, train)
    config.write_text(config.read_text().replace("device: cpu", "device: cuda"))
    configs = Path(__file__).resolve().parents[1] / "configs" / "accelerate"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(configs / launch),
               "--num_processes", "2", "--main_process_port", str(_free_port()),
               "-m", "sdft.cli", "train", str(config), "--output", "run", *extra]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(_losses(tmp_path / "run")) == 2 + ("steps: 3" in train) and (tmp_path / "run" / "model").is_dir()
