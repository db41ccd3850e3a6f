"""Speed and memory of a training step: our SDFT (EMA and frozen teacher, LoRA and full fine-tuning), our SFT, and
TRL's experimental SDFT (train.engine: trl), on the same model, data, batch, lengths and settings.

    python scripts/bench.py --quick --json bench.json                  # embedded model, under 5 minutes on 2 cores
    python scripts/bench.py --model qwen2.5-0.5b --batch 2 --max-completion 16 --rows 8 --json b05.json
    python scripts/bench.py --model qwen2.5-1.5b --device cuda --dtype bfloat16   # random init, on a GPU

Each configuration runs in a fresh subprocess that imports the same modules and runs only that configuration, so
its peak memory is its own: the RSS high-water mark on CPU (`peak`, and `+train` = peak minus the RSS after the
imports, i.e. weights plus everything training adds), torch.cuda.max_memory_allocated on a GPU. The configurations
run in --rounds interleaved rounds (default 3; --quick 2), and every figure is the median over rounds: on a shared
machine one configuration's step time can drift by 40% within minutes, and interleaving spreads the drift over all.

Definitions (identical for every engine):
- step: wall time between the ends of two consecutive optimizer steps, everything the engine does included;
  median over --steps measured steps after --warmup unmeasured ones. The split: generation, teacher forward,
  student forward+backward (with the loss), optimizer (clipping, step, schedule, teacher update), other (the rest:
  batch assembly, tokenisation, logging).
- tokens/s: completion tokens trained per step (SDFT: the sampled tokens up to and including eos; SFT: the
  demonstration plus eos), counted before the first skip_first_tokens are masked, divided by the step time.
The data is an embedded task's rows (--task, default science); `--model` names the embedded model, a local
Hugging Face folder, or a preset shape (random init, the embedded tokenizer; its samples rarely end early).
Every other setting is the published recipe's (METHOD.md; the TrainConfig defaults otherwise): 32 prompts per step,
completions up to 2048 tokens, forward KL over the full vocabulary with the first 3 tokens skipped, EMA rate 0.01,
one rollout per prompt at temperature 1.0; one micro-batch per step (the paper's accumulation is a memory setting).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULT_PREFIX = "BENCH_RESULT "
USER_ERROR_PREFIX = "BENCH_USER_ERROR "
RESULT_DIR_ENV = "SDFT_BENCH_RESULT_DIR"
SPEC_KEYS = ("task", "batch", "max_completion", "rows", "warmup", "steps", "threads", "device", "dtype", "seed",
             "mmap_threshold", "phase_memory")
PHASES = ("generation", "teacher_forward", "student_forward_backward", "optimizer", "other")
CONFIGS = {  # name: (method, engine, teacher, lora)
    "sdft-ema-full": ("sdft", "native", "ema", False),
    "sdft-frozen-full": ("sdft", "native", "frozen", False),
    "sdft-ema-lora": ("sdft", "native", "ema", True),
    "sdft-frozen-lora": ("sdft", "native", "frozen", True),
    "sft-full": ("sft", "native", None, False),
    "sft-lora": ("sft", "native", None, True),
    "trl-ema-full": ("sdft", "trl", "ema", False),
    "trl-frozen-lora": ("sdft", "trl", "frozen", True),
}
LAUNCHED = {  # name: (configuration, processes, train.sharding): one configuration launched by torchrun
    "sdft-ema-full-ddp2": ("sdft-ema-full", 2, "none"),
    "sdft-ema-full-fsdp2": ("sdft-ema-full", 2, "fsdp"),
}
"""Peak memory per process under several processes: every process holds everything (DDP), or shards (FSDP,
sdft/distributed.py). A row's peak is the largest process's; the batch (--batch) is the global one, split."""
SHAPES = {  # random-init models shaped like real ones (Qwen2.5 configs), with the embedded tokenizer
    "qwen2.5-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2),
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2),
}


# ---- the parent: one subprocess per configuration, then the table and the JSON ----


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.worker:
        from sdft.errors import UserError

        try:
            result = run_worker(json.loads(args.worker))
        except UserError as err:  # bad settings: one line for the parent to pass on
            print(f"{USER_ERROR_PREFIX}{err}", file=sys.stderr, flush=True)
            raise SystemExit(1) from None
        print(RESULT_PREFIX + json.dumps(result), flush=True)
        if os.environ.get(RESULT_DIR_ENV):  # a launched worker: its processes' stdout lines may interleave
            (Path(os.environ[RESULT_DIR_ENV]) / f"rank-{result['rank']}.json").write_text(json.dumps(result))
        return result
    model_path = resolve_model(args.model, Path(args.cache_dir))
    common = {key: getattr(args, key) for key in SPEC_KEYS}
    results = measure(args.configs, {**common, "model": model_path}, args.rounds)
    settings = {"model": args.model, "model_path": model_path, "model_sha256": weights_digest(model_path), **common,
                "rounds": args.rounds}
    report = {"machine": machine(args), "settings": settings, "configs": results, "ratios": ratios(results)}
    print(format_table(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return report


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded", help=f"embedded, a local folder, or a shape: {sorted(SHAPES)}")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated, from: " + ", ".join(CONFIGS) +
                        "; launched on several processes (not in the default list): " + ", ".join(LAUNCHED))
    parser.add_argument("--task", default="science", help="an embedded task: its rows are the data")
    parser.add_argument("--batch", type=int, default=32, help="prompts per optimizer step (train.batch_size; "
                        "default: the published 32)")
    parser.add_argument("--max-completion", type=int, default=2048, help="train.max_completion_tokens (default: the "
                        "published 2048; a random-init model samples to the cap, so give it a small one)")
    parser.add_argument("--rows", type=int, default=64, help="training rows (tokenised once, before timing)")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured steps first")
    parser.add_argument("--steps", type=int, default=8, help="measured steps")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=3, help="runs of every configuration, interleaved (medians over rounds)")
    parser.add_argument("--quick", action="store_true", help="1 warm-up + 5 measured steps, 2 rounds")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--cache-dir", default=str(Path(tempfile.gettempdir()) / "sdft-bench"),
                        help="where preset-shaped random models are built once")
    parser.add_argument("--mmap-threshold", type=int, default=0,
                        help="glibc's MALLOC_MMAP_THRESHOLD_ for the workers (0: glibc's default). glibc keeps freed heap "
                        "blocks in the RSS, so transient buffers (FSDP's gathers) inflate the RSS peak after they are "
                        "freed; with e.g. 131072 larger blocks are mapped and returned, and the RSS follows live memory")
    parser.add_argument("--phase-memory", action="store_true",
                        help="our SDFT rows on CPU (Linux): also the RSS high-water mark inside each phase of a step (rollout, "
                        "teacher forward, student forward, student backward, optimizer step, teacher update), in MB above "
                        "the RSS after the imports: where the peak comes from")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.warmup, args.steps, args.rounds = 1, 5, 2
    for name in ("rounds", "batch", "steps", "max_completion"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.rows < args.batch:
        parser.error(f"--rows {args.rows} is below --batch {args.batch}: every configuration trains on full batches "
                     "(TRL's sampler drops an incomplete one); give at least as many rows as the batch")
    args.configs = [c for c in args.configs.split(",") if c]
    unknown = [c for c in args.configs if c not in CONFIGS and c not in LAUNCHED]
    if unknown:
        parser.error(f"unknown configs {unknown}; choose from {list(CONFIGS) + list(LAUNCHED)}")
    odd = [c for c in args.configs if c in LAUNCHED and args.batch % LAUNCHED[c][1]]
    if odd:
        parser.error(f"--batch {args.batch} does not split over the processes of {odd}")
    return args


def measure(configs: list[str], common: dict, rounds: int) -> dict:
    """Every configuration once per round, in fresh subprocesses; the order reverses every other round, so a machine
    that slows down or speeds up during the run weighs on every configuration alike."""
    runs: dict[str, list[dict]] = {name: [] for name in configs}
    for number in range(rounds):
        for name in configs if number % 2 == 0 else configs[::-1]:
            print(f"[bench] round {number + 1}/{rounds}: {name} ...", file=sys.stderr, flush=True)
            runs[name].append(run_subprocess({**common, "config": name}))
    return {name: merge_rounds(results) for name, results in runs.items()}


def merge_rounds(results: list[dict]) -> dict:
    """One configuration's rounds as one result: each figure the median over rounds of that round's figure."""
    if len(results) == 1:
        return results[0]
    median = lambda key: statistics.median(r[key] for r in results)  # noqa: E731
    merged = {**results[0], **{key: median(key) for key in ("step_seconds", "tokens_per_step", "peak_mb", "train_mb",
                                                             "rss_after_imports_mb", "rss_after_load_mb")}}
    merged["phases"] = {p: statistics.median(r["phases"][p] for r in results) for p in PHASES}
    merged["tokens_per_second"] = merged["tokens_per_step"] / merged["step_seconds"]
    merged["steps_seconds"] = [s for r in results for s in r["steps_seconds"]]
    merged["rounds_step_seconds"] = [r["step_seconds"] for r in results]
    return merged


def run_subprocess(spec: dict) -> dict:
    processes = LAUNCHED[spec["config"]][1] if spec["config"] in LAUNCHED else 1
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                "--master_port", str(_free_port())] if processes > 1 else [sys.executable]
    command = [*launcher, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    env = {**os.environ, "TRL_EXPERIMENTAL_SILENCE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "TOKENIZERS_PARALLELISM": "false"}
    if spec.get("mmap_threshold"):
        env["MALLOC_MMAP_THRESHOLD_"] = str(spec["mmap_threshold"])
    with tempfile.TemporaryDirectory() as results:
        env[RESULT_DIR_ENV] = results
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        written = [json.loads(p.read_text()) for p in sorted(Path(results).glob("rank-*.json"))]
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if done.returncode == 0 and len(written) == processes > 1:
        return merge_processes(written)
    if done.returncode != 0 or not lines:
        told = [line for line in done.stderr.splitlines() if line.startswith(USER_ERROR_PREFIX)]
        if told:
            raise SystemExit(f"bench.py: {spec['config']}: {told[-1][len(USER_ERROR_PREFIX):]}")
        raise RuntimeError(f"{spec['config']} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(lines[-1][len(RESULT_PREFIX) :])


def merge_processes(results: list[dict]) -> dict:
    """A launched configuration's processes as one row: the largest process's memory, the main process's times."""
    main = next(r for r in results if r.get("rank", 0) == 0)
    return {**main, "processes": len(results), "peak_mb": max(r["peak_mb"] for r in results),
            "train_mb": max(r["train_mb"] for r in results),
            "per_process_peak_mb": [r["peak_mb"] for r in sorted(results, key=lambda r: r.get("rank", 0))],
            **({"phase_peak_mb": {k: max(r["phase_peak_mb"][k] for r in results) for k in main["phase_peak_mb"]}}
               if "phase_peak_mb" in main else {})}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def machine(args: argparse.Namespace) -> dict:
    import torch

    import peft
    import transformers
    import trl

    info = {"cpu_cores": os.cpu_count(), "cpu": _cpu_name(), "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "trl": trl.__version__, "peft": peft.__version__, "device": args.device}
    if args.device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _cpu_name() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def ratios(results: dict) -> dict:
    """The headline ratios, from the configurations present (a missing one gives None)."""

    def step(name):
        return results[name]["step_seconds"] if name in results else None

    def mem(name, key):
        return results[name][key] if name in results else None

    def over(a, b):
        return a / b if a is not None and b else None

    lora_sdft = [m for m in (mem("sdft-frozen-lora", "train_mb"), mem("sdft-ema-lora", "train_mb")) if m is not None]
    lora_sdft_total = [m for m in (mem("sdft-frozen-lora", "peak_mb"), mem("sdft-ema-lora", "peak_mb")) if m is not None]
    return {
        "sdft_over_sft": over(step("sdft-ema-full"), step("sft-full")),
        "sdft_frozen_over_sft": over(step("sdft-frozen-full"), step("sft-full")),
        "lora_sdft_over_sft": over(step("sdft-ema-lora"), step("sft-lora")),
        "trl_over_sdft": over(step("trl-ema-full"), step("sdft-ema-full")),
        "trl_over_sdft_frozen_lora": over(step("trl-frozen-lora"), step("sdft-frozen-lora")),
        "lora_peak_mem_sdft_over_sft": over(max(lora_sdft, default=None), mem("sft-lora", "train_mb")),
        "lora_peak_rss_total_sdft_over_sft": over(max(lora_sdft_total, default=None), mem("sft-lora", "peak_mb")),
        "ddp2_peak_per_process_over_single": over(mem("sdft-ema-full-ddp2", "peak_mb"), mem("sdft-ema-full", "peak_mb")),
        "fsdp2_peak_per_process_over_single": over(mem("sdft-ema-full-fsdp2", "peak_mb"), mem("sdft-ema-full", "peak_mb")),
    }


def format_table(report: dict) -> str:
    head = f"{'config':<20} {'step s':>7} " + " ".join(f"{p[:9]:>9}" for p in PHASES) + \
        f" {'tok/step':>8} {'tok/s':>7} {'peak MB':>8} {'+train MB':>9}"
    lines = [head, "-" * len(head)]
    for name, r in report["configs"].items():
        phases = " ".join(f"{r['phases'][p]:>9.3f}" for p in PHASES)
        lines.append(f"{name:<20} {r['step_seconds']:>7.3f} {phases} {r['tokens_per_step']:>8.0f} "
                     f"{r['tokens_per_second']:>7.0f} {r['peak_mb']:>8.0f} {r['train_mb']:>9.0f}")
    for name, r in report["configs"].items():
        if "phase_peak_mb" in r:  # --phase-memory: MB above the imports, the largest process's
            lines.append(f"{name:<20} phase peaks MB above imports: " +
                         ", ".join(f"{k} {v:.0f}" for k, v in r["phase_peak_mb"].items()))
    lines.append("")
    lines += [f"{key:<36} {value:.3f}" if value is not None else f"{key:<36} n/a" for key, value in report["ratios"].items()]
    m, s = report["machine"], report["settings"]
    lines.append(f"\nmodel {s['model']}, task {s['task']}, batch {s['batch']}, max completion {s['max_completion']}, {s['dtype']}, "
                 f"median of {s['steps']} steps after {s['warmup']}, median over {s['rounds']} rounds; {m['device']}, {m['cpu_cores']} cores, "
                 f"threads {s['threads'] or 'default'}, torch {m['torch']}")
    return "\n".join(lines)


def weights_digest(model_path: str) -> str | None:
    """The first 16 hex digits of the weights file's sha256 (the embedded model is rebuilt from time to time)."""
    import hashlib

    from sdft.models import resolve_model_path

    weights = Path(resolve_model_path(model_path)) / "model.safetensors"
    if not weights.is_file():
        return None
    digest = hashlib.sha256()
    with weights.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def resolve_model(name: str, cache_dir: Path) -> str:
    """'embedded' and folders pass through; a preset shape is built once (random init, fixed seed) and cached."""
    if name not in SHAPES:
        return name
    folder = cache_dir / name
    if not (folder / "model.safetensors").is_file() and not (folder / "model.safetensors.index.json").is_file():
        build_shaped_model(name, folder)
    return str(folder)


def build_shaped_model(name: str, folder: Path) -> None:
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from sdft.models import EMBEDDED_MODEL_DIR

    print(f"[bench] building a random-init model shaped like {name} in {folder} (once)", file=sys.stderr, flush=True)
    tokenizer = AutoTokenizer.from_pretrained(str(EMBEDDED_MODEL_DIR))
    config = Qwen2Config(**SHAPES[name], vocab_size=151936, max_position_embeddings=32768, rope_theta=1e6,
                         tie_word_embeddings=True, rms_norm_eps=1e-6, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    model.generation_config.pad_token_id, model.generation_config.eos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))


