"""SFT and DFT in the native loop (methods/loop.py), the path they take when train.sharding=fsdp: the Hugging Face
Trainer shards through accelerate, which does not shard on CPU, while the loop shards the same way on CPUs and GPUs
(sdft/distributed.py). The examples are SFT's own (methods/tokens.py: prompt without loss, demonstration + eos); the
optimizer and schedule are every method's (harness.py); the loss is TRL's `nll` or `dft` per token.

The loss of a step is the mean over every demonstration token of the global batch (all micro-batches, all
processes), whatever the processes: every process draws the same global batch from the stream, keeps its share, and
scales its token sum by processes / global token count (the gradients are then averaged across processes), so two
processes compute what one computes on the same batch.
"""

from __future__ import annotations

import time
from functools import partial

import torch

from sdft.methods.harness import StageResult
from sdft.methods.loop import (
    LoopState,
    build_loop,
    mean_over_processes,
    optimizer_step,
    require_finite,
    run_loop,
)
from sdft.methods.registry import method_of
from sdft.methods.stage import Stage
from sdft.methods.tokens import IGNORE

Example = dict[str, list[int]]


def train_on_examples_native(stage: Stage, examples: list[Example], label: str, extra: dict) -> StageResult:
    """Train `stage` on `examples` in the native loop; `extra` joins every metrics line (as in hf_session)."""
    state = build_loop(stage, LoopState, lambda: examples, lambda model: None)
    return run_loop(state, partial(demonstration_step, dft=method_of(stage.cfg).hf_loss_type == "dft", extra=extra),
                    label)


def demonstration_step(state: LoopState, dft: bool, extra: dict) -> tuple[dict, list[dict]]:
    """One optimizer step over train.batch_size examples, in train.gradient_accumulation micro-batches."""
    cfg, started = state.cfg, time.perf_counter()
    processes, rank = state.accelerator.num_processes, state.accelerator.process_index
    batches = [state.stream.next_batch(cfg.batch_size // cfg.gradient_accumulation)
               for _ in range(cfg.gradient_accumulation)]
    total = sum(_label_tokens(example) for batch in batches for example in batch)
    loss_sum = 0.0
    for batch in batches:
        summed = _token_loss_sum(state, batch[rank::processes], dft)
        require_finite(summed, state)
        (summed * processes / max(total, 1)).backward()
        loss_sum += summed.item()
    grad_norm, learning_rate = optimizer_step(state)
    state.step += 1
    seconds = time.perf_counter() - started
    metrics = {"loss": loss_sum * processes / max(total, 1), "grad_norm": grad_norm, "learning_rate": learning_rate,
               "tokens_per_second": total / processes / seconds, "step_seconds": seconds}
    return {**mean_over_processes(state.accelerator, metrics), "tokens": total, **extra}, []


def _label_tokens(example: Example) -> int:
    return sum(label != IGNORE for label in example["labels"][1:])  # the first token is predicted by nothing


def _token_loss_sum(state: LoopState, examples: list[Example], dft: bool) -> torch.Tensor:
    """Sum over the demonstration tokens of -log p (nll), or of -p.detach() * log p (dft, TRL's loss_type 'dft')."""
    device, pad = state.accelerator.device, state.tokenizer.pad_token_id
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad, dtype=torch.long, device=device)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long, device=device)
    mask = torch.zeros((len(examples), width), dtype=torch.long, device=device)
    for i, example in enumerate(examples):  # right padding, as SFT's collator pads
        n = len(example["input_ids"])
        ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(example["input_ids"]), torch.tensor(example["labels"]), 1
    logits = state.wrapped(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    target = labels[:, 1:]
    keep = target != IGNORE
    logp = torch.log_softmax(logits, dim=-1).gather(-1, target.clamp(min=0)[..., None])[..., 0]
    per_token = -logp.exp().detach() * logp if dft else -logp
    return (per_token * keep).sum()
