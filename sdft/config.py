"""Every knob of the toolkit, as dataclasses: the one home of every default.

YAML files and `--set a.b=value` overrides only change fields declared here. Loading is strict: an unknown
key fails with a did-you-mean, a wrong type names the key and the file, and contradictory settings fail
in `validate()` before any model is loaded.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from sdft.config_loading import apply_override, from_mapping
from sdft.errors import UserError
from sdft.judge import JudgeConfig  # the judge owns its knobs; it is a leaf module
from sdft.methods.losses import LossConfig  # the loss owns its knobs; it is a leaf module

EMBEDDED_MODEL = "embedded"
EMBEDDED_TASKS = ["science", "tools", "medical"]


@dataclass
class ModelConfig:
    """Which model to load and how."""

    name_or_path: str = EMBEDDED_MODEL
    """A hub id, a local Hugging Face folder, a run folder, or 'embedded' (the shipped tiny model)."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) to pin; None = the hub's default."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Weights dtype. bfloat16 halves memory on GPUs; keep float32 on CPU."""
    device: str = "auto"
    """'auto' (CUDA when available, else CPU), 'cpu', 'cuda' or 'cuda:N'."""
    trust_remote_code: bool = False
    """Run code shipped with a hub model. Off unless you trust its author."""


@dataclass
class LoraConfig:
    """Low-rank adapters (peft). Off = full fine-tuning."""

    enabled: bool = False
    r: int = 16
    """Adapter rank."""
    alpha: int = 32
    """Scaling numerator: the update is scaled by alpha / r."""
    dropout: float = 0.0
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    """Module names that get adapters (Llama/Qwen naming)."""
    ema: Literal["adapter", "update"] = "adapter"
    """What train.teacher=ema averages for a LoRA student (fp32 either way, starting from the stage start).
    adapter: the adapter's own weights A and B, as the full fine-tuning EMA averages the trainable weights (TRL and
    SDPO do the same); memory: one more adapter. update: each adapted layer's effective update scale * B @ A, the
    EMA of the weights the student computes with (B_ema @ A_ema is not that); memory: one fp32 matrix per adapted
    layer, 4 bytes per base weight it covers (about 26 GB for a 7B model with every linear layer adapted)."""


@dataclass
class GenerationConfig:
    """Decoding for evaluation."""

    max_new_tokens: int = 160
    """Cap on generated tokens; responses that hit it are counted and reported."""
    batch_size: int = 64
    """Prompts generated together (left padding, KV cache)."""
    temperature: float = 0.0
    """0 = greedy decoding; > 0 samples."""
    top_p: float = 1.0
    samples: int = 1
    """Completions per prompt; > 1 (with temperature > 0) gives pass@k."""


@dataclass
class HarnessConfig:
    """The paper's prior benchmarks through lm-evaluation-harness (pip install 'sdft[harness]'), run on the
    model in memory, no chat template; their scores join the general suite's unweighted mean. The
    benchmark datasets come from the hub."""

    tasks: list[str] = field(default_factory=list)
    """e.g. [hellaswag, truthfulqa_mc1, mmlu, ifeval, winogrande, humaneval]; [] = none."""
    metrics: dict[str, str] = field(default_factory=dict)
    """'<metric>,<filter>' per task, over sdft.lm_harness.HARNESS_DEFAULT_METRICS."""
    num_fewshot: int | None = None
    limit: int | None = None
    """Rows per (sub)task; None = all."""
    batch_size: int = 8
    include_path: str | None = None
    """A folder of local harness task YAMLs."""
    allow_code_execution: bool = False
    """humaneval runs model-written code: enable only in a sandbox."""


@dataclass
class EvalConfig:
    """What `sdft eval` and `sdft check` measure."""

    tasks: list[str] = field(default_factory=list)
    """Tasks to evaluate; empty = the config's top-level `tasks`."""
    general: list[str] | None = None
    """The general-capability suite (prior skills): their mean is the forgetting measure.
    None = the embedded world's prior-skill suite; [] = none."""
    split: str = "test"
    limit: int | None = None
    """Evaluate only the first N rows of each task (None = all)."""
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    harness: HarnessConfig = field(default_factory=HarnessConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    cache: bool = True
    """Keep per-sample results in <output_root>/.eval_cache, keyed by model weights, task version and
    generation settings: a repeated evaluation is free and an interrupted one resumes."""


@dataclass
class CheckConfig:
    """The in-context readiness check: can the model serve as its own teacher?"""

    min_teacher_gain: float = 0.10
    """The teacher (prompt + demonstration) must beat the student by at least this much on every task."""
    min_teacher_accuracy: float = 0.50
    """... and reach at least this accuracy, or its targets are mostly wrong."""


@dataclass
class TrainConfig:
    """One training stage: learn `task` with `method`. Defaults suit the embedded world on a CPU;
    configs/paper/*.yaml hold the published settings."""

    method: Literal["sdft", "sft", "dft", "cpt"] = "sdft"
    """sdft: on-policy self-distillation; sft: next-token loss on the demonstration; dft: SFT with each
    token's loss weighted by its detached probability (Dynamic Fine-Tuning); cpt: continued pre-training,
    next-token loss on the task's raw corpus (tasks that have one: knowledge)."""
    engine: Literal["native", "trl"] = "native"
    """native: sdft's own trainer; trl: TRL's experimental SDFTTrainer (the reference, method sdft only)."""
    task: str = "science"
    split: str = "train"
    max_rows: int | None = None
    """Train on the first N rows of the split only (None = all)."""
    steps: int = 150
    """Optimizer steps (ignored when `epochs` is set)."""
    epochs: float | None = None
    """Passes over the training rows; when set, steps = ceil(epochs x rows / batch_size) (for cpt: blocks of
    the corpus instead of rows). None = use `steps`."""
    batch_size: int = 16
    """Prompts per optimizer step, across gradient accumulation and processes."""
    gradient_accumulation: int = 1
    learning_rate: float = 1e-4
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    warmup_steps: int = 10
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    teacher: Literal["frozen", "ema", "live"] = "frozen"
    """frozen: the weights at stage start (in memory); ema: the published recipe; live: the student itself,
    which the paper saw diverge."""
    ema_rate: float = 0.01
    """phi <- rate * theta + (1 - rate) * phi after every optimizer step (teacher: ema), held in fp32."""
    loss: LossConfig = field(default_factory=LossConfig)
    """The per-token divergence (sdft/methods/losses.py documents every field)."""
    rollout_temperature: float = 1.0
    rollout_top_p: float = 1.0
    max_prompt_tokens: int = 512
    """Cap on the student prompt (chat template included)."""
    max_teacher_prompt_tokens: int = 1024
    """Cap on the teacher prompt (question + demonstration + template)."""
    max_completion_tokens: int = 160
    """Cap on a sampled completion (and on an SFT demonstration)."""
    overlong_prompts: Literal["error", "skip"] = "error"
    """A prompt over its cap: stop with the row named, or skip the row (counted and logged). Never truncated."""
    capped_completions_in_loss: bool = True
    """Whether completions that hit max_completion_tokens count in the loss (their share is logged either way)."""
    checkpoint_every: int = 50
    """Save a resumable checkpoint every N optimizer steps (and at the end)."""
    keep_checkpoints: int = 2
    """How many of the newest checkpoints to keep on disk."""
    log_every: int = 10
    sample_count: int = 4
    """Sample completions written to samples.jsonl per logging window."""
    report_to: list[Literal["tensorboard", "wandb"]] = field(default_factory=list)
    evaluate: bool = True
    """Evaluate the trained task and the general suite before and after training."""


@dataclass
class SequenceConfig:
    """`sdft sequence`: chains of stages, one chain per method and seed."""

    methods: list[Literal["sdft", "sft", "dft"]] = field(default_factory=lambda: ["sdft", "sft"])
    """Each method trains its own chain on the same tasks, data and seeds."""
    seeds: list[int] = field(default_factory=lambda: [0])
    """Several seeds give a mean and a 95% confidence interval for every cell and metric."""
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per-task overrides of train.* keys for that task's stage, e.g. {tools: {steps: 100, learning_rate: 5e-5,
    max_rows: 200}}."""


@dataclass
class TaskSourceConfig:
    """Where a built-in task's rows come from. Each task's schema, published hub id and revision, default
    file names and split rules are facts documented in sdft/tasks/paper/."""

    source: Literal["embedded", "hub", "local"] = "embedded"
    """embedded: the shipped miniature (science, tools, medical); hub: the published dataset; local: files in
    the published schema under `path`."""
    path: str | None = None
    """local: the folder holding the task's files."""
    files: dict[str, str] = field(default_factory=dict)
    """local: file role (a split name; knowledge: 'articles', 'qa') -> a .jsonl/.json/.parquet file or a
    save_to_disk folder inside `path`; roles not given keep the task's default names."""
    hub: str | None = None
    """hub: a dataset id replacing the published one (e.g. your mirror)."""
    revision: str | None = None
    """hub: the commit to pin; None = the task's pinned revision (or the hub's default where none is known)."""
    seed: int = 0
    """Seed of the shuffle that splits or samples hub data (science 75/5/20, medical's test sample)."""
    test_size: int | None = None
    """medical (hub): verifiable problems sampled for the test split; None = the paper's 1000."""
    teacher_context: Literal["article_and_answer", "answer", "article"] = "article_and_answer"
    """knowledge: what the demonstration holds, i.e. what the SDFT teacher sees and SFT imitates. The paper's
    best SDFT variant is article + answer; its SFT baseline trains on answers (use 'answer')."""


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
    seed: int = 0
    output_root: str = "runs"
    """Where run folders go when a command gets no --output."""

    def validate(self) -> "Config":
        """Reject contradictory settings before anything expensive happens."""
        _validate(self)
        return self


