"""Co-LLM training (METHOD.md 3.2): the deferral model (the base plus one vector g, z_t = <g, h_t> on the base's
last hidden state), gold-response examples with the expert's scores of their tokens, and the two phases, each an
optimizer step plugged into the native loop (methods/loop.py: checkpoints, exact resume, Ctrl-C, metrics.jsonl):

- `init_step`: g alone, base frozen, BCE against the weak labels (expert right, base wrong), positives weighted;
- `marginal_step`: -log[(1 - s) p_base + s p_expert] on response tokens, with the base frozen, LoRA or full.

The expert is never loaded while training: its log-probs of the gold tokens are computed once (`expert_scores`) and
stored by the command (sdft/collm_run.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from sdft.methods.collm_loss import (
    gold_logprobs,
    marginal_nll,
    weak_label_bce,
    weak_labels,
)
from sdft.methods.loop import LoopState, optimizer_step, require_finite

HEAD_FILE = "head.safetensors"
BASE_SUBDIR = "base"
"""A saved deferral model: head.safetensors (g), and base/ when the base trained (LoRA adapter or full weights)."""


def causal_parts(model) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(the decoder stack, the LM head) of a causal LM, through DDP and peft wrappers: the stack's output is the last
    hidden state h_t (after the final norm), the head maps it to the logits."""
    model = getattr(model, "module", model)
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model.model, model.lm_head


class DeferralModel(torch.nn.Module):
    """The base model and the deferral head g (a separate linear map is the paper's extra output row)."""

    def __init__(self, base: torch.nn.Module, hidden_size: int):
        super().__init__()
        self.base = base
        self.head = torch.nn.Linear(hidden_size, 1, bias=False)  # paper: z = <g, h>, no bias
        torch.nn.init.zeros_(self.head.weight)  # s = 0.5 everywhere until the weak-label initialisation

    def deferral_logit(self, hidden: Tensor) -> Tensor:
        return self.head(hidden.float()).squeeze(-1)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(logits, last hidden states, deferral logits) at every position."""
        inner, lm_head = causal_parts(self.base)
        hidden = inner(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return lm_head(hidden), hidden, self.deferral_logit(hidden)

    def base_trains(self) -> bool:
        return any(p.requires_grad for p in self.base.parameters())

    def save_pretrained(self, path, safe_serialization: bool = True) -> None:
        """What the loop saves at the end of a phase: the head, and the base when it trained."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file({"weight": self.head.weight.detach().contiguous()}, str(path / HEAD_FILE))
        if self.base_trains():
            self.base.save_pretrained(str(path / BASE_SUBDIR), safe_serialization=safe_serialization)

    def load_head(self, folder: Path) -> None:
        with torch.no_grad():
            self.head.weight.copy_(load_file(str(Path(folder) / HEAD_FILE))["weight"])


@dataclass
class GoldExample:
    """A prompt and its gold response (with eos) as ids, and the expert's scores of the response tokens."""

    ids: list[int]
    prompt_len: int
    expert_logp: Tensor | None = None
    expert_right: Tensor | None = None
    """Whether the expert's argmax was the gold token."""


