"""The `seal` section: SEAL's knowledge setting (Zweiger et al. 2025, METHOD.md 3.3; the command `sdft seal`).

The model writes its own fine-tuning data from a passage (a "self-edit"); an inner LoRA is fitted on it and the
reward is how much closed-book accuracy on the passage's questions rises; ReST-EM rounds SFT the model on its best
self-edits. Defaults are the paper's (Qwen2.5-7B, SQuAD) where it has one; "SEAL code" marks a value read in the
authors' code (Continual-Intelligence/SEAL), "ours" a choice neither fixes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from sdft.config.sections import LoraConfig, SamplingConfig

TEMPLATE_NAMES = ("implications", "rewrite", "self_qa")
"""Named here so that the config can refuse an unknown one before anything loads (the prompts themselves live in
sdft/tasks/articles.py SELF_EDIT_TEMPLATES; a test checks the two agree)."""


def _self_edit_sampling() -> SamplingConfig:
    return SamplingConfig(temperature=1.0, top_p=0.95)  # paper: temperature 1.0, top-p 0.95


def _inner_lora() -> LoraConfig:
    # paper: r 32, alpha 64; dropout 0 and every projection: ours (the paper names neither)
    return LoraConfig(enabled=True, r=32, alpha=64, dropout=0.0)


def _outer_lora() -> LoraConfig:
    # paper: the ReST-EM SFT with LoRA r 64, alpha 128; dropout and targets: ours
    return LoraConfig(enabled=True, r=64, alpha=128, dropout=0.0)


@dataclass
class SealConfig:
    """Passages, self-edits, the inner update that scores them, and the ReST-EM rounds that learn from them."""

    source: Literal["embedded", "local"] = "embedded"
    """Where passages come from. embedded: the knowledge world's task events (sdft/tasks/knowledge_world.py), each
    article with its questions. local: `files`, in the SEAL release's SQuAD-derived schema (sdft/tasks/passages.py)."""
    files: list[str] = field(default_factory=list)
    """source local: JSON files, each a list of {"title", "context", "questions": [{"question", "answer"}, ...]} (the
    SEAL release's knowledge-incorporation data; other keys are ignored). Read in order; titles must be unique."""
    scorer: str = "judge_knowledge"
    """source local: how an answer is graded, a name of sdft.scoring (paper and SEAL code: an LLM judge's yes/no
    against the gold answer, `judge_knowledge`, which needs eval.judge; e.g. `normalized` for exact match)."""
    question_split: str = "test"
    """Which of the knowledge task's splits asks each passage's questions (ours: the embedded world's test phrasing,
    which no self-edit line uses, so a reward measures knowledge rather than a copied question)."""
    train_passages: int = 20
    """Passages the rounds learn from (paper: 50; ours: 20 of the embedded world's 30 events)."""
    held_out_passages: int = 10
    """Passages the evaluation table is measured on, never seen by the rounds (paper: 200 SQuAD passages; ours: 10).
    Which passages fall where is a seeded shuffle of the titles (`seed`)."""
    k: int = 5
    """Self-edits sampled per passage per round (paper: 5)."""
    template: str = "implications"
    """The prompt that asks for a self-edit: implications (paper's default), rewrite, self_qa (SEAL code's names)."""
    sampling: SamplingConfig = field(default_factory=_self_edit_sampling)
    """How self-edits are drawn (paper: temperature 1.0, top-p 0.95)."""
    max_self_edit_tokens: int = 512
    """Length cap of a self-edit (ours: the embedded model's tokens are characters and its question-shaped self-edits
    run to ~300; 256 cut them, a smoke run found). One that hits the cap is kept, its lines used, and counted."""
    inner_lora: LoraConfig = field(default_factory=_inner_lora)
    """The adapter fitted per self-edit, reset before every fit (paper: r 32, alpha 64)."""
    inner_epochs: int = 10
    """Passes over the self-edit's lines + the passage (paper: 10)."""
    inner_learning_rate: float = 1e-3
    """paper: 1e-3"""
    inner_batch_size: int = 1
    """paper: 1"""
    eval_times: int = 3
    """Fits per self-edit, each with its own data order, whose accuracies are averaged (paper: each self-edit scored
    3 times)."""
    rounds: int = 2
    """ReST-EM rounds (paper: 2)."""
    outer_lora: LoraConfig = field(default_factory=_outer_lora)
    """The adapter of each round's SFT on the kept self-edits, merged into the policy after it (paper: r 64,
    alpha 128)."""
    outer_learning_rate: float = 3e-4
    """paper: 3e-4"""
    outer_epochs: int = 2
    """paper: 2"""
    outer_batch_size: int = 1
    """ours (the paper does not give it)"""
    writer: str | None = None
    """`train.method: seal` (one self-edit per article, fitted and merged; the continual experiment): the model that
    writes the self-edits, e.g. a `sdft seal` run's seed-0/rounds/round-2/policy. None: the model being updated
    writes its own (the paper's setting, where the SEAL-trained model is the one updated)."""
    continual: str | None = None
    """`sdft seal`: a sequence config (e.g. configs/knowledge_stream.yaml) run after the table in DIR/continual/, on
    this config's model, with `writer` = the first seed's last policy: SEAL's continual experiment beside the
    sequence's other methods in one report. Its tasks must be articles that seed held out (checked before anything
    trains). None: no continual run."""
    seeds: list[int] = field(default_factory=lambda: [0])
    """Runs of the whole experiment, each with its own passage split, self-edits and fits; results.json holds the
    means with 95% half-widths (ours: the paper reports one run)."""