def _validate(cfg: Config) -> None:
    gen = cfg.eval.generation
    checks = [
        (gen.samples > 1 and gen.temperature == 0, "eval.generation.samples > 1 needs eval.generation.temperature > 0 (greedy decoding gives the same completion every time)"),
        (gen.temperature < 0, "eval.generation.temperature must be >= 0"),
        (not 0 < gen.top_p <= 1, "eval.generation.top_p must be in (0, 1]"),
        (gen.max_new_tokens < 1 or gen.batch_size < 1 or gen.samples < 1, "eval.generation.max_new_tokens, batch_size and samples must be >= 1"),
        (cfg.eval.limit is not None and cfg.eval.limit < 1, "eval.limit must be >= 1 or null"),
        (cfg.train.teacher == "ema" and not 0 < cfg.train.ema_rate <= 1, "train.ema_rate must be in (0, 1] when train.teacher is 'ema'"),
        (cfg.train.batch_size % cfg.train.gradient_accumulation != 0, "train.batch_size must be divisible by train.gradient_accumulation"),
        (cfg.train.steps < 1 or cfg.train.learning_rate <= 0, "train.steps and train.learning_rate must be positive"),
        (cfg.train.epochs is not None and cfg.train.epochs <= 0, "train.epochs must be > 0 or null"),
        (cfg.eval.judge.max_retries < 0 or cfg.eval.judge.timeout_s <= 0 or cfg.eval.judge.concurrency < 1, "eval.judge.max_retries must be >= 0, timeout_s > 0 and concurrency >= 1"),
        (cfg.train.engine == "trl" and cfg.train.method != "sdft", "train.engine 'trl' runs TRL's SDFT trainer: it needs train.method 'sdft'"),
        (cfg.train.rollout_temperature <= 0, "train.rollout_temperature must be > 0: SDFT samples its rollouts"),
        (cfg.train.max_rows is not None and cfg.train.max_rows < 1, "train.max_rows must be >= 1 or null"),
        (min(cfg.train.checkpoint_every, cfg.train.log_every, cfg.train.keep_checkpoints) < 1, "train.checkpoint_every, log_every and keep_checkpoints must be >= 1"),
        (cfg.lora.enabled and cfg.lora.r < 1, "lora.r must be >= 1"),
        (not cfg.tasks, "tasks must name at least one task"),
        (not cfg.sequence.methods or not cfg.sequence.seeds, "sequence.methods and sequence.seeds must not be empty"),
        (len(set(cfg.sequence.seeds)) != len(cfg.sequence.seeds), "sequence.seeds lists a seed twice"),
        (len(set(cfg.tasks)) != len(cfg.tasks), f"tasks lists a task twice: {cfg.tasks}"),
    ]
    for failed, message in checks:
        if failed:
            raise UserError(message)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file (if any), then `a.b=value` overrides; validated."""
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        data, source = _read_yaml(Path(path)), str(path)
    cfg = from_mapping(Config, data, source)
    for override in overrides or []:
        cfg = apply_override(cfg, override)
    return cfg.validate()


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"config file '{path}' not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}: not valid YAML{where}: {getattr(err, 'problem', err)}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Every field, defaults included: what goes into a run folder's config.yaml."""
    return dataclasses.asdict(cfg)
