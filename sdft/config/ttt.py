"""The `ttt` section: test-time training on few-shot instances (sdft/inference/, the command `sdft ttt`).

Defaults are the paper's BBH settings where the paper has one (Akyürek et al. 2025, METHOD.md 3.1: Llama-3.1-8B,
10-shot, LoRA r 64 / alpha 64 / dropout 0.05, lr 1e-4, 40 permuted sequences, 1 epoch, batch 5, cosine with 10%
warm-up); "ours" marks a choice the paper does not fix. configs/ttt.yaml overrides them for the embedded world."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from sdft.config.sections import LoraConfig

PREDICTOR_NAMES = ("zero_shot", "icl", "ttt", "ttt_vote")
"""Named here so that the config can refuse an unknown one (sdft/inference/predictors.py holds the registry; a test
checks the two agree)."""


def _paper_lora() -> LoraConfig:
    # paper (BBH): r 64, alpha 64, dropout 0.05; target modules: ours (every projection; METHOD.md names BBH's none)
    return LoraConfig(enabled=True, r=64, alpha=64, dropout=0.05)


@dataclass
class TTTConfig:
    """Few-shot instances (K demonstrations + a query), and how each predictor answers them."""

    source: Literal["embedded", "jsonl", "bbh"] = "embedded"
    """embedded: the embedded world's few-shot tasks (`clinic`) or a K-shot view of its tasks (demos from the train
    split); jsonl: instance files `{instruction?, demos: [{input, output}], query: {input, output}}`; bbh: BIG-Bench
    Hard task files `{"examples": [{"input", "target"}]}` in a local folder."""
    path: str | None = None
    """jsonl: a .jsonl file or a folder of them (one task per file); bbh: the folder of <task>.json files."""
    tasks: list[str] = field(default_factory=lambda: ["clinic"])
    """Task names (embedded: clinic, science, tools, medical; jsonl/bbh: file stems); [] = every file in `path`."""
    shots: int = 10
    """K demonstrations per instance (paper: 10-shot BBH). jsonl instances use their first K demos."""
    instances: int | None = None
    """Held-out queries per task (the first N); None = all."""
    layout: Literal["qa", "demonstration"] = "qa"
    """How K demos sit in a prompt. qa (the paper's BBH form, ours in detail): instruction, then 'Q: x / A: y' blocks,
    then 'Q: query / A:', in one user turn. demonstration: the demos joined in the SDFT teacher template's
    demonstration slot (sdft.prompts.teacher_prompt), the in-context form the embedded model was pretrained on."""
    predictors: list[str] = field(default_factory=lambda: list(PREDICTOR_NAMES))
    """Which predictors to compare: zero_shot (no demos), icl (K demos in the prompt), ttt, ttt_vote."""
    scope: Literal["instance", "task", "shared"] = "task"
    """One adapter per instance (ARC), per task from its demos (paper's BBH) or one shared by all tasks."""
    leave_out: Literal[1, 2] = 1
    """1: leave-one-out tasks (the paper's); 2: leave-two-out tasks added (ours: each left-out pair is a query)."""
    permutations: int = 40
    """Demo orders per leave-out task before deduplication and the cap (paper: 40 permuted sequences)."""
    augmentations: list[str] = field(default_factory=list)
    """Invertible augmentations a task registers (sdft/tasks/augment.py), on top of the built-in demo orders;
    each multiplies the training samples and adds voting views."""
    max_samples: int = 40
    """N: training samples per adapter after deduplication (paper: 40 for BBH; 250 per task for ARC)."""
    loss_on: Literal["all_outputs", "last"] = "all_outputs"
    """The loss on every demonstration output inside a synthetic prompt (the paper's: it matters), or on the
    held-out output only. Inputs are always masked."""
    epochs: float = 1.0
    """Passes over the N samples (paper: 1); steps = ceil(epochs * N / batch_size)."""
    batch_size: int = 5
    """paper: 5"""
    learning_rate: float = 1e-4
    """paper: 1e-4 (constant after the warm-up, cosine when `cosine`)"""
    warmup_ratio: float = 0.1
    """paper: 10% warm-up"""
    cosine: bool = True
    """paper: cosine decay after the warm-up"""
    votes: int = 5
    """ttt_vote: views of the query (demo orders x augmentations; the first is the identity), answers mapped back
    and majority-voted (ours: the paper does not fix M for BBH). ttt answers the identity view alone."""
    lora: LoraConfig = field(default_factory=_paper_lora)
    """The throwaway adapter (independent of the top-level `lora`, which is for training)."""
    general: bool = True
    """Evaluate the general suite (eval.general) after every instance has been answered, next to a check that the
    base weights are bit-identical: nothing is learned for good, so nothing is forgotten."""


def ttt_checks(ttt: TTTConfig) -> list[tuple[bool, str]]:
    """Contradictions inside the section (root.py runs them with the others, before any model loads)."""
    unknown = [p for p in ttt.predictors if p not in PREDICTOR_NAMES]
    return [
        (bool(unknown), f"ttt.predictors: unknown predictor {unknown[:1]}; known: {', '.join(PREDICTOR_NAMES)}"),
        (not ttt.predictors, "ttt.predictors must name at least one predictor"),
        (ttt.shots < 1, "ttt.shots must be >= 1"),
        (ttt.shots <= ttt.leave_out, f"ttt.leave_out={ttt.leave_out} needs ttt.shots > {ttt.leave_out} (a leave-out "
                                     "task keeps at least one demo in its context)"),
        (ttt.source != "embedded" and not ttt.path, f"ttt.source '{ttt.source}' reads files: set ttt.path"),
        (ttt.instances is not None and ttt.instances < 1, "ttt.instances must be >= 1 or null"),
        (min(ttt.permutations, ttt.max_samples, ttt.batch_size, ttt.votes) < 1,
         "ttt.permutations, max_samples, batch_size and votes must be >= 1"),
        (ttt.epochs <= 0 or ttt.learning_rate <= 0, "ttt.epochs and ttt.learning_rate must be > 0"),
        (not 0 <= ttt.warmup_ratio < 1, "ttt.warmup_ratio must be in [0, 1)"),
        (not ttt.lora.enabled or ttt.lora.r < 1, "ttt.lora must be enabled with r >= 1: TTT fits a throwaway adapter"),
        (len(set(ttt.augmentations)) != len(ttt.augmentations), "ttt.augmentations lists a name twice"),
    ]
