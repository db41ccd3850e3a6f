"""Co-LLM's losses on token positions (Shen et al. 2024, METHOD.md 3.2): pure functions of per-token log-probs and
deferral logits, so that tests can check them against the formulas.

At a position t the latent Z_t picks who writes the gold token x_t: P(Z_t = 1) = s_t = sigmoid(z_t), z_t the
deferral head's logit on the base model's hidden state. The marginal likelihood of the gold token is
(1 - s_t) p_base(x_t) + s_t p_expert(x_t), computed in log space."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def marginal_nll(base_logp: Tensor, expert_logp: Tensor, z: Tensor, mask: Tensor) -> Tensor:
    """-mean over masked positions of log[(1 - s) p_base + s p_expert]: logsumexp of log(1 - s) + log p_base and
    log s + log p_expert (log(1 - s) = logsigmoid(-z)), so neither probability underflows. Positions where `mask` is
    False contribute nothing (not even a NaN)."""
    mixed = torch.logaddexp(F.logsigmoid(-z) + base_logp, F.logsigmoid(z) + expert_logp)
    mask = mask.bool()
    return -torch.where(mask, mixed, torch.zeros_like(mixed)).sum() / mask.sum().clamp(min=1)


def weak_labels(gold: Tensor, base_argmax: Tensor, expert_right: Tensor) -> Tensor:
    """The paper's initialisation targets: 1 where the expert's argmax is the gold token and the base's is not."""
    return (expert_right.bool() & (base_argmax != gold)).float()


def weak_label_bce(z: Tensor, labels: Tensor, mask: Tensor, pos_weight: float) -> Tensor:
    """Binary cross-entropy of the deferral logits against the weak labels, positives weighted by `pos_weight`
    (paper: 8), over masked positions only."""
    mask = mask.bool()
    weight = torch.tensor(pos_weight, dtype=z.dtype, device=z.device)
    return F.binary_cross_entropy_with_logits(z[mask], labels[mask].to(z.dtype), pos_weight=weight)


def gold_logprobs(logits: Tensor, gold: Tensor) -> Tensor:
    """log p(gold) per position (fp32), without keeping a [B, T, V] log-softmax alive longer than needed."""
    logits = logits.float()
    return logits.gather(-1, gold.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
