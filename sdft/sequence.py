"""`sdft sequence`: learn tasks one after another and evaluate every task after every stage.

For each method and seed a chain of stages runs: stage k trains task k starting from stage k-1's weights
(the SDFT teacher is a copy of that stage-start student; a LoRA adapter is merged before the next stage
adds a fresh one). Row 0 of the accuracy matrix is the base model, row k the model after stage k; every
task and the general suite are evaluated for every row. Everything lands in one folder:

  <run>/base.json                             row 0 (greedy evaluation is the same for every chain)
  <run>/<method>/seed-<s>/stage-<k>-<task>/   a train run folder (checkpoints, metrics.jsonl, model/)
                                    .../row.json  that stage's evaluation: written last, marks it done
  <run>/results.json, report.md, *.png

Re-running the same command on the same folder resumes: finished stages are skipped, an interrupted
stage continues from its newest checkpoint, so the results equal an uninterrupted run's.

Under a launcher (`torchrun`, `accelerate launch`: DDP, or train.sharding=fsdp) every process trains every stage and
only the main one evaluates and writes; the processes meet before each stage, so all of them see its row.json (a
finished stage) and the model it starts from.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from sdft.adapters import merge_and_save
from sdft.claim import claim_sequence
from sdft.config import Config, ModelConfig, config_to_dict
from sdft.config.mapping import apply_override
from sdft.console import console
from sdft.errors import UserError
from sdft.metrics import DEFINITIONS, all_metrics, forgetting_per_task, mean_ci95_of_present
from sdft.eval_service import EvalService, world_of
from sdft.knowledge_table import knowledge_table
from sdft.methods.harness import per_device_batch_size
from sdft.methods.registry import METHODS
from sdft.models import LoadedModel, load_model, process_state, resolve_device
from sdft.runs import ENV_FILE, atomic_write_json, read_json, write_run_header
from sdft.tasks.registry import load_tasks, require_known, task_registry
from sdft.tasks.spec import TaskSpec
from sdft.train_run import open_stage, require_fits_model, train_stage


@dataclass
class SequencePlan:
    cfg: Config
    tasks: list[TaskSpec]
    general: list[TaskSpec]
    run_dir: Path
    resuming: bool = False
    """The folder holds an earlier run of this sequence (sdft/claim.py checked that its config allows going on)."""
    also: list[TaskSpec] = field(default_factory=list)
    """`eval.tasks` beyond the chain's: evaluated in every row, never trained (e.g. knowledge_ood, knowledge_oracle)."""
    service: EvalService = field(init=False)
    """The run's evaluation service: one judge and the caches for every row of every chain."""

    def __post_init__(self) -> None:
        self.service = EvalService(self.cfg, self.general)


def check_sequence(cfg: Config, registry: dict) -> None:
    """Every name and every per-stage and per-method override, before anything trains (the run and its dry run)."""
    require_known([*cfg.tasks, *cfg.eval.general], registry)
    require_known(cfg.eval.tasks, registry)
    unknown = set(cfg.sequence.stages) - set(cfg.tasks)
    if unknown:
        raise UserError(f"sequence.stages names {sorted(unknown)}, which are not tasks of this sequence {cfg.tasks}")
    # A config may keep overrides for methods the command line leaves out (--set sequence.methods=[sdft]); a name
    # that is no method at all is a typo.
    unknown = set(cfg.sequence.method_overrides) - set(METHODS)
    if unknown:
        raise UserError(f"sequence.method_overrides names {sorted(unknown)}, which are not methods "
                        f"(known: {', '.join(METHODS)})")
    for task in cfg.tasks:
        for method in {*cfg.sequence.methods, *cfg.sequence.method_overrides}:
            stage_config(cfg, task, method, cfg.sequence.seeds[0])


def plan_sequence(cfg: Config, output: str | Path | None) -> SequencePlan:
    registry = task_registry(cfg.custom_tasks, cfg.task_sources)
    check_sequence(cfg, registry)
    tasks, general = load_tasks(cfg.tasks, registry), load_tasks(cfg.eval.general, registry)
    also = load_tasks([t for t in cfg.eval.tasks if t not in cfg.tasks], registry)
    claim = claim_sequence(Path(output) if output else Path(cfg.output_root) / ("sequence-" + "-".join(cfg.tasks)), cfg)
    if claim.resuming:
        console.print(f"resuming the sequence in {claim.run_dir} (finished stages are reused)")
    return SequencePlan(cfg, tasks, general, claim.run_dir, claim.resuming, also)