# ---- the worker: one configuration in this process ----


def run_worker(spec: dict) -> dict:
    import_all()  # the same modules in every worker, so the RSS baselines are equal
    import torch

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    base_mb = rss_mb()
    method, engine, teacher, lora = CONFIGS[LAUNCHED.get(spec["config"], (spec["config"],))[0]]
    with tempfile.TemporaryDirectory() as run_dir:
        stage = build_stage(spec, Path(run_dir))
        loaded_mb = rss_mb()
        if stage.loaded.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        runner = native_steps if engine == "native" and method == "sdft" else trainer_steps
        probe = PhaseMemory() if spec.get("phase_memory") and runner is native_steps else None
        records = runner(stage, spec["warmup"] + spec["steps"], engine, probe)
    rank = int(os.environ.get("RANK", "0"))
    result = summarise(records[spec["warmup"] :], spec, base_mb, loaded_mb, stage.loaded.device)
    if probe is not None:
        result["peak_mb"] = max(result["peak_mb"], probe.overall_mb())  # the probe resets the kernel's mark
        result["train_mb"] = result["peak_mb"] - base_mb
        result["phase_peak_mb"] = {key: value - base_mb for key, value in probe.peaks.items()}
    return {**result, "rank": rank}


def import_all() -> None:
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    import peft  # noqa: F401
    import trl  # noqa: F401
    import trl.experimental.sdft  # noqa: F401

    import sdft.methods.sdft  # noqa: F401
    import sdft.methods.sft  # noqa: F401
    import sdft.methods.trl_engine  # noqa: F401


