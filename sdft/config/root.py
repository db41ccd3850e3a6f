"""The whole configuration of a command, its cross-section checks, and loading it from YAML + overrides."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdft.config.collm import CollmConfig, collm_checks
from sdft.config.mapping import apply_override, from_mapping
from sdft.config.sections import (EMBEDDED_TASKS, CheckConfig, EvalConfig, LoraConfig, ModelConfig, SamplingConfig,
                                  TaskSourceConfig)
from sdft.config.training import SequenceConfig, TrainConfig
from sdft.config.seal import SealConfig, seal_checks
from sdft.config.ttt import TTTConfig, ttt_checks
from sdft.config.yamlfile import read_yaml_mapping
from sdft.errors import UserError


@dataclass
class Config:
    """The whole configuration of a command."""

    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    tasks: list[str] = field(default_factory=lambda: list(EMBEDDED_TASKS))
    """The tasks of this experiment (a sequence trains them in this order)."""
    custom_tasks: list[str] = field(default_factory=list)
    """YAML files defining custom tasks (see README: custom tasks); their names join the registry."""
    task_sources: dict[str, TaskSourceConfig] = field(default_factory=dict)
    """Built-in task name (science, tools, medical, knowledge) -> where its data comes from; a task not listed
    uses the embedded miniature (see README: reproducing the paper)."""
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    check: CheckConfig = field(default_factory=CheckConfig)
    sequence: SequenceConfig = field(default_factory=SequenceConfig)
    ttt: TTTConfig = field(default_factory=TTTConfig)
    collm: CollmConfig = field(default_factory=CollmConfig)
    seal: SealConfig = field(default_factory=SealConfig)
    seed: int = 0
    output_root: str = "runs"
    """Where run folders go when a command gets no --output."""

    def validate(self) -> "Config":
        """Reject contradictory settings before anything expensive happens."""
        for failed, message in _checks(self):
            if failed:
                raise UserError(message)
        return self


def _sampling_checks(sampling: SamplingConfig, key: str) -> list[tuple[bool, str]]:
    return [
        (sampling.temperature < 0, f"{key}.temperature must be >= 0"),
        (not 0 < sampling.top_p <= 1, f"{key}.top_p must be in (0, 1]"),
    ]


def _checks(cfg: Config) -> list[tuple[bool, str]]:
    ev, train, judge = cfg.eval, cfg.train, cfg.eval.judge
    return [
        *_sampling_checks(ev.sampling, "eval.sampling"),
        (ev.samples > 1 and ev.sampling.temperature == 0, "eval.samples > 1 needs eval.sampling.temperature > 0 (greedy decoding gives the same completion every time)"),
        (min(ev.max_new_tokens, ev.batch_size, ev.samples) < 1, "eval.max_new_tokens, eval.batch_size and eval.samples must be >= 1"),
        (ev.limit is not None and ev.limit < 1, "eval.limit must be >= 1 or null"),
        (judge.max_retries < 0 or judge.timeout_s <= 0 or judge.concurrency < 1 or judge.batch_size < 1, "eval.judge.max_retries must be >= 0, timeout_s > 0, concurrency and batch_size >= 1"),
        *_sampling_checks(train.rollout, "train.rollout"),
        (train.rollout.temperature <= 0, "train.rollout.temperature must be > 0: SDFT samples its rollouts"),
        (train.teacher == "ema" and not 0 < train.ema_rate <= 1, "train.ema_rate must be in (0, 1] when train.teacher is 'ema'"),
        (train.batch_size % train.gradient_accumulation != 0, "train.batch_size must be divisible by train.gradient_accumulation"),
        (train.steps < 1 or train.learning_rate <= 0, "train.steps and train.learning_rate must be positive"),
        (train.epochs is not None and train.epochs <= 0, "train.epochs must be > 0 or null"),
        (train.max_rows is not None and train.max_rows < 1, "train.max_rows must be >= 1 or null"),
        (train.reinvoke.steps < 1 or (train.reinvoke.learning_rate is not None and train.reinvoke.learning_rate <= 0),
         "train.reinvoke.steps must be >= 1 and train.reinvoke.learning_rate > 0 or null"),
        (min(train.checkpoint_every, train.log_every, train.keep_checkpoints) < 1, "train.checkpoint_every, log_every and keep_checkpoints must be >= 1"),
        *_trl_engine_checks(train),
        *_sharding_checks(cfg),
        *ttt_checks(cfg.ttt),
        *collm_checks(cfg.collm),
        *seal_checks(cfg.seal),
        ("sft_reinvoke" in (train.method, *cfg.sequence.methods) and not (train.reinvoke.tasks or ev.general),
         "train.method sft_reinvoke distils on general prompts, and both train.reinvoke.tasks and eval.general are "
         "empty: name a task whose prompts to use, e.g. --set train.reinvoke.tasks=[my_chat_prompts]"),
        (train.method == "seal" and cfg.lora.enabled,
         "train.method seal fits its own adapter per self-edit (seal.inner_lora) and merges it: set lora.enabled: false "
         "for it (in a sequence: sequence.method_overrides.seal: {lora.enabled: false})"),
        (cfg.lora.enabled and cfg.lora.r < 1, "lora.r must be >= 1"),
        (not cfg.tasks, "tasks must name at least one task"),
        (not cfg.sequence.methods or not cfg.sequence.seeds, "sequence.methods and sequence.seeds must not be empty"),
        (len(set(cfg.sequence.seeds)) != len(cfg.sequence.seeds), "sequence.seeds lists a seed twice"),
        (len(set(cfg.tasks)) != len(cfg.tasks), f"tasks lists a task twice: {cfg.tasks}"),
    ]


def _trl_engine_checks(train: TrainConfig) -> list[tuple[bool, str]]:
    """What TRL's SDFTTrainer cannot express (sdft/methods/trl_engine.py maps the rest): refused here, so that a
    run stops before any model loads and `--dry-run` says so."""
    if train.engine != "trl":
        return []
    loss = train.loss
    return [
        (train.method != "sdft", "train.engine 'trl' runs TRL's SDFT trainer: it needs train.method 'sdft'"),
        (loss.top_k is not None and loss.topk_source != "student",
         f"train.loss.topk_source='{loss.topk_source}' is not supported by engine trl: TRL takes the top-k of the "
         "student's distribution (set train.loss.topk_source=student, or train.loss.top_k=null)"),
        (not train.capped_completions_in_loss,
         "train.capped_completions_in_loss=false is not supported by engine trl: TRL keeps completions that hit "
         "train.max_completion_tokens in the loss"),
        (train.rollout.backend != "native",
         "train.rollout.backend is not used by engine trl: TRL samples with its own generate (keep 'native')"),
    ]


SHARDED_METHODS = ("sdft", "sft", "dft")
"""The methods whose training runs in the native loop, which is what train.sharding=fsdp shards (sdft/distributed.py)."""


def _sharding_checks(cfg: Config) -> list[tuple[bool, str]]:
    """What train.sharding=fsdp cannot serve, refused before any model loads (`--dry-run` says so too)."""
    train = cfg.train
    if train.sharding != "fsdp":
        return []
    methods = sorted({train.method, *cfg.sequence.methods} - set(SHARDED_METHODS))
    return [
        (train.engine != "native", "train.sharding=fsdp shards the native loop: set train.engine=native"),
        (bool(methods), (f"train.sharding=fsdp serves train.method {'/'.join(SHARDED_METHODS)}, not {methods}; "
                         "run those without it (train.sharding=none)")),
        (cfg.lora.enabled and train.teacher == "ema" and train.lora_ema == "update",
         ("train.sharding=fsdp cannot serve train.lora_ema=update (its fp32 update per layer is a full matrix that "
          "would be gathered whole on every process): use train.lora_ema=adapter, or train.sharding=none")),
    ]


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file (if any), then `a.b=value` overrides; validated."""
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        data, source = read_yaml_mapping(Path(path), "config file"), str(path)
    cfg = from_mapping(Config, data, source)
    for override in overrides or []:
        cfg = apply_override(cfg, override)
    return cfg.validate()


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Every field, defaults included: what goes into a run folder's config.yaml."""
    return dataclasses.asdict(cfg)