def stage_config(cfg: Config, task: str, method: str, seed: int) -> Config:
    """The config of one stage: train.task/method and the seed set, then sequence.stages[task] and
    sequence.method_overrides[method] overrides."""
    stage = dataclasses.replace(cfg, seed=seed, train=dataclasses.replace(cfg.train, task=task, method=method))
    overrides = [(f"train.{key}", value) for key, value in cfg.sequence.stages.get(task, {}).items()]
    overrides += list(cfg.sequence.method_overrides.get(method, {}).items())
    for key, value in overrides:
        stage = apply_override(stage, f"{key}={yaml.safe_dump(value, default_flow_style=True).strip()}")
    return stage.validate()


def run_sequence(plan: SequencePlan) -> dict:
    """The header of a new folder first; a resumed one gets its config.yaml (chains added) with its results.json at
    the end, so that an interrupted extension leaves the earlier config and results side by side, both whole."""
    cfg, started = plan.cfg, time.perf_counter()
    stages = [stage_config(cfg, t.name, m, cfg.sequence.seeds[0]) for m in cfg.sequence.methods for t in plan.tasks]
    require_fits_model(stages)
    processes = process_state(cfg.model)
    for stage in stages:  # every stage's batch splits over the processes, or one line before anything loads
        per_device_batch_size(stage.train, processes.num_processes)
    device = str(resolve_device(cfg.model.device))
    processes.wait_for_everyone()  # every process has checked the folder before the main one writes into it
    if not plan.resuming and processes.is_main_process:
        write_run_header(plan.run_dir, cfg, "sequence", device)
    base = _cached_row(plan.run_dir / "base.json", lambda: _score_base(plan))
    chains = {m: {s: run_chain(plan, m, s, base) for s in cfg.sequence.seeds} for m in cfg.sequence.methods}
    if not processes.is_main_process:
        return {}
    results = aggregate(plan, chains, time.perf_counter() - started)
    from sdft.report import write_sequence_report

    write_sequence_report(results, plan.run_dir)  # report.md and plots first: results.json marks the run finished
    if plan.resuming:
        write_run_header(plan.run_dir, cfg, "sequence", device, resumed=True)
    atomic_write_json(plan.run_dir / "results.json", results)
    return results


def _score_base(plan: SequencePlan) -> dict | None:
    """Row 0: the base model, loaded only to be evaluated and freed on return (each stage loads its own start)."""
    if not process_state(plan.cfg.model).is_main_process:
        return None
    return plan.service.score(load_model(plan.cfg.model), plan.tasks + plan.also)


def run_chain(plan: SequencePlan, method: str, seed: int, base: dict) -> list[dict]:
    """Rows 0..T of one chain: train each stage from the previous stage's weights, then evaluate."""
    rows, model_cfg = [base], plan.cfg.model
    for k, task in enumerate(plan.tasks, start=1):
        stage_dir = plan.run_dir / method / f"seed-{seed}" / f"stage-{k}-{task.name}"
        process_state(model_cfg).wait_for_everyone()  # the previous stage's row.json and model are written
        console.rule(f"[bold]{method}[/] seed {seed}: stage {k}/{len(plan.tasks)}, {task.name}")
        rows.append(_cached_row(stage_dir / "row.json", lambda: _train_stage(plan, method, seed, task, stage_dir, model_cfg)))
        stage = stage_config(plan.cfg, task.name, method, seed)  # the stage's own lora (method_overrides may change it)
        model_cfg = dataclasses.replace(model_cfg, name_or_path=str(_stage_model_dir(stage, stage_dir)), revision=None)
    return rows


def stage_task(stage: Config, sequence: Config, task: TaskSpec) -> TaskSpec:
    """The task as this stage sees it: reloaded when a method override changed where (or how) its rows come from,
    e.g. SFT's teacher_context: answer."""
    if stage.task_sources == sequence.task_sources:
        return task
    return load_tasks([task.name], task_registry(stage.custom_tasks, stage.task_sources))[0]


