"""The steps of `sdft collm` (sdft/collm_run.py runs them in order), each kept in the run folder and resumable:

- gold examples: each training task's demonstrations and the general rows' targets, as token ids (split into
  training rows and the validation rows that choose the threshold);
- score: the expert's log-probs (and argmax hits) of every gold token, stored in scores/<task>-<key>.safetensors,
  keyed by the expert's weight fingerprint, the task, its version and the tokens scored: a rerun computes nothing;
- init / train: the two phases of methods/collm.py through the native loop, in init/ and train/ (checkpoints,
  metrics.jsonl; a finished phase is loaded from its last checkpoint, an unfinished one resumes);
- candidates: thresholds at deferral-rate quantiles of the validation tokens, and the ROC-optimal one."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load, save

from sdft.config import Config, TrainConfig
from sdft.console import progress_bar
from sdft.files import atomic_write_bytes
from sdft.methods import checkpoint as ckpt
from sdft.methods.collm import (
    DeferralModel,
    GoldExample,
    collate,
    expert_scores,
    init_step,
    marginal_step,
)
from sdft.methods.collm_loss import weak_labels
from sdft.methods.stage import CHECKPOINT_DIR, Stage, holds_checkpoint
from sdft.methods.tokens import prompt_completion_ids
from sdft.models import LoadedModel
from sdft.tasks.spec import Row, TaskSpec

SCORES_DIR = "scores"


@dataclass
class GoldSet:
    """One task's gold examples: `train` trains the head, `validation` (with its rows) chooses the threshold."""

    task: TaskSpec
    train: list[GoldExample]
    validation: list[GoldExample]
    validation_rows: list[Row]
    general: bool


def gold_examples(tokenizer, task: TaskSpec, rows: list[Row], responses: list[str]) -> list[GoldExample]:
    pairs = prompt_completion_ids(tokenizer, [r.prompt for r in rows], responses, task.system_prompt)
    return [GoldExample([*p, *c], len(p)) for p, c in pairs]


def split_rows(cfg: Config, task: TaskSpec, general: bool) -> tuple[list[Row], list[Row]]:
    """(training rows, validation rows): a task's last validation_rows of its first max_rows; a general task's first
    general_rows, then the next validation_rows."""
    c = cfg.collm
    if general:
        rows = task.rows(c.split, c.general_rows + c.validation_rows)
        return rows[: c.general_rows], rows[c.general_rows :]
    rows = task.rows(c.split, c.max_rows)
    cut = len(rows) - c.validation_rows
    return rows[:cut], rows[cut:]


def score_file(run_dir: Path, expert_fingerprint: str, task: TaskSpec, examples: list[GoldExample]) -> Path:
    """scores/<task>-<key>.safetensors: the key is the expert's weights, the task and its version, the tokens."""
    tokens = hashlib.sha256(json.dumps([[e.ids, e.prompt_len] for e in examples]).encode()).hexdigest()
    key = hashlib.sha256(json.dumps([expert_fingerprint, task.name, task.version, tokens]).encode()).hexdigest()[:24]
    return Path(run_dir) / SCORES_DIR / f"{task.name}-{key}.safetensors"


def score_examples(run_dir: Path, expert: LoadedModel, fingerprint: str, task: TaskSpec,
                   examples: list[GoldExample], batch_size: int) -> bool:
    """Fill the examples' expert scores from the stored file, or compute and store them; True when computed."""
    path = score_file(run_dir, fingerprint, task, examples)
    if path.is_file():
        stored = load(path.read_bytes())
        for e, logp, right in zip(examples, stored["logp"].split(stored["lengths"].tolist()),
                                  stored["right"].split(stored["lengths"].tolist())):
            e.expert_logp, e.expert_right = logp, right.bool()
        return False
    with progress_bar() as progress:
        bar = progress.add_task(f"scoring {task.name} with the expert", total=len(examples))
        expert_scores(expert.model, examples, expert.tokenizer.pad_token_id, batch_size,
                      lambda n: progress.advance(bar, n))
    data = {"logp": torch.cat([e.expert_logp for e in examples]).float(),
            "right": torch.cat([e.expert_right for e in examples]).to(torch.uint8),
            "lengths": torch.tensor([len(e.expert_logp) for e in examples], dtype=torch.long)}
    atomic_write_bytes(path, save(data))
    return True