def seal_checks(seal: SealConfig) -> list[tuple[bool, str]]:
    """Contradictions inside the section (root.py runs them with the others, before any model loads)."""
    return [
        (seal.k < 1, f"seal.k must be >= 1 (self-edits per passage), got {seal.k}"),
        (seal.source == "local" and not seal.files, "seal.source local reads seal.files: name at least one JSON file"),
        (seal.source == "embedded" and bool(seal.files), "seal.files are read with seal.source: local, not embedded"),
        (not _known_scorer(seal.scorer), f"seal.scorer: unknown scorer '{seal.scorer}'"),
        (seal.template not in TEMPLATE_NAMES,
         f"seal.template: unknown template '{seal.template}'; known: {', '.join(TEMPLATE_NAMES)}"),
        (seal.sampling.temperature <= 0, "seal.sampling.temperature must be > 0: SEAL samples k different self-edits"),
        (not 0 < seal.sampling.top_p <= 1, "seal.sampling.top_p must be in (0, 1]"),
        (min(seal.train_passages, seal.held_out_passages) < 1, "seal.train_passages and seal.held_out_passages must be >= 1"),
        (min(seal.inner_epochs, seal.inner_batch_size, seal.eval_times, seal.outer_epochs, seal.outer_batch_size,
             seal.max_self_edit_tokens) < 1,
         ("seal.inner_epochs, inner_batch_size, eval_times, outer_epochs, outer_batch_size and max_self_edit_tokens "
         "must be >= 1")),
        (seal.rounds < 0, "seal.rounds must be >= 0"),
        (not seal.seeds or len(set(seal.seeds)) != len(seal.seeds),
         f"seal.seeds must name at least one seed, each once; got {seal.seeds}"),
        (seal.inner_learning_rate <= 0 or seal.outer_learning_rate <= 0,
         "seal.inner_learning_rate and seal.outer_learning_rate must be > 0"),
        (not (seal.inner_lora.enabled and seal.outer_lora.enabled) or min(seal.inner_lora.r, seal.outer_lora.r) < 1,
         "seal.inner_lora and seal.outer_lora must be enabled with r >= 1: SEAL fits adapters"),
    ]


def _known_scorer(name: str) -> bool:
    from sdft.scoring import JUDGED, SCORERS

    return name in SCORERS or name in JUDGED
