"""The `collm` section: Co-LLM (Shen et al., ACL 2024, METHOD.md 3.2), a base model that learns, token by token,
when to let an expert write (the command `sdft collm`).

The base is `model.name_or_path`; the expert is `collm.expert`, or, when that is null, a model this run trains
first with the config's `train` section (as `sdft train` would, cached in <run>/expert/). Defaults are the paper's
where it has one (lr 2e-5, linear schedule, 4% warm-up, 2 epochs, batch 128, full fine-tuning, positive-class weight
8 for the weak-label initialisation, thresholds from deferral-rate quantiles 0%..100% plus the ROC-optimal point,
greedy decoding); "ours" marks a choice the paper does not fix. configs/collm.yaml overrides them for the embedded
world."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

STRATEGIES = ("defer", "compose")


@dataclass
class CollmConfig:
    """A base model, an expert, and the deferral head that chooses between them at every token."""

    expert: str | None = None
    """The expert, any MODEL_OR_RUN (hub id, local folder, run folder, a `sdft sequence` stage folder, 'embedded');
    null = train it first from the base with the config's `train` section (e.g. method sft, task medical), kept in
    <run>/expert/ and reused by a rerun."""
    tasks: list[str] = field(default_factory=list)
    """Tasks whose gold responses (demonstrations) train the deferral and which are evaluated; [] = the config's
    top-level `tasks`."""
    split: str = "train"
    """The split whose demonstrations train the head (its last `validation_rows` rows choose the threshold)."""
    max_rows: int | None = None
    """Training rows per task (the first N of `split`); None = all."""
    general_rows: int = 0
    """Training rows of each general-suite task (eval.general: the first N of `split`; the next validation_rows
    validate) mixed into the training data, as the paper mixes a
    general instruction set (Tulu v2) with the domain: where the base is right and the expert is not, the head learns
    not to defer. 0 = none (ours: the paper's mix has no count that transfers)."""
    general_targets: Literal["demonstration", "base"] = "demonstration"
    """The gold response of a general row: its demonstration (the paper: gold responses), or the base model's own
    greedy answer where the task's scorer marks it right (ours: where the demonstrations are in another style than
    the base writes, the head would otherwise learn on contexts the base never produces)."""
    validation_rows: int = 40
    """Rows held out of each training task (and general task) to choose the threshold (ours: the paper uses the
    datasets' validation splits; the embedded tasks have none)."""
    train_base: Literal["frozen", "lora", "full"] = "full"
    """What trains with the head: nothing (the head alone), LoRA adapters (the top-level `lora` section), or every
    weight (the paper)."""
    pos_weight: float = 8.0
    """Positive-class weight of the weak-label BCE that initialises the head (paper: 8)."""
    init_steps: int = 100
    """Optimizer steps of the head's initialisation (ours)."""
    init_learning_rate: float = 1e-3
    """Learning rate of the initialisation, head only (ours)."""
    epochs: float | None = 2.0
    """Passes over the training rows of the marginal-likelihood training (paper: 2); null = `steps`."""
    steps: int = 300
    """Optimizer steps when `epochs` is null."""
    batch_size: int = 128
    """Rows per optimizer step (paper: 128)."""
    micro_batch_size: int | None = None
    """Rows per forward pass (gradients accumulate over a step's batch); None = the whole batch at once."""
    learning_rate: float = 2e-5
    """paper: 2e-5 (full fine-tuning); the head alone needs more (configs/collm.yaml)."""
    warmup_ratio: float = 0.04
    """paper: 4% warm-up, then a linear decay to 0."""
    threshold: float | None = None
    """A fixed deferral threshold eta in [0, 1] (defer where the deferral probability > eta); null = choose it on the
    validation rows (below)."""
    quantiles: list[float] = field(default_factory=lambda: [i / 10 for i in range(11)])
    """Deferral-rate quantiles to try as thresholds (paper: 0%, 10%, ..., 100%), plus the ROC-optimal point."""
    strategy: Literal["defer", "compose"] = "defer"
    """At a deferred token: the expert's argmax (defer) or the argmax of (1 - s) p_base + s p_expert (compose)."""


def collm_checks(collm: CollmConfig) -> list[tuple[bool, str]]:
    """Contradictions inside the section (root.py runs them with the others, before any model loads)."""
    bad_quantiles = [q for q in collm.quantiles if not 0 <= q <= 1]
    return [
        (collm.threshold is not None and not 0 <= collm.threshold <= 1,
         f"collm.threshold must be in [0, 1] (a deferral probability) or null, got {collm.threshold}"),
        (collm.strategy not in STRATEGIES, f"collm.strategy must be one of {STRATEGIES}, got {collm.strategy!r}"),
        (bool(bad_quantiles), f"collm.quantiles must lie in [0, 1] (deferral rates), got {bad_quantiles[:1]}"),
        (collm.threshold is None and not collm.quantiles, "collm.quantiles must not be empty (or set collm.threshold)"),
        (collm.threshold is None and collm.validation_rows < 1,
         "collm.validation_rows must be >= 1 to choose the threshold (or set collm.threshold)"),
        (collm.validation_rows < 0 or collm.general_rows < 0, "collm.validation_rows and general_rows must be >= 0"),
        (collm.max_rows is not None and collm.max_rows <= collm.validation_rows,
         f"collm.max_rows={collm.max_rows} leaves no training rows after collm.validation_rows={collm.validation_rows}"),
        (collm.pos_weight <= 0 or collm.init_learning_rate <= 0 or collm.learning_rate <= 0,
         "collm.pos_weight, init_learning_rate and learning_rate must be > 0"),
        (collm.init_steps < 0 or collm.steps < 1 or collm.batch_size < 1, "collm.init_steps must be >= 0, steps and "
                                                                           "batch_size >= 1"),
        (collm.micro_batch_size is not None and collm.micro_batch_size < 1, "collm.micro_batch_size must be >= 1 or null"),
        (collm.epochs is not None and collm.epochs <= 0, "collm.epochs must be > 0 or null"),
        (not 0 <= collm.warmup_ratio < 1, "collm.warmup_ratio must be in [0, 1)"),
    ]