def phase_config(cfg: Config, phase: str, rows: int) -> Config:
    """The loop reads its schedule from cfg.train: the phase's steps, learning rate, warm-up and schedule (init: the
    head's own constant rate; train: the paper's linear schedule with warm-up), batch rows from collm."""
    c = cfg.collm
    if phase == "init":
        steps, rate, warmup, schedule = c.init_steps, c.init_learning_rate, 0, "constant"
    else:
        steps = c.steps if c.epochs is None else max(1, math.ceil(c.epochs * rows / c.batch_size))
        rate, warmup, schedule = c.learning_rate, round(c.warmup_ratio * steps), "linear"
    train: TrainConfig = dataclasses.replace(cfg.train, steps=steps, epochs=None, learning_rate=rate,
                                             warmup_steps=warmup, lr_schedule=schedule, batch_size=c.batch_size,
                                             gradient_accumulation=1, weight_decay=0.0)  # the paper names none
    return dataclasses.replace(cfg, train=train)


def run_phase(cfg: Config, phase: str, model: DeferralModel, loaded: LoadedModel, task: TaskSpec, run_dir: Path,
              examples: list[GoldExample]) -> int:
    """Train one phase in run_dir/<phase> through the native loop, or load it when it finished; the steps run."""
    from sdft.methods.loop import LoopState, build_loop, run_loop

    phase_cfg, folder = phase_config(cfg, phase, len(examples)), run_dir / phase
    if phase == "init" and phase_cfg.train.steps < 1:
        return 0
    if (folder / "model").is_dir():
        ckpt.load_checkpoint(ckpt.latest_checkpoint(folder / CHECKPOINT_DIR), model)
        return phase_cfg.train.steps
    deferral = LoadedModel(model, loaded.tokenizer, loaded.source, loaded.path, loaded.device)
    stage = Stage(phase_cfg, deferral, task, folder, holds_checkpoint(folder / CHECKPOINT_DIR))
    state = build_loop(stage, LoopState, lambda: examples, lambda m: None)
    c = cfg.collm
    step = (lambda s: init_step(s, c.pos_weight, c.micro_batch_size)) if phase == "init" else \
        (lambda s: marginal_step(s, c.micro_batch_size))
    run_loop(state, step, f"collm {phase}")
    model.eval()
    return state.step


def set_trainable(model: DeferralModel, phase: str, train_base: str) -> None:
    """init: the head alone; train: the head, and the base's LoRA adapters or every weight per collm.train_base."""
    for name, param in model.base.named_parameters():
        param.requires_grad = phase == "train" and (train_base == "full" or
                                                    (train_base == "lora" and "lora_" in name))
    model.head.weight.requires_grad = True


@torch.no_grad()
def validation_tokens(model: DeferralModel, sets: list[GoldSet], pad_id: int, batch_size: int):
    """Deferral probabilities and weak labels of every validation gold token (teacher-forced)."""
    probs, labels = [], []
    device = next(model.parameters()).device
    for gold in sets:
        for start in range(0, len(gold.validation), batch_size):
            batch = collate(gold.validation[start : start + batch_size], pad_id, device)
            logits, _, z = model(batch["input_ids"], batch["attention_mask"])
            mask = batch["mask"]
            probs.append(torch.sigmoid(z[:, :-1])[mask].cpu())
            labels.append(weak_labels(batch["gold"], logits[:, :-1].argmax(-1), batch["expert_right"])[mask].cpu())
    return torch.cat(probs), torch.cat(labels)


def candidates(probs: torch.Tensor, labels: torch.Tensor, quantiles: list[float]) -> list[tuple[str, float]]:
    """(source, threshold): deferral-rate q -> the threshold above which a share q of validation tokens lies (0 -> 1,
    1 -> 0), and the ROC-optimal point (Youden's J = TPR - FPR on the weak labels), when both classes occur."""
    found = []
    for q in quantiles:
        eta = 1.0 if q <= 0 else 0.0 if q >= 1 else float(torch.quantile(probs.double(), 1 - q))
        found.append((f"rate {q:.0%}", eta))
    positives, negatives = labels.sum(), (1 - labels).sum()
    if positives > 0 and negatives > 0:
        order = torch.argsort(probs, descending=True)
        tpr, fpr = labels[order].cumsum(0) / positives, (1 - labels[order]).cumsum(0) / negatives
        best = int(torch.argmax(tpr - fpr))
        below = float(probs[order][best + 1]) if best + 1 < len(order) else 0.0
        found.append(("roc", (float(probs[order][best]) + below) / 2))  # between the last deferred and the next
    return found
