"""The training sections of the config: one stage (train), its loss, and chains of stages (sequence)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from sdft.config.sections import SamplingConfig
from sdft.errors import UserError
from sdft.suggest import did_you_mean

METHOD_NAMES = ("sdft", "sft", "dft", "cpt", "sft_reinvoke", "seal")
"""What train.method accepts; sdft/methods/registry.py says what each one is (a test checks they agree)."""
DIVERGENCES = ("forward_kl", "reverse_kl", "jsd", "sampled_token")
TOPK_SOURCES = ("teacher", "student")


@dataclass(frozen=True)
class LossConfig:
    """How the per-token divergence is computed.

    divergence: "forward_kl" = KL(teacher || student), what every published SDFT result used; "reverse_kl" =
        KL(student || teacher); "jsd" = generalised Jensen-Shannon with weight `alpha` (TRL's convention, see
        `_jsd` in sdft/methods/losses.py); "sampled_token" = the single-sample reverse-KL estimator on the sampled token (needs the ids).
    alpha: the JSD weight, in (0, 1) (checked whatever the divergence); alpha -> 0 tends to alpha * forward KL, alpha -> 1 to (1 - alpha) * reverse KL.
    top_k: None = the full vocabulary; k = the k most probable tokens (of `topk_source`) plus one tail bucket.
    topk_source: whose distribution picks the top-k tokens: "teacher" or "student".
    skip_first_tokens: the first N real completion tokens of every sequence carry no loss (METHOD.md: 3).
    chunk_size: loss positions processed at once (at most losses.CHUNK_ELEMENTS // V); trades speed for peak memory
        (chunk_size x V floats, a few times).
    """

    divergence: str = "forward_kl"
    alpha: float = 0.5
    top_k: int | None = None
    topk_source: str = "teacher"
    skip_first_tokens: int = 3
    chunk_size: int = 256

    def __post_init__(self) -> None:
        if self.divergence not in DIVERGENCES:
            hint = did_you_mean(self.divergence, DIVERGENCES)
            raise UserError(f"LossConfig.divergence: unknown '{self.divergence}'{hint}; choose from {DIVERGENCES}")
        # checked whatever the divergence: an alpha out of range is a mistake even where 'jsd' is not chosen
        if not isinstance(self.alpha, (int, float)) or isinstance(self.alpha, bool) or not 0.0 < self.alpha < 1.0:
            raise UserError(f"LossConfig.alpha must be in (0, 1), got {self.alpha!r} (it weighs divergence 'jsd' only)")
        if self.top_k is not None and (not _is_int(self.top_k) or self.top_k < 1):
            raise UserError(f"LossConfig.top_k must be None or an integer >= 1, got {self.top_k!r}")
        if self.top_k is not None and self.divergence == "sampled_token":
            raise UserError("LossConfig.top_k applies to full-distribution divergences, not 'sampled_token'")
        if self.topk_source not in TOPK_SOURCES:
            raise UserError(f"LossConfig.topk_source must be one of {TOPK_SOURCES}, got '{self.topk_source}'")
        if not _is_int(self.skip_first_tokens) or self.skip_first_tokens < 0:
            raise UserError(f"LossConfig.skip_first_tokens must be an integer >= 0, got {self.skip_first_tokens!r}")
        if not _is_int(self.chunk_size) or self.chunk_size < 1:
            raise UserError(f"LossConfig.chunk_size must be an integer >= 1, got {self.chunk_size!r}")


def vocabulary_problems(train: "TrainConfig", vocab_size: int) -> list[str]:
    """The settings that do not fit the model's vocabulary, known from its config.json before any weight loads
    (the dry run and every training command check them there, not at the first step)."""
    top_k = train.loss.top_k
    if top_k is not None and top_k > vocab_size:
        return [f"train.loss.top_k={top_k} is larger than the model's vocabulary ({vocab_size} tokens); use at most "
                f"{vocab_size}, or null for the full vocabulary"]
    return []


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _rollout_sampling() -> SamplingConfig:
    # SDFT samples its rollouts from the student's own distribution (temperature 1), with the native sampler.
    return SamplingConfig(temperature=1.0, top_p=1.0, backend="native")


@dataclass
class ReinvokeConfig:
    """The re-invoke phase of train.method sft_reinvoke (sdft/methods/reinvoke.py): after SFT, on-policy distillation
    from the stage-start model on general prompts. The SDFT paper gives no settings for it; these defaults are ours,
    sized like a short stage of the embedded world (the batch, caps, rollout, schedule and loss are train's)."""

    steps: int = 50
    """Optimizer steps of the re-invoke phase (after train.steps of SFT)."""
    learning_rate: float | None = None
    """None = train.learning_rate."""
    tasks: list[str] = field(default_factory=list)
    """Whose prompts the student answers; [] = the general suite (eval.general), as in the paper."""
    split: str = "train"
    """Which split of those tasks gives the prompts (the general suite's test split is what evaluation measures)."""


@dataclass
class TrainConfig:
    """One training stage: learn `task` with `method`. Defaults suit the embedded world on a CPU;
    configs/paper/*.yaml hold the published settings."""

    method: Literal["sdft", "sft", "dft", "cpt", "sft_reinvoke", "seal"] = "sdft"
    """sdft: on-policy self-distillation; sft: next-token loss on the demonstration; dft: SFT with each
    token's loss weighted by its detached probability (Dynamic Fine-Tuning); cpt: continued pre-training,
    next-token loss on the task's raw corpus (tasks that have one: knowledge); sft_reinvoke: SFT, then on-policy
    distillation from the stage-start model on general prompts (train.reinvoke)."""
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
    lr_schedule: Literal["cosine", "constant", "linear"] = "cosine"
    """After the warm-up: cosine decay to 0, constant, or linear decay to 0 (Co-LLM's schedule)."""
    warmup_steps: int = 10
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    teacher: Literal["frozen", "ema", "live"] = "frozen"
    """frozen: the weights at stage start (in memory); ema: the published recipe; live: the student itself,
    which the paper saw diverge."""
    ema_rate: float = 0.01
    """phi <- rate * theta + (1 - rate) * phi after every optimizer step (teacher: ema), held in fp32."""
    lora_ema: Literal["adapter", "update"] = "adapter"
    """What teacher=ema averages for a LoRA student (fp32 either way, starting from the stage start).
    adapter: the adapter's own weights A and B, as the full fine-tuning EMA averages the trainable weights (TRL and
    SDPO do the same); memory: one more adapter. update: each adapted layer's effective update scale * B @ A, the
    EMA of the weights the student computes with (B_ema @ A_ema is not that); memory: one fp32 matrix per adapted
    layer, 4 bytes per base weight it covers (about 26 GB for a 7B model with every linear layer adapted)."""
    loss: LossConfig = field(default_factory=LossConfig)
    """The per-token divergence (sdft/methods/losses.py computes it); also the re-invoke phase's loss."""
    reinvoke: ReinvokeConfig = field(default_factory=ReinvokeConfig)
    """sft_reinvoke's second phase."""
    rollout: SamplingConfig = field(default_factory=_rollout_sampling)
    """How the student samples its rollouts (sdft: temperature 1, top-p 1: its own distribution)."""
    max_prompt_tokens: int = 512
    """Cap on the student prompt (chat template included)."""
    max_teacher_prompt_tokens: int = 1024
    """Cap on the teacher prompt (question + demonstration + template)."""
    max_completion_tokens: int = 160
    """Cap on a sampled completion (and on an SFT demonstration; cpt: the corpus block length)."""
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
    sharding: Literal["none", "fsdp"] = "none"
    """none: every process holds the whole model (one process, or DDP under a launcher); fsdp: torch's FSDP2
    (`fully_shard`, sdft/distributed.py) shards the student, its teacher and the optimizer state over the processes
    of a `torchrun` / `accelerate launch` job, on CPUs (gloo) and GPUs alike. Native engine; methods sdft, sft, dft."""


@dataclass
class SequenceConfig:
    """`sdft sequence`: chains of stages, one chain per method and seed."""

    methods: list[Literal["sdft", "sft", "dft", "sft_reinvoke", "cpt", "seal"]] = field(default_factory=lambda: ["sdft", "sft"])
    """Each method trains its own chain on the same tasks, data and seeds (cpt: tasks with a raw corpus)."""
    seeds: list[int] = field(default_factory=lambda: [0])
    """Several seeds give a mean and a 95% confidence interval for every cell and metric."""
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per-task overrides of train.* keys for that task's stage, e.g. {tools: {steps: 100, learning_rate: 5e-5,
    max_rows: 200}}."""
    method_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per-method overrides of any config key (dotted) for that method's stages, applied after `stages`, e.g. the
    paper's SFT baseline on knowledge trains on answers: {sft: {task_sources.knowledge.teacher_context: answer}}."""
