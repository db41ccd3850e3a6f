"""The model, adapter, decoding, evaluation and data-source sections of the config (training: training.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from sdft.config.judge import JudgeConfig

EMBEDDED_MODEL = "embedded"
EMBEDDED_TASKS = ["science", "tools", "medical"]
EMBEDDED_PRIOR_SKILLS = ["repeat", "first_letter", "last_word", "join"]
"""The embedded world's prior skills (sdft/tasks/embedded.py builds them): the default general suite. Named here,
not imported from the task module, so that the config stays a leaf (a test checks the two agree)."""


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
    """Low-rank adapters (peft). Off = full fine-tuning. (What the EMA teacher averages for a LoRA student is a
    teacher setting: train.lora_ema.)"""

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


@dataclass
class SamplingConfig:
    """How tokens are drawn, wherever text is generated: evaluation (eval.sampling) and on-policy rollouts
    (train.rollout) share this section and the generation interface (sdft/generation/) that reads it.
    Length caps are not here: each has one home next to the other caps of its command (eval.max_new_tokens;
    train.max_completion_tokens, which caps rollouts and SFT demonstrations alike)."""

    temperature: float = 0.0
    """0 = greedy decoding; > 0 samples."""
    top_p: float = 1.0
    """Nucleus sampling: keep the most probable tokens whose mass reaches top_p (1 = all)."""
    backend: Literal["hf", "native"] = "hf"
    """hf: transformers' `generate`; native: sdft's KV-cache sampler (sdft/generation/native.py), which draws the
    same tokens as `generate` under the same seed with less overhead per token."""


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
    """What `sdft eval` and `sdft check` measure (and the evaluations of `sdft train` and `sdft sequence`)."""

    tasks: list[str] = field(default_factory=list)
    """Tasks to evaluate; empty = the config's top-level `tasks`."""
    general: list[str] = field(default_factory=lambda: list(EMBEDDED_PRIOR_SKILLS))
    """The general-capability suite (prior skills): their mean is the forgetting measure. [] = none."""
    split: str = "test"
    limit: int | None = None
    """Evaluate only the first N rows of each task (None = all)."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """Greedy by default; with temperature > 0 and samples > 1 the report adds pass@k."""
    samples: int = 1
    """Completions per prompt; > 1 (with sampling.temperature > 0) gives pass@k."""
    max_new_tokens: int = 160
    """Cap on generated tokens; responses that hit it are counted and reported."""
    batch_size: int = 64
    """Prompts generated together (left padding, KV cache); changes no result, so the cache ignores it."""
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