def build_stage(spec: dict, run_dir: Path):
    from sdft.adapters import wrap_with_lora
    from sdft.config import load_config
    from sdft.methods.stage import Stage
    from sdft.models import load_model
    from sdft.tasks.registry import load_tasks, task_registry

    name, _, sharding = LAUNCHED.get(spec["config"], (spec["config"], 1, "none"))
    method, engine, teacher, lora = CONFIGS[name]
    overrides = [f"train.sharding={sharding}",
        f"model.name_or_path={spec['model']}", f"model.device={spec['device']}", f"model.dtype={spec['dtype']}",
        f"tasks=[{spec['task']}]", f"train.task={spec['task']}", f"train.method={method}", f"train.engine={engine}",
        f"train.steps={spec['warmup'] + spec['steps']}", f"train.batch_size={spec['batch']}",
        f"train.max_completion_tokens={spec['max_completion']}", f"train.max_rows={spec['rows']}",
        "train.overlong_prompts=skip", "train.checkpoint_every=1000000", "train.log_every=1000000",
        "train.evaluate=false", f"lora.enabled={str(lora).lower()}", f"seed={spec['seed']}",
    ]
    if teacher:
        overrides.append(f"train.teacher={teacher}")
    cfg = load_config(None, overrides)
    loaded = load_model(cfg.model)
    if cfg.lora.enabled:
        loaded.model = wrap_with_lora(loaded.model, cfg.lora)
    (task,) = load_tasks([spec["task"]], task_registry([]))
    return Stage(cfg, loaded, task, run_dir)


