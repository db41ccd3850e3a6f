"""A short in-memory fit: the inner loop of test-time training (a throwaway adapter per instance) and of SEAL (an
adapter per self-edit). No run folder, checkpoints, log or schedule: a few AdamW steps on token-level examples, the
loss measured before and after, and the model handed back in eval mode. Between fits, sdft.adapters.reset_adapters
returns the adapter to its fresh state; every fit builds a new optimizer, so no optimizer state carries over."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from sdft.console import progress_bar
from sdft.errors import UserError
from sdft.methods.harness import PromptStream, trainable_parameters
from sdft.methods.tokens import IGNORE, masked_example, prompt_completion_ids

Example = dict[str, list[int]]
"""{"input_ids": [...], "labels": [...]}: labels IGNORE (-100) where a token carries no loss."""


@dataclass
class FitResult:
    loss_before: float
    """Cross-entropy per label token over all the examples before the first step (eval mode, no grad)."""
    loss_after: float
    """The same after the last step."""
    steps: int
    seconds: float


def fit_adapter(model, tokenizer, examples: Sequence[Example], steps: int, learning_rate: float, batch_size: int,
                seed: int, weight_decay: float = 0.0, max_grad_norm: float | None = None,
                progress: bool = False, warmup_ratio: float = 0.0, cosine: bool = False) -> FitResult:
    """Train the model's trainable parameters (after wrap_with_lora: the adapter alone) for `steps` AdamW steps of
    `batch_size` examples, drawn in an order fixed by `seed` (epoch after epoch); each step's loss is the mean
    cross-entropy over its batch's label tokens. Dropout draws from `seed` too, and the caller's RNG state is
    restored afterwards, so a fit is deterministic for a seed and shifts no one else's draws. The learning rate is
    constant unless a linear warm-up (`warmup_ratio` of the steps) and a cosine decay to 0 are asked for (test-time
    training's recipe); no weight decay or gradient clipping unless asked for (a few steps from a fresh adapter need
    neither)."""
    params = _checked(model, examples, steps, batch_size)
    started, pad_id, device = time.perf_counter(), _pad_id(tokenizer), params[0].device
    loss_before = _mean_loss(model, examples, batch_size, pad_id, device)
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(steps, warmup_ratio, cosine))
    stream = PromptStream(list(examples), seed)
    try:
        with _seeded(seed, device), progress_bar(disable=not progress) as bar:
            task = bar.add_task("fitting the adapter", total=steps)
            model.train()
            for _ in range(steps):
                _step(model, optimizer, _collate(stream.next_batch(batch_size), pad_id, device), max_grad_norm)
                schedule.step()
                bar.advance(task)
    finally:
        model.eval()
    loss_after = _mean_loss(model, examples, batch_size, pad_id, device)
    return FitResult(loss_before, loss_after, steps, time.perf_counter() - started)


def _lr_factor(steps: int, warmup_ratio: float, cosine: bool):
    """step -> learning-rate factor: linear warm-up over ceil(warmup_ratio * steps) steps, then 1 or a cosine to 0."""
    warmup = math.ceil(warmup_ratio * steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if not cosine:
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    return factor


def examples_from_pairs(tokenizer, pairs: Sequence[tuple[str, str]], system_prompt: str | None = None) -> list[Example]:
    """(prompt, completion) pairs as fit examples: the prompt rendered with the chat template (no loss), then the
    completion and the eos token (learned), as SFT trains a row."""
    prompts, completions = [p for p, _ in pairs], [c for _, c in pairs]
    return [masked_example(p, c) for p, c in prompt_completion_ids(tokenizer, prompts, completions, system_prompt)]


def _checked(model, examples: Sequence[Example], steps: int, batch_size: int) -> list[torch.nn.Parameter]:
    """The parameters to train; a fit that cannot run (nothing to train or learn from) is refused up front."""
    params = trainable_parameters(model)
    if not params:
        raise UserError("fit_adapter: the model has no trainable parameters; wrap it with sdft.adapters.wrap_with_lora")
    if steps < 0 or batch_size < 1:
        raise UserError(f"fit_adapter needs steps >= 0 and batch_size >= 1, got {steps} and {batch_size}")
    if not examples:
        raise UserError("fit_adapter needs at least one example")
    for number, example in enumerate(examples):
        if len(example["input_ids"]) != len(example["labels"]) or all(t == IGNORE for t in example["labels"]):
            raise UserError(f"fit_adapter: example {number} needs as many labels as input_ids and one label not {IGNORE}")
    return params


def _pad_id(tokenizer) -> int:
    """Any id will do on padding (attention-masked, labels IGNORE); the tokenizer's own where it has one."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


@contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """The global RNG (dropout's) seeded for the fit, and the caller's state restored after it."""
    on_cpu = device.type == "cpu"
    devices = [] if on_cpu else range(torch.get_device_module(device.type).device_count())
    with torch.random.fork_rng(devices=devices, device_type=None if on_cpu else device.type):
        torch.manual_seed(seed)
        yield


def _collate(examples: Sequence[Example], pad_id: int, device: torch.device) -> dict[str, Tensor]:
    """Right-padded input_ids, labels (IGNORE on padding) and the attention mask, on `device`."""

    def pad(key: str, value: int) -> Tensor:
        rows = [torch.tensor(example[key], dtype=torch.long) for example in examples]
        return pad_sequence(rows, batch_first=True, padding_value=value).to(device)

    ids = pad("input_ids", pad_id)
    mask = pad_sequence([torch.ones(len(e["input_ids"]), dtype=torch.long) for e in examples], batch_first=True)
    return {"input_ids": ids, "attention_mask": mask.to(device), "labels": pad("labels", IGNORE)}


def _label_loss(model, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """(sum of the cross-entropy over the batch's label tokens, their number): position t predicts token t + 1."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    labels = batch["labels"][:, 1:]
    total = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels.flatten(),
                                              ignore_index=IGNORE, reduction="sum")
    return total, (labels != IGNORE).sum()


def _step(model, optimizer: torch.optim.Optimizer, batch: dict[str, Tensor], max_grad_norm: float | None) -> None:
    optimizer.zero_grad(set_to_none=True)  # nothing left over from before the fit
    total, count = _label_loss(model, batch)
    (total / count).backward()
    if max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(optimizer.param_groups[0]["params"], max_grad_norm)
    optimizer.step()


@torch.no_grad()
def _mean_loss(model, examples: Sequence[Example], batch_size: int, pad_id: int, device: torch.device) -> float:
    """Cross-entropy per label token over all examples, in eval mode (no dropout): the fit's before and after."""
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(examples), batch_size):
        batch_total, batch_count = _label_loss(model, _collate(examples[start:start + batch_size], pad_id, device))
        total, count = total + batch_total.item(), count + int(batch_count)
    return total / count
