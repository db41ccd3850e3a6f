"""`--dry-run`: check everything that can be checked offline and say what a run would do, without loading
weights or contacting anything.

Checked: the config; task names and sources; local and embedded data (read and validated row by row);
the judge settings of judge-graded tasks; the model's config.json (a local folder, a run folder, the
embedded model, or a hub id already in the local Hugging Face cache). Hub datasets are not fetched (a dry
run is offline): they are listed with their pinned revision. Printed: rows, optimizer steps, tokens per step
at the length caps, and a rough memory estimate from the model's shapes (built on the meta device).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sdft.config import Config, vocabulary_problems
from sdft.errors import UserError
from sdft.judge import judge_problem
from sdft.methods.registry import METHODS, method_of
from sdft.scoring import is_judged
from sdft.tasks.registry import load_tasks, require_known, task_registry

GB = 1024**3
_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
ACTIVATION_BYTES_PER_TOKEN_LAYER_HIDDEN = 34
"""Stored activations per token, layer and hidden unit in 16-bit training without recomputation (Korthikanti
et al. 2022, attention scores excluded as fused kernels do not keep them); a rough guide, doubled for fp32."""


@dataclass
class StagePlan:
    task: str
    method: str
    data: str
    rows: int | None
    steps: int | None
    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


@dataclass
class DryRun:
    stages: list[StagePlan]
    model: list[str]
    problems: list[str]
    notes: list[str]


def dry_run_train(cfg: Config, processes: int = 1) -> DryRun:
    return _dry_run(cfg, [cfg], processes)


def dry_run_sequence(cfg: Config, processes: int = 1) -> DryRun:
    from sdft.sequence import check_sequence, stage_config

    check_sequence(cfg, task_registry(cfg.custom_tasks, cfg.task_sources))
    seed = cfg.sequence.seeds[0]
    stages = [stage_config(cfg, task, method, seed) for method in cfg.sequence.methods for task in cfg.tasks]
    return _dry_run(cfg, stages, processes)


def _stage_rows(stage: Config, cfg: Config, loaded: dict):
    """The stage's task as it would train on it (a method override may change its source), None when not read."""
    from sdft.sequence import stage_task

    task = loaded.get(stage.train.task)
    return None if task is None else stage_task(stage, cfg, task)


def _dry_run(cfg: Config, stages: list[Config], processes: int = 1) -> DryRun:
    """`processes`: the launch's process count (--processes), for the batch split and the memory per process."""
    registry = task_registry(cfg.custom_tasks, cfg.task_sources)
    evaluated = [*dict.fromkeys([s.train.task for s in stages] + (cfg.tasks if len(stages) > 1 else []))]
    require_known([*evaluated, *cfg.eval.general], registry)
    notes, problems, loaded = [], [], {}
    for name in evaluated:
        src = cfg.task_sources.get(name)
        if src is not None and src.source == "hub":
            notes.append(_hub_note(name, src))
        else:
            (loaded[name],) = load_tasks([name], registry)  # reads and validates every row
    judged = [n for n in evaluated if _is_judged(n, loaded)]
    if judged and (stages[0].train.evaluate or len(stages) > 1):
        problem = judge_problem(cfg.eval.judge)
        if problem:
            problems.append(f"{', '.join(judged)}: graded by an LLM judge, but {problem}")
    shapes, tokenizer = model_shapes(cfg), offline_tokenizer(cfg)
    model_lines = shapes.describe() if isinstance(shapes, ModelShapes) else [shapes]
    if tokenizer is None:
        notes.append("prompt lengths: the tokenizer is not available offline, so rows are not checked against the caps")
    plans = [_stage_plan(s, _stage_rows(s, cfg, loaded), shapes, tokenizer, processes) for s in stages]
    return DryRun(plans, model_lines, problems, notes)


HUB_SCORERS = {"science": "multiple_choice", "tools": "tool_call", "medical": "judge_medical"}
"""The scorers of the tasks a dry run does not read (hub sources): fixed by each task's module."""


def _is_judged(name: str, loaded: dict) -> bool:
    return is_judged(loaded[name].scorer if name in loaded else HUB_SCORERS.get(name, ""))


def _hub_note(name: str, src) -> str:
    from sdft.tasks.paper import medical, science

    published = {"science": (science.HUB_ID, science.HUB_REVISION), "medical": (medical.TRAIN_HUB, None)}
    hub, revision = published.get(name, (src.hub, None))
    hub, revision = src.hub or hub, src.revision or revision
    pin = f"@{revision}" if revision else " (unpinned: the hub's default branch)"
    return f"{name}: hub dataset {hub}{pin} is not fetched in a dry run; rows and steps follow when it is"


# --- the model's shapes and the memory estimate -------------------------------------------------------

@dataclass
class ModelShapes:
    name: str
    params: int
    hidden: int
    layers: int
    vocab: int
    lora_params: dict[str, int]
    """rank-1 LoRA parameter count per target module name (multiply by r)."""
    linear_weights: dict[str, int]
    """Weight count of the Linear layers per module name (what train.lora_ema=update shadows)."""

    def describe(self) -> list[str]:
        count = f"{self.params / 1e9:.2f}B" if self.params >= 1e9 else f"{self.params / 1e6:.2f}M"
        return [f"model {self.name}: {count} parameters, hidden {self.hidden}, "
                f"{self.layers} layers, vocabulary {self.vocab}"]