def native_steps(stage, steps: int, engine: str, probe: PhaseMemory | None = None) -> list[dict]:
    """Our SDFT trainer, one train_step after another (no logging, no checkpoints)."""
    from sdft.methods import sdft

    trainer = sdft.build_trainer(stage)
    if probe is not None:
        probe.instrument(sdft, trainer)
    records, last = [], time.perf_counter()
    for _ in range(steps):
        metrics, _ = sdft.train_step(trainer)
        if probe is not None:
            probe.enter(None)
        _sync()
        now = time.perf_counter()
        phases = {p: metrics.get(f"time_{p}", 0.0) for p in PHASES[:4]}
        records.append({"seconds": now - last, **phases, "tokens": metrics["tokens_per_second"] * metrics["step_seconds"]})
        last = now
    return records


class PhaseMemory:
    """The RSS high-water mark inside each phase of our SDFT step (the largest over steps), read by resetting the
    kernel's mark (`/proc/self/clear_refs`, Linux) when a phase begins and reading it when the phase ends. The phases
    are marked by wrapping the step's own pieces: sdft._timed (rollout, teacher forward, student forward and backward;
    the loss's finiteness check splits the last two), optimizer_step, the teacher's update."""

    def __init__(self):
        self.peaks: dict[str, float] = {}
        self._phase: str | None = None
        self._overall = 0.0

    def enter(self, phase: str | None) -> None:
        mark = _status_kb("VmHWM") / 1024
        self._overall = max(self._overall, mark)
        if self._phase is not None:
            self.peaks[self._phase] = max(self.peaks.get(self._phase, 0.0), mark)
        Path("/proc/self/clear_refs").write_text("5")  # the mark restarts from the current RSS
        self._phase = phase

    def overall_mb(self) -> float:
        return max(self._overall, _status_kb("VmHWM") / 1024)

    def instrument(self, sdft, trainer) -> None:
        import contextlib

        timed, step, finite, update = sdft._timed, sdft.optimizer_step, sdft.require_finite, trainer.teacher.update
        names = {"generation": "rollout", "teacher_forward": "teacher_forward", "student_forward_backward": "student_forward"}

        @contextlib.contextmanager
        def phase_timed(timings, key):
            self.enter(names[key])
            with timed(timings, key):
                yield
            self.enter(None)

        def checked(*args, **kwargs):  # between the student's loss and its backward
            finite(*args, **kwargs)
            self.enter("student_backward")

        def phased(name, fn):
            def wrapper(*args, **kwargs):
                self.enter(name)
                out = fn(*args, **kwargs)
                self.enter(None)
                return out
            return wrapper

        sdft._timed, sdft.require_finite = phase_timed, checked
        sdft.optimizer_step = phased("optimizer_step", step)
        trainer.teacher.update = phased("teacher_update", update)


