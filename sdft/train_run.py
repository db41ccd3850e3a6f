"""`sdft train`: one stage. Evaluate the base model, train with the config's method, evaluate again, and
write results.json {"task", "method", "before", "after", ...} into the run folder."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from sdft.adapters import wrap_with_lora
from sdft.claim import claim_new, claim_resume
from sdft.config import Config, vocabulary_problems
from sdft.distributed import require_same_world, world_size
from sdft.errors import UserError
from sdft.methods.harness import StageResult, per_device_batch_size
from sdft.methods.registry import method_of
from sdft.methods.tokens import row_lengths, rows_within_caps
from sdft.methods.stage import CHECKPOINT_DIR, Stage, holds_checkpoint
from sdft.models import load_model, model_vocabulary, process_state
from sdft.eval_service import EvalService, require_judge, world_of
from sdft.runs import atomic_write_json, read_json, write_lineage, write_run_header
from sdft.tasks.registry import load_tasks, require_known, task_registry

BEFORE_FILE = "eval_before.json"


def open_stage(cfg: Config, task, run_dir: Path, command: str, resume: bool, main: bool = True) -> Stage:
    """A stage ready to train: its start model loaded, train.epochs turned into steps for its data, and (on the main
    process) env.json, config.yaml and lineage.json written. `resume`: the folder holds an earlier attempt of this
    stage (claimed by the caller), which continues from its newest whole checkpoint, or from the start when it was
    stopped before its first. `sdft train` and every stage of `sdft sequence` start here."""
    if resume and cfg.train.sharding == "fsdp":
        require_same_world(run_dir / CHECKPOINT_DIR, world_size(cfg.model))  # before the model loads
    loaded = load_model(cfg.model)
    cfg = with_epochs_as_steps(cfg, task, loaded.tokenizer)  # config.yaml then shows the steps that run
    if main:
        write_run_header(run_dir, cfg, command, str(loaded.device), resumed=resume)
        write_lineage(run_dir, cfg.model.name_or_path, task.name, cfg.train.method)
    # any phase's checkpoint counts (sft_reinvoke keeps its SFT phase's under sft/checkpoints)
    phases = [run_dir / CHECKPOINT_DIR, *run_dir.glob(f"*/{CHECKPOINT_DIR}")]
    return Stage(cfg, loaded, task, run_dir, resume and any(holds_checkpoint(d) for d in phases))


def train_stage(stage: Stage) -> StageResult:
    """Wrap the model with fresh LoRA adapters when lora.enabled, then train with the method's engine."""
    if stage.cfg.lora.enabled:
        stage.loaded.model = wrap_with_lora(stage.loaded.model, stage.cfg.lora, seed=stage.cfg.seed)
    return method_of(stage.cfg).trainer(stage.cfg.train.engine)(stage)


def with_epochs_as_steps(cfg: Config, task, tokenizer) -> Config:
    """cfg with train.steps = ceil(epochs x units / batch_size) when train.epochs is set (units: what the method's
    epoch passes over, methods/registry.py); unchanged otherwise."""
    if cfg.train.epochs is None:
        return cfg
    method = method_of(cfg)
    steps = method.steps(cfg.train, method.count_units(cfg, task, tokenizer))
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=steps))


def run_train(cfg: Config, output: str | Path | None, resume: bool = False) -> tuple[dict, Path]:
    """Under `accelerate launch` every process trains; only the main one evaluates and writes results."""
    if cfg.model.dtype == "float16":
        raise UserError("model.dtype float16 cannot train safely (no loss scaling here); use bfloat16 or float32")
    processes = process_state(cfg.model)
    main = processes.is_main_process
    registry = task_registry(cfg.custom_tasks, cfg.task_sources)
    general_names = cfg.eval.general if cfg.train.evaluate else []
    require_known([cfg.train.task, *general_names], registry)
    if output is None and (resume or processes.num_processes > 1):
        raise UserError("--resume and `accelerate launch` need --output: the one run folder every process uses")
    (task,), general = load_tasks([cfg.train.task], registry), load_tasks(general_names, registry)
    if cfg.train.evaluate:
        require_judge(cfg, [task, *general])
    require_fits_model([cfg])
    per_device_batch_size(cfg.train, processes.num_processes)  # the batch splits over the processes, or one line
    claim = claim_resume(output, "train", cfg) if resume else claim_new(output, "train", cfg)
    processes.wait_for_everyone()  # every process has checked the folder before the main one writes into it
    run_dir = claim.run_dir
    stage = open_stage(cfg, task, run_dir, "train", claim.resuming, main)
    cfg, evaluate = stage.cfg, cfg.train.evaluate and main
    service = EvalService(cfg, general)
    require_rows_fit(stage)
    before = _before(stage.loaded, service, task, run_dir) if evaluate else None
    result = train_stage(stage)
    after = service.score(stage.loaded, [task]) if evaluate else None
    results = {
        "task": task.name,
        "task_version": task.version,
        "method": cfg.train.method,
        "engine": cfg.train.engine,
        "teacher": method_of(cfg).teacher_kind(cfg.train),
        "model": cfg.model.name_or_path,
        "world": world_of(cfg.model.name_or_path, [task, *general]),
        "steps": result.steps,
        "final_metrics": result.metrics,
        "before": before,
        "after": after,
    }
    if main:
        atomic_write_json(run_dir / "results.json", results)
    return results, run_dir


def require_fits_model(cfgs: list[Config]) -> None:
    """Settings that do not fit the model (its vocabulary, from config.json) stop here, before any weight loads."""
    vocab = model_vocabulary(cfgs[0].model)
    problems = [p for c in cfgs for p in vocabulary_problems(c.train, vocab)] if vocab is not None else []
    if problems:
        raise UserError(problems[0])


def require_rows_fit(stage: Stage) -> None:
    """With train.overlong_prompts=error, a training row over a length cap stops the run here, before the base
    evaluation, rather than when training starts (the trainers check again; with 'skip' they count the skips)."""
    train, caps = stage.cfg.train, method_of(stage.cfg).caps
    if train.overlong_prompts != "error" or not caps:
        return
    lengths = row_lengths(stage.train_rows(), stage.task, stage.loaded.tokenizer, caps)
    rows_within_caps(stage.task.name, train, [dict(zip(lengths, row)) for row in zip(*lengths.values())])


def _before(loaded, service: EvalService, task, run_dir: Path) -> dict:
    """The base model's scores; kept in the run folder so a resumed run does not re-evaluate it."""
    path = run_dir / BEFORE_FILE
    if path.is_file():
        return read_json(path)
    scores = service.score(loaded, [task])
    atomic_write_json(path, scores)
    return scores
