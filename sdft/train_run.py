"""`sdft train`: one stage. Evaluate the base model, train with the config's method, evaluate again, and
write results.json {"task", "method", "before", "after", ...} into the run folder."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Callable

from sdft.adapters import wrap_with_lora
from sdft.config import Config
from sdft.errors import UserError
from sdft.methods.harness import StageResult
from sdft.methods.stage import Stage
from sdft.models import load_model, process_state
from sdft.eval_service import EvalService, require_judge, world_of
from sdft.runs import atomic_write_json, new_run_dir, read_json, write_lineage, write_run_header
from sdft.tasks.registry import load_tasks, require_known, task_registry

BEFORE_FILE = "eval_before.json"


def trainer_for(cfg: Config) -> Callable[[Stage], StageResult]:
    """The training function for (engine, method), with train.epochs turned into steps for the stage's data."""
    train = _trainer(cfg)

    def run(stage: Stage) -> StageResult:
        cfg = with_epochs_as_steps(stage.cfg, stage.task, stage.loaded.tokenizer)
        return train(dataclasses.replace(stage, cfg=cfg))

    return run


def with_epochs_as_steps(cfg: Config, task, tokenizer) -> Config:
    """cfg with train.steps = ceil(epochs x units / batch_size) when train.epochs is set (units: rows, or
    corpus blocks for cpt); unchanged otherwise."""
    if cfg.train.epochs is None:
        return cfg
    units = training_units(cfg, task, tokenizer)
    steps = max(1, math.ceil(cfg.train.epochs * units / cfg.train.batch_size))
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=steps))


def training_units(cfg: Config, task, tokenizer) -> int:
    """What one epoch passes over: the training rows, or for cpt the corpus blocks."""
    if cfg.train.method == "cpt":
        from sdft.methods.cpt import corpus_blocks

        return len(corpus_blocks(task, tokenizer, cfg.train.max_completion_tokens))
    rows = task.split(cfg.train.split)
    return len(rows[: cfg.train.max_rows] if cfg.train.max_rows else rows)


def _trainer(cfg: Config) -> Callable[[Stage], StageResult]:
    # Imported lazily: TRL is slow to import.
    if cfg.train.method == "cpt":
        from sdft.methods.cpt import train_cpt

        return train_cpt
    if cfg.train.engine == "trl":
        from sdft.methods.trl_engine import train_trl_sdft

        return train_trl_sdft
    if cfg.train.method == "sdft":
        from sdft.methods.sdft import train_sdft

        return train_sdft
    from sdft.methods.sft import train_sft

    return train_sft


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
    run_dir = new_run_dir(output, "train", cfg)
    loaded = load_model(cfg.model)
    cfg = with_epochs_as_steps(cfg, task, loaded.tokenizer)  # config.yaml then shows the steps that run
    evaluate = cfg.train.evaluate and main
    if main:
        write_run_header(run_dir, cfg, "train", str(loaded.device))
        write_lineage(run_dir, cfg.model.name_or_path, task.name, cfg.train.method)
    service = EvalService(cfg, general)
    before = _before(loaded, service, task, run_dir) if evaluate else None
    if cfg.lora.enabled:
        loaded.model = wrap_with_lora(loaded.model, cfg.lora)
    result = trainer_for(cfg)(Stage(cfg, loaded, task, run_dir, resume))
    after = service.score(loaded, [task]) if evaluate else None
    results = {
        "task": task.name,
        "task_version": task.version,
        "method": cfg.train.method,
        "engine": cfg.train.engine,
        "teacher": cfg.train.teacher if cfg.train.method == "sdft" else None,
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


def _before(loaded, service: EvalService, task, run_dir: Path) -> dict:
    """The base model's scores; kept in the run folder so a resumed run does not re-evaluate it."""
    path = run_dir / BEFORE_FILE
    if path.is_file():
        return read_json(path)
    scores = service.score(loaded, [task])
    atomic_write_json(path, scores)
    return scores