def trainer_steps(stage, steps: int, engine: str, probe=None) -> list[dict]:
    """SFT (TRL's SFTTrainer, as sdft.methods.sft runs it) or TRL's SDFTTrainer (as sdft.methods.trl_engine builds
    it), timed by a callback that runs after every other one and by wrappers around their methods."""
    timer = StepTimer()
    if engine == "trl":
        from sdft.methods import trl_engine

        trainer = trl_engine.build_trainer(stage)
        timer.instrument(trainer, trl=True)
        trainer.add_callback(timer)  # last: the teacher update counts in the step's optimizer phase
        trainer.train()
    else:
        from sdft.methods import hf_session, sft

        build = hf_session.build_trainer

        def instrumented(*args, **kwargs):
            trainer = build(*args, **kwargs)
            timer.instrument(trainer, trl=False)
            trainer.remove_callback(timer)
            trainer.add_callback(timer)  # last, as above
            return trainer

        hf_session.build_trainer = instrumented  # the session builds its trainer by this module-level name
        try:
            sft.train_sft(stage, callbacks=[timer])
        finally:
            hf_session.build_trainer = build
    return timer.records


class StepTimer:
    """A transformers callback (duck-typed) plus method wrappers: per optimizer step, the wall time between step
    ends and its split. TRL's SDFT: generation = _generate, teacher = _forward_logits without grad, batch assembly
    (_prepare_inputs minus generation) = other, student = training_step minus those."""

    def __init__(self):
        self.records: list[dict] = []
        self._last_end = self._train_end = 0.0
        self._step = self._fresh()

    @staticmethod
    def _fresh() -> dict:
        return {"generation": 0.0, "teacher_forward": 0.0, "prepare": 0.0, "training_step": 0.0, "tokens": 0}

    def instrument(self, trainer, trl: bool) -> None:
        trainer.training_step = self._timed(trainer.training_step, "training_step", self._count_sft_tokens if not trl else None)
        if trl:
            trainer._generate = self._timed(trainer._generate, "generation")
            trainer._prepare_inputs = self._timed(trainer._prepare_inputs, "prepare", self._count_trl_tokens)
            forward = trainer._forward_logits
            teacher = self._timed(forward, "teacher_forward")
            import torch

            trainer._forward_logits = lambda *a, **k: forward(*a, **k) if torch.is_grad_enabled() else teacher(*a, **k)

    def _timed(self, fn, key: str, inspect=None):
        def wrapper(*args, **kwargs):
            _sync()
            started = time.perf_counter()
            out = fn(*args, **kwargs)
            _sync()
            self._step[key] += time.perf_counter() - started
            if key == "training_step":
                self._train_end = time.perf_counter()
            if inspect is not None:
                inspect(args, out)
            return out

        return wrapper

    def _count_sft_tokens(self, args, out) -> None:
        self._step["tokens"] += int((args[1]["labels"] != -100).sum())

    def _count_trl_tokens(self, args, out) -> None:
        self._step["tokens"] += int(out["completion_mask"].sum())

    # transformers callback events
    def on_train_begin(self, args, state, control, trainer=None, **kwargs):
        self._last_end = time.perf_counter()

    def on_step_begin(self, args, state, control, **kwargs):
        pass

    def on_step_end(self, args, state, control, **kwargs):
        _sync()
        now, s = time.perf_counter(), self._step
        student = s["training_step"] - s["prepare"] - s["teacher_forward"]
        phases = {"generation": s["generation"], "teacher_forward": s["teacher_forward"],
                  "student_forward_backward": student, "optimizer": now - self._train_end}
        self.records.append({"seconds": now - self._last_end, **phases, "tokens": s["tokens"]})
        self._last_end, self._step = now, self._fresh()

    def __getattr__(self, name):  # every other callback event: nothing to do
        if name.startswith("on_"):
            return lambda *args, **kwargs: None
        raise AttributeError(name)


