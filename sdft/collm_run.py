"""The command `sdft collm`: Co-LLM (METHOD.md 3.2). A base model learns, token by token, when to let an expert
write; the base's weights need not change, so nothing it knew is forgotten.

plan_collm checks everything it can before a model loads (tasks and their gold responses, the expert's tokenizer
against the base's, the settings). run_collm then runs the steps, each kept in the run folder and skipped or
resumed by a rerun on the same --output (sdft/collm_steps.py):

  expert/    the expert, when collm.expert is null: trained from the base with the config's `train` section
  scores/    the expert's log-probs of the gold tokens          init/, train/  the head's two phases (the loop)
  results.json, report.md, collm.csv, collm.png               base, expert and Co-LLM; the threshold sweep
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from sdft.claim import Claim, claim_continuing, earlier_command
from sdft.config import Config, ModelConfig
from sdft.console import err_console
from sdft.errors import UserError
from sdft.eval_service import EvalService, require_judge, world_of
from sdft.models import resolve_model_path
from sdft.tasks.registry import load_tasks, require_known, task_registry
from sdft.tasks.spec import TaskSpec

EXPERT_DIR = "expert"


@dataclass
class CollmPlan:
    cfg: Config
    tasks: list[TaskSpec]
    general: list[TaskSpec]
    claim: Claim | None
    """The run folder (None for a dry run); rerunning on it continues."""
    notes: list[str] = dataclasses.field(default_factory=list)
    """What a dry run could not check offline."""

    @property
    def run_dir(self) -> Path | None:
        return self.claim.run_dir if self.claim else None


def plan_collm(cfg: Config, output: str | Path | None, dry_run: bool = False) -> CollmPlan:
    """Everything checked that can be without loading a model; no run folder for a dry run."""
    c, ev = cfg.collm, cfg.eval
    if ev.harness.tasks:
        raise UserError("eval.harness: lm-evaluation-harness scores one model's log-likelihoods, and Co-LLM's answers "
                        "come from two models; name generative general tasks in eval.general instead")
    if ev.samples != 1 or ev.sampling.temperature != 0:
        raise UserError("sdft collm decodes greedily (the paper's decoding): set eval.sampling.temperature=0 and "
                        "eval.samples=1")
    registry = task_registry(cfg.custom_tasks, cfg.task_sources)
    names = c.tasks or cfg.tasks
    require_known([*names, *ev.general, *([cfg.train.task] if c.expert is None else [])], registry)
    unread = [n for n in [*names, *ev.general] if dry_run and getattr(cfg.task_sources.get(n), "source", "") == "hub"]
    tasks = load_tasks([n for n in names if n not in unread], registry)
    general = load_tasks([n for n in ev.general if n not in unread], registry)
    for task in [*tasks, *(general if c.general_rows else [])]:
        require_gold(task, c.split)
    require_judge(cfg, [*tasks, *general])
    notes = [f"{n}: hub data is not fetched in a dry run" for n in unread]
    if c.expert is not None:
        expert = dataclasses.replace(cfg.model, name_or_path=c.expert)
        if resolve_model_path(c.expert) == resolve_model_path(cfg.model.name_or_path):
            err_console.print(f"[yellow]collm.expert '{c.expert}' is the base model itself: the deferral is pointless "
                              "(both write the same tokens); running anyway[/]")
        try:
            require_shared_tokenizer(cfg.model, expert)
        except UserError as err:
            if not (dry_run and "could not load the tokenizer" in str(err)):
                raise
            notes.append(f"the tokenizers: {err} (offline)")
    claim = None if dry_run else claim_continuing(output, "collm", cfg)
    return CollmPlan(cfg, tasks, general, claim, notes)


def require_gold(task: TaskSpec, split: str) -> None:
    """Co-LLM learns the deferral from gold responses: a task needs rows with demonstrations in `split`."""
    rows = task.splits.get(split, [])
    if not rows or any(not r.demonstration.strip() for r in rows):
        raise UserError(f"task '{task.name}' has no gold responses in split '{split}' (its splits: "
                        f"{', '.join(sorted(task.splits))}); sdft collm trains the deferral on demonstrations: set "
                        "collm.split, or name a task that has them")


def require_shared_tokenizer(base: ModelConfig, expert: ModelConfig) -> None:
    """The pair hands token ids to each other: the same vocabulary (token -> id) and the same special tokens, read
    from the tokenizer files before any weight loads."""
    from transformers import AutoTokenizer

    from sdft.models import _LOAD_ERRORS, load_problem

    tokenizers = []
    for cfg in (base, expert):
        try:
            tokenizers.append(AutoTokenizer.from_pretrained(resolve_model_path(cfg.name_or_path),
                                                            revision=cfg.revision,
                                                            trust_remote_code=cfg.trust_remote_code))
        except _LOAD_ERRORS as err:
            raise UserError(f"could not load the tokenizer of '{cfg.name_or_path}': {load_problem(err)}") from err
    a, b = tokenizers
    special = lambda t: (t.eos_token_id, t.bos_token_id, t.pad_token_id or t.eos_token_id)
    if a.get_vocab() != b.get_vocab() or special(a) != special(b):
        what = "special tokens" if a.get_vocab() == b.get_vocab() else f"vocabularies ({len(a)} and {len(b)} tokens)"
        raise UserError(f"the base '{base.name_or_path}' and the expert '{expert.name_or_path}' do not share a "
                        f"tokenizer (different {what}); Co-LLM hands token ids between them: pick an expert of the "
                        "base's family")


def train_expert(cfg: Config, run_dir: Path) -> str:
    """The expert when collm.expert is null: `sdft train` with the config's train section in run_dir/expert/, reused
    once finished, resumed when a run was cut off (its own evaluation is left to this command's)."""
    from sdft.train_run import run_train

    folder = run_dir / EXPERT_DIR
    if not (folder / "results.json").is_file():
        train = dataclasses.replace(cfg.train, evaluate=False, max_rows=expert_rows(cfg))
        run_train(dataclasses.replace(cfg, train=train), folder, resume=earlier_command(folder) == "train")
    return str(folder)


def expert_rows(cfg: Config) -> int | None:
    """The expert never trains on the rows that choose the threshold: when it learns a Co-LLM task from the split the
    head trains on, its rows stop before that task's validation rows (collm_steps.split_rows: the last
    validation_rows of the first collm.max_rows)."""
    c, t = cfg.collm, cfg.train
    if t.task not in (c.tasks or cfg.tasks) or t.split != c.split:
        return t.max_rows
    registry = task_registry(cfg.custom_tasks, cfg.task_sources)
    available = len(registry[t.task]().rows(c.split, c.max_rows))
    return min(t.max_rows or available, available - c.validation_rows)


def run_collm(plan: CollmPlan) -> dict:
    from sdft.collm_eval import evaluate_systems
    from sdft.collm_train import train_deferral
    from sdft.models import load_model, resolve_device
    from sdft.report.collm import write_collm_report
    from sdft.runs import atomic_write_json, write_run_header

    cfg, run_dir = plan.cfg, plan.run_dir
    write_run_header(run_dir, cfg, "collm", str(resolve_device(cfg.model.device)), resumed=plan.claim.resuming)
    expert_name = cfg.collm.expert or train_expert(cfg, run_dir)
    service = EvalService(cfg, plan.general)
    base = load_model(cfg.model)
    expert = load_model(dataclasses.replace(cfg.model, name_or_path=expert_name))
    systems = {"base": service.score(base, plan.tasks), "expert": service.score(expert, plan.tasks)}
    trained = train_deferral(cfg, run_dir, plan, base, expert, service)
    results = {
        "world": world_of(cfg.model.name_or_path, [*plan.tasks, *plan.general]),
        "base_model": cfg.model.name_or_path, "expert_model": expert_name, "expert_trained": cfg.collm.expert is None,
        "tasks": [t.name for t in plan.tasks], "general_suite": [g.name for g in plan.general],
        "train_base": cfg.collm.train_base, "strategy": cfg.collm.strategy, **trained.summary(),
        **evaluate_systems(cfg, plan, service, trained, systems),
    }
    atomic_write_json(run_dir / "results.json", results)
    write_collm_report(run_dir, results)
    return results


def dry_run_lines(plan: CollmPlan) -> list[str]:
    """What `sdft collm --dry-run` prints: the checked inputs and the plan, from the config alone (no weights)."""
    from sdft.collm_steps import phase_config, split_rows

    cfg, c = plan.cfg, plan.cfg.collm
    expert = (f"expert {c.expert} (tokenizer shared with the base)" if c.expert is not None else
              f"expert: trained first from the base by `train` ({cfg.train.method} on {cfg.train.task}, "
              f"{f'{cfg.train.steps} steps' if cfg.train.epochs is None else f'{cfg.train.epochs:g} epochs'}; kept in <run>/expert/)")
    lines = [f"world {world_of(cfg.model.name_or_path, [*plan.tasks, *plan.general])}, base {cfg.model.name_or_path}",
             expert, *[f"not checked: {note}" for note in plan.notes]]
    rows = 0
    for task in [*plan.tasks, *(plan.general if c.general_rows else [])]:
        train, validation = split_rows(cfg, task, general=task in plan.general)
        rows += len(train)
        targets = "base answers (where right)" if task in plan.general and c.general_targets == "base" else "demonstrations"
        lines.append(f"task {task.name} (v{task.version}): {len(train)} training rows ({targets}), "
                     f"{len(validation)} validation rows of split {c.split}")
    train = phase_config(cfg, "train", max(rows, 1)).train
    # the base's answers are kept only where right, which only the run knows: the count is then an upper bound
    bound = "up to " if c.general_rows and c.general_targets == "base" and c.epochs is not None else ""
    steps = (f"{c.epochs:g} epochs of" if plan.notes and c.epochs is not None else f"{bound}{train.steps} steps of")
    lines += [f"head: {c.init_steps} weak-label steps (BCE, positive weight {c.pos_weight:g}, lr {c.init_learning_rate:g}), "
              f"then marginal likelihood, {steps} {c.batch_size} rows (base {c.train_base}, lr {c.learning_rate:g}, "
              f"linear, {c.warmup_ratio:.0%} warm-up)",
              ("threshold: fixed at " + f"{c.threshold:g}" if c.threshold is not None else
               f"threshold: {len(c.quantiles)} deferral-rate quantiles + the ROC-optimal point, decoded on the validation rows"),
              f"decoding: greedy, strategy {c.strategy}, up to {cfg.eval.max_new_tokens} tokens; evaluated: "
              f"{', '.join(c.tasks or cfg.tasks)} and the general suite ({', '.join(g.name for g in plan.general) or 'none'})"]
    return lines