def collate(examples: list[GoldExample], pad_id: int, device: torch.device) -> dict[str, Tensor]:
    """Right-padded ids and, per position t < L-1, the gold token t+1, whether it is a response token, and the
    expert's scores of it (0 elsewhere)."""
    width = max(len(e.ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attention = torch.zeros_like(ids)
    mask = torch.zeros((len(examples), width - 1), dtype=torch.bool)
    expert_logp, expert_right = torch.zeros(mask.shape), torch.zeros(mask.shape, dtype=torch.bool)
    for i, e in enumerate(examples):
        ids[i, : len(e.ids)], attention[i, : len(e.ids)] = torch.tensor(e.ids), 1
        span = slice(e.prompt_len - 1, len(e.ids) - 1)  # positions predicting the response tokens
        mask[i, span] = True
        if e.expert_logp is not None:
            expert_logp[i, span], expert_right[i, span] = e.expert_logp, e.expert_right.bool()
    batch = {"input_ids": ids, "attention_mask": attention, "gold": ids[:, 1:], "mask": mask,
             "expert_logp": expert_logp, "expert_right": expert_right}
    return {k: v.to(device) for k, v in batch.items()}


@torch.no_grad()
def expert_scores(model, examples: list[GoldExample], pad_id: int, batch_size: int, on_progress=None) -> None:
    """Fill each example's expert_logp and expert_right from one forward pass of `model` (the expert)."""
    model.eval()
    device = next(model.parameters()).device
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        batch = collate(chunk, pad_id, device)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        logp, right = gold_logprobs(logits, batch["gold"]).cpu(), (logits.argmax(-1) == batch["gold"]).cpu()
        for i, e in enumerate(chunk):
            span = slice(e.prompt_len - 1, len(e.ids) - 1)
            e.expert_logp, e.expert_right = logp[i, span].clone(), right[i, span].clone()
        if on_progress:
            on_progress(len(chunk))


def _micro_batches(state: LoopState, micro: int | None) -> tuple[list[dict[str, Tensor]], int]:
    rows = state.stream.next_batch(state.cfg.batch_size)
    size = micro or len(rows)
    pad = state.tokenizer.pad_token_id
    batches = [collate(rows[i : i + size], pad, state.accelerator.device) for i in range(0, len(rows), size)]
    return batches, int(sum(b["mask"].sum() for b in batches))


def init_step(state: LoopState, pos_weight: float, micro: int | None = None) -> tuple[dict, list]:
    """One step of the weak-label initialisation: g alone on the frozen base's hidden states."""
    batches, tokens = _micro_batches(state, micro)
    model, total, positives = state.model, 0.0, 0.0
    for batch in batches:
        with torch.no_grad():
            logits, hidden, _ = model(batch["input_ids"], batch["attention_mask"])
            labels = weak_labels(batch["gold"], logits[:, :-1].argmax(-1), batch["expert_right"])
        z = model.deferral_logit(hidden[:, :-1])
        share = batch["mask"].sum() / tokens
        loss = weak_label_bce(z, labels, batch["mask"], pos_weight) * share
        require_finite(loss, state)
        state.accelerator.backward(loss)
        total, positives = total + loss.item(), positives + float(labels[batch["mask"]].sum())
    grad_norm, lr = optimizer_step(state)
    state.step += 1
    return {"loss": total, "positive_share": positives / tokens, "grad_norm": grad_norm, "learning_rate": lr}, []


def marginal_step(state: LoopState, micro: int | None = None) -> tuple[dict, list]:
    """One step of the marginal likelihood on response tokens (the base's forward without grad when it is frozen)."""
    batches, tokens = _micro_batches(state, micro)
    model, sums = state.model, {"loss": 0.0, "base_nll": 0.0, "expert_nll": 0.0, "deferral": 0.0}
    for batch in batches:
        with torch.set_grad_enabled(model.base_trains()):
            logits, hidden, _ = model(batch["input_ids"], batch["attention_mask"])
        z = model.deferral_logit(hidden[:, :-1])
        base_logp, mask = gold_logprobs(logits[:, :-1], batch["gold"]), batch["mask"]
        share = mask.sum() / tokens
        loss = marginal_nll(base_logp, batch["expert_logp"], z, mask) * share
        require_finite(loss, state)
        state.accelerator.backward(loss)
        sums["loss"] += loss.item()
        for key, value in (("base_nll", -base_logp), ("expert_nll", -batch["expert_logp"]), ("deferral", torch.sigmoid(z))):
            sums[key] += float(value.detach()[mask].sum()) / tokens
    grad_norm, lr = optimizer_step(state)
    state.step += 1
    return {**sums, "grad_norm": grad_norm, "learning_rate": lr}, []