def model_shapes(cfg: Config) -> ModelShapes | str:
    """The model's shapes from its config.json, built on the meta device (no weights read); or a line
    saying why they are not available offline."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from sdft.models import resolve_model_path

    try:
        path = resolve_model_path(cfg.model.name_or_path)
        config = AutoConfig.from_pretrained(path, revision=cfg.model.revision, local_files_only=True,
                                            trust_remote_code=cfg.model.trust_remote_code)
    except OSError as err:  # transformers words a cache miss as a failed connection; nothing was fetched
        if Path(cfg.model.name_or_path).expanduser().is_dir():
            return (f"model {cfg.model.name_or_path}: its config.json cannot be read ({str(err).splitlines()[0]}); "
                    "parameters and memory are not estimated")
        return (f"model {cfg.model.name_or_path}: its config.json is not available offline (not a local folder, not in "
                "the Hugging Face cache; a dry run downloads nothing); parameters and memory are not estimated "
                "(download it, or point model.name_or_path at a local folder)")
    except ValueError as err:
        return (f"model {cfg.model.name_or_path}: its config.json cannot be read ({str(err).splitlines()[0]}); "
                "parameters and memory are not estimated")
    except UserError as err:  # no such folder, a folder without a model, ...: its own words
        return f"{err}; parameters and memory are not estimated"
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=cfg.model.trust_remote_code)
    text = config.get_text_config()
    lora, weights = {}, {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            key = name.rsplit(".", 1)[-1]
            lora[key] = lora.get(key, 0) + module.in_features + module.out_features
            weights[key] = weights.get(key, 0) + module.in_features * module.out_features
    params = sum(p.numel() for p in model.parameters())
    return ModelShapes(cfg.model.name_or_path, params, text.hidden_size, text.num_hidden_layers,
                       text.vocab_size, lora, weights)


def memory_lines(cfg: Config, shapes: ModelShapes, processes: int = 1) -> list[str]:
    """A rough per-device memory estimate for one training stage, per process of a launch of `processes`: with
    train.sharding=fsdp the weights, gradients, optimizer states and teacher are split over them (sdft/distributed.py)
    and a rollout gathers the weights whole once; without, every process holds everything (DDP)."""
    train, size = cfg.train, _BYTES[cfg.model.dtype]
    lora = cfg.lora.enabled
    trainable = sum(v for k, v in shapes.lora_params.items() if k in cfg.lora.target_modules) * cfg.lora.r if lora else shapes.params
    parts = {"weights": shapes.params * size, "gradients": trainable * size,
             "AdamW states (2 per trainable parameter, its dtype)": 2 * trainable * size}
    method = method_of(cfg)
    if method.teacher:
        parts.update(teacher_memory(cfg, method.teacher_kind(train), shapes, trainable))
    if train.sharding == "fsdp":
        parts = {f"{name}, 1/{processes} shard": value / processes for name, value in parts.items()}
        parts.update(_gathered_weights(method, shapes, size))
    micro = max(1, train.batch_size // (train.gradient_accumulation * processes))
    seq = method.sequence_tokens(train)
    per_token = ACTIVATION_BYTES_PER_TOKEN_LAYER_HIDDEN * shapes.layers * shapes.hidden * size / 2
    parts[f"activations ({micro} x {seq} tokens, no recomputation)"] = micro * seq * per_token
    copies = method.logits_copies
    parts[f"logits ({copies} x [{micro}, {seq}, {shapes.vocab}])"] = copies * micro * seq * shapes.vocab * size
    lines = [f"  {name}: {_size(value)}" for name, value in parts.items()]
    launch = f"{processes} processes, train.sharding={train.sharding}" if processes > 1 else "one process"
    lines.append(f"  total, rough: {_size(sum(parts.values()))} per device ({launch}; rollout generation's KV cache "
                 "and allocator overhead not counted)")
    return lines


def _gathered_weights(method, shapes: ModelShapes, size: int) -> dict[str, float]:
    """What FSDP gathers at once: the whole student for a rollout (methods that sample), else two decoder layers
    (the one computing and the next one prefetched)."""
    if method.teacher:  # the methods with a teacher are the ones that sample rollouts
        return {"weights gathered whole for rollouts": shapes.params * size}
    return {"weights gathered per layer (2 layers)": 2 * shapes.params / max(1, shapes.layers) * size}


def teacher_memory(cfg: Config, kind: str, shapes: ModelShapes, trainable: int) -> dict[str, float]:
    """What a teacher of `kind` (frozen / ema / live) adds (methods/teacher.py's table): with LoRA, frozen costs
    nothing (the adapter is disabled) and EMA one fp32 shadow of what it averages; full fine-tuning keeps a copy."""
    train, size = cfg.train, _BYTES[cfg.model.dtype]
    if kind == "live":
        return {}
    if not cfg.lora.enabled:
        parts = {"teacher copy": shapes.params * size}
        return parts | ({"EMA shadow (fp32)": shapes.params * 4} if kind == "ema" else {})
    if kind == "frozen":
        return {}
    if train.lora_ema == "adapter":
        return {"EMA shadow of the adapters (fp32)": trainable * 4}
    covered = sum(v for k, v in shapes.linear_weights.items() if k in cfg.lora.target_modules)
    return {"EMA shadow of the adapted layers' updates (fp32, train.lora_ema=update)": covered * 4}


def _size(n_bytes: float) -> str:
    return f"{n_bytes / GB:.1f} GiB" if n_bytes >= GB else f"{n_bytes / 1024**2:.1f} MiB"


# --- one stage -----------------------------------------------------------------------------------------

def offline_tokenizer(cfg: Config):
    """The model's tokenizer when it is on disk (a local folder or the Hugging Face cache); else None."""
    from transformers import AutoTokenizer

    from sdft.models import resolve_model_path

    try:
        return AutoTokenizer.from_pretrained(resolve_model_path(cfg.model.name_or_path), revision=cfg.model.revision,
                                             local_files_only=True, trust_remote_code=cfg.model.trust_remote_code)
    except (OSError, ValueError, UserError):
        return None


def length_lines(cfg: Config, task, tokenizer) -> tuple[list[str], list[str]]:
    """(lines, problems): how many training rows exceed each length cap the method's rows meet (the caps training
    checks, methods/tokens.py); with train.overlong_prompts 'error' any such row is a problem (the run would stop on
    the first)."""
    from sdft.methods.tokens import CAP_KEYS, row_lengths

    if tokenizer.chat_template is None:
        return ["  prompt lengths: not checked (the tokenizer has no chat template)"], []
    t = cfg.train
    measured = row_lengths(task.rows(t.split, t.max_rows), task, tokenizer, method_of(cfg).caps)
    lines, problems = [], []
    for measure, lengths in measured.items():
        name, cap = CAP_KEYS[measure], getattr(t, CAP_KEYS[measure])
        label = f"{name} (demonstration + eos)" if measure == "completion" else name
        over = sum(n > cap for n in lengths)
        lines.append(f"  train.{label} {cap}: longest {max(lengths, default=0)}, {over} of {len(lengths)} rows over")
        if over and t.overlong_prompts == "error":
            problems.append(f"{task.name}: {over} training rows exceed train.{label}={cap}; the run would stop on "
                            "the first (raise the cap or set train.overlong_prompts=skip)")
    return lines, problems


def _stage_plan(cfg: Config, task, shapes: ModelShapes | str, tokenizer, processes: int = 1) -> StagePlan:
    train, method = cfg.train, method_of(cfg)
    units = method.count_units(cfg, task, tokenizer) if task is not None else None
    if method.steps_line is not None:
        steps, how = None, method.steps_line(cfg)
    elif train.epochs is None:
        steps, how = train.steps, f"{train.steps} (train.steps)"
    elif units is None:
        steps, how = None, f"{train.epochs:g} epochs x {method.unit} / {train.batch_size} ({method.unit} known once the data is read)"
    else:
        steps = method.steps(train, units)
        how = f"{steps} = ceil({train.epochs:g} epochs x {units} {method.unit.split()[-1]} / {train.batch_size})"
    plan = StagePlan(train.task, train.method, task.source if task else "hub (not fetched)", units, steps)
    plan.lines.append(f"  optimizer steps: {how}")
    plan.lines.append(f"  tokens per step, at the caps: {method.tokens_per_step(train)}")
    if task is not None and tokenizer is not None and method.caps:
        lines, plan.problems = length_lines(cfg, task, tokenizer)
        plan.lines.extend(lines)
    if processes > 1:
        from sdft.methods.harness import per_device_batch_size

        try:
            per_device_batch_size(train, processes)
        except UserError as err:
            plan.problems.append(str(err))
    if isinstance(shapes, ModelShapes):
        plan.problems.extend(vocabulary_problems(train, shapes.vocab))
        plan.lines.append("  memory estimate:")
        plan.lines.extend(memory_lines(cfg, shapes, processes))
    return plan


def print_dry_run(report: DryRun, console) -> None:
    console.print("[bold]dry run[/] (nothing is loaded or trained)")
    for line in report.model:
        console.print(line)
    for stage in report.stages:
        rows = "?" if stage.rows is None else stage.rows
        unit = "training rows" if METHODS[stage.method].unit == "rows" else METHODS[stage.method].unit
        console.print(f"[bold]{stage.method}[/] on {stage.task}: {rows} {unit} from {stage.data}")
        for line in stage.lines:
            console.print(line)
    for note in report.notes:
        console.print(f"[yellow]not checked:[/] {note}")
    problems = [*report.problems, *(p for stage in report.stages for p in stage.problems)]
    for problem in problems:
        console.print(f"[red]problem:[/] {problem}")
    if problems:
        raise UserError(f"the dry run found {len(problems)} problem(s); see above")
    console.print("[green]everything that can be checked offline is valid[/]")