def summarise(records: list[dict], spec: dict, base_mb: float, loaded_mb: float, device) -> dict:
    """Medians over the measured steps; the phases are each phase's median, `other` what the step adds to them."""
    median = lambda key: statistics.median(r[key] for r in records)  # noqa: E731
    step = median("seconds")
    phases = {p: median(p) for p in PHASES[:4]}
    phases["other"] = max(0.0, step - sum(phases.values()))
    tokens = median("tokens")
    peak = peak_mb(device)
    return {"step_seconds": step, "phases": phases, "tokens_per_step": tokens, "tokens_per_second": tokens / step,
            "steps_seconds": [r["seconds"] for r in records], "peak_mb": peak,
            "train_mb": peak - (base_mb if device.type == "cpu" else 0.0), "rss_after_imports_mb": base_mb,
            "rss_after_load_mb": loaded_mb, "memory": "max allocated (GPU)" if device.type == "cuda" else "RSS high-water mark"}


def _sync() -> None:
    """On a GPU, wait for queued kernels, so a phase's time is its own."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def rss_mb() -> float:
    return _status_kb("VmRSS") / 1024


def peak_mb(device) -> float:
    if device.type == "cuda":
        import torch

        return torch.cuda.max_memory_allocated(device) / 2**20
    return _status_kb("VmHWM") / 1024


def _status_kb(field: str) -> float:
    """From /proc/self/status (Linux); elsewhere the high-water mark from getrusage stands in for both."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1])
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform == "darwin" else float(peak)


if __name__ == "__main__":
    main()