def _train_stage(plan: SequencePlan, method: str, seed: int, task: TaskSpec, stage_dir: Path, model_cfg: ModelConfig) -> dict:
    cfg = dataclasses.replace(stage_config(plan.cfg, task.name, method, seed), model=model_cfg)
    task = stage_task(cfg, plan.cfg, task)
    earlier_attempt = (stage_dir / ENV_FILE).is_file()
    main = process_state(cfg.model).is_main_process
    stage = open_stage(cfg, task, stage_dir, "sequence-stage", earlier_attempt, main)
    loaded = stage.loaded
    train_stage(stage)
    if not main:
        return None  # only the main process evaluates and merges; the others wait at the next stage
    if cfg.lora.enabled:
        loaded.model = _merge(loaded, _stage_model_dir(cfg, stage_dir))
    return plan.service.score(loaded, plan.tasks + plan.also, seed=seed)  # the chain's seed, as its training


def _stage_model_dir(cfg: Config, stage_dir: Path) -> Path:
    """Where the next stage starts from: the trained model, or with LoRA the merged one."""
    return stage_dir / ("merged" if cfg.lora.enabled else "model")


def _merge(loaded: LoadedModel, directory: Path):
    """Fold the stage's adapter into the weights, so 'adapter disabled' next stage means this stage's end."""
    return merge_and_save(loaded.model, loaded.tokenizer, directory)


def _cached_row(path: Path, compute) -> dict | None:
    """The row written in `path`, or computed and written (None on a process other than the main one)."""
    if path.is_file():
        return read_json(path)
    row = compute()
    if row is not None:
        atomic_write_json(path, row)
    return row


def matrix_of(plan: SequencePlan, rows: list[dict]) -> tuple[list[list[float]], list[float | None]]:
    matrix = [[row["scores"][t.name]["accuracy"] for t in plan.tasks] for row in rows]
    return matrix, [row["general"]["mean"] for row in rows]


def aggregate(plan: SequencePlan, chains: dict[str, dict[int, list[dict]]], elapsed: float) -> dict:
    methods = {method: _method_summary(plan, seeds) for method, seeds in chains.items()}
    table = knowledge_table([t.name for t in plan.tasks], chains)
    return {
        **({"knowledge_table": table} if table else {}),
        "also_evaluated": [t.name for t in plan.also],
        "world": world_of(plan.cfg.model.name_or_path, plan.tasks + plan.general),
        "tasks": [t.name for t in plan.tasks],
        "task_versions": {t.name: t.version for t in plan.tasks},
        "seeds": list(plan.cfg.sequence.seeds),
        "general_suite": [g.name for g in plan.general],
        "methods": methods,
        "definitions": DEFINITIONS,
        "elapsed_seconds": elapsed,
        "config": config_to_dict(plan.cfg),
    }


def _method_summary(plan: SequencePlan, seeds: dict[int, list[dict]]) -> dict:
    per_seed = {}
    for seed, rows in seeds.items():
        matrix, general = matrix_of(plan, rows)
        per_seed[str(seed)] = {"matrix": matrix, "general": general, "metrics": all_metrics(matrix, general),
                               "forgetting_per_task": forgetting_per_task(matrix)}
    runs = list(per_seed.values())
    also, also_ci = _cellwise([[[row["scores"][t.name]["accuracy"] for t in plan.also] for row in rows]
                               for rows in seeds.values()])
    matrix, matrix_ci = _cellwise([r["matrix"] for r in runs])
    (general,), (general_ci,) = _cellwise([[r["general"]] for r in runs])
    (forget,), (forget_ci,) = _cellwise([[r["forgetting_per_task"]] for r in runs])
    metrics = {k: mean_ci95_of_present([r["metrics"][k] for r in runs]) for k in runs[0]["metrics"]}
    return {
        "matrix": matrix, "matrix_ci95": matrix_ci, "general": general, "general_ci95": general_ci,
        "metrics": {k: v[0] for k, v in metrics.items()}, "metrics_ci95": {k: v[1] for k, v in metrics.items()},
        "forgetting_per_task": forget, "forgetting_per_task_ci95": forget_ci, "per_seed": per_seed,
        "also": also, "also_ci95": also_ci,  # rows x also_evaluated: accuracy of the tasks evaluated, not trained
    }


def _cellwise(grids: list[list[list]]) -> tuple[list[list], list[list]]:
    """Mean and CI half-width of every cell across seeds."""
    means, halves = [], []
    for r in range(len(grids[0])):
        cells = [mean_ci95_of_present([g[r][c] for g in grids]) for c in range(len(grids[0][r]))]
        means.append([m for m, _ in cells])
        halves.append([h for _, h in cells])
    return means, halves



