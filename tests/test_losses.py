"""The SDFT divergences against a straightforward loop-and-probabilities reference, plus their edge cases."""

from __future__ import annotations

import math

import pytest
import torch

from sdft.errors import UserError
from sdft.methods.losses import LossConfig, distillation_loss, importance_weights

B, T, V = 2, 5, 7
# Sequence 0 is full; sequence 1 is padded on both sides (3 real tokens): skipping counts real tokens only.
MASK = torch.tensor([[1, 1, 1, 1, 1], [0, 1, 1, 1, 0]])


def make_logits(seed: int = 0, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    student = (2 * torch.randn(B, T, V, generator=gen, dtype=torch.float64)).to(dtype)
    teacher = (2 * torch.randn(B, T, V, generator=gen, dtype=torch.float64)).to(dtype)
    ids = torch.randint(0, V, (B, T), generator=gen)
    return student, teacher, ids


# ---- the reference: explicit loops over positions and vocabulary entries, plain probabilities ----


def softmax(row: torch.Tensor) -> list[torch.Tensor]:
    exps = [torch.exp(row[v]) for v in range(len(row))]
    total = sum(exps)
    return [e / total for e in exps]


def kl(p: list, q: list) -> torch.Tensor:
    return sum(pi * torch.log(pi / qi) for pi, qi in zip(p, q))


def jsd(student: list, teacher: list, alpha: float) -> torch.Tensor:
    mix = [(1 - alpha) * s + alpha * t for s, t in zip(student, teacher)]
    return alpha * kl(teacher, mix) + (1 - alpha) * kl(student, mix)


def topk_with_tail(probs: list, source: list, k: int) -> list:
    top = sorted(range(len(source)), key=lambda v: -source[v].item())[:k]
    kept = [probs[v] for v in top]
    return kept + [1 - sum(kept)]


def loss_positions(mask: torch.Tensor, skip: int) -> list[list[int]]:
    """Per sequence, the positions that carry loss: real tokens after the first `skip` real ones."""
    out = []
    for b in range(mask.shape[0]):
        real = [t for t in range(mask.shape[1]) if mask[b, t]]
        out.append(real[skip:])
    return out


def reference_loss(student, teacher, mask, skip, token_loss, weights=None) -> torch.Tensor:
    """Mean over each sequence's loss tokens, then over sequences that have any."""
    seq_means = []
    for b, positions in enumerate(loss_positions(mask, skip)):
        terms = []
        for t in positions:
            w = 1.0 if weights is None else float(weights[b, t])
            terms.append(w * token_loss(softmax(student[b, t]), softmax(teacher[b, t])))
        if terms:
            seq_means.append(sum(terms) / len(terms))
    return sum(seq_means) / len(seq_means)


def reference_value_and_grad(student, teacher, mask, skip, token_loss, weights=None):
    leaf = student.clone().requires_grad_(True)
    value = reference_loss(leaf, teacher, mask, skip, token_loss, weights)
    return value.detach(), torch.autograd.grad(value, leaf)[0]


def module_value_and_grad(student, teacher, mask, config, **kwargs):
    leaf = student.clone().requires_grad_(True)
    loss, _ = distillation_loss(leaf, teacher, mask, config, **kwargs)
    loss.backward()
    return loss.detach(), leaf.grad


def assert_close(actual, expected, rtol=1e-10, atol=1e-12):
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)


# ---- values and gradients against the reference ----

REFERENCE_CASES = {
    "forward_kl": (dict(divergence="forward_kl"), lambda s, t: kl(t, s)),
    "reverse_kl": (dict(divergence="reverse_kl"), lambda s, t: kl(s, t)),
    "jsd_0.1": (dict(divergence="jsd", alpha=0.1), lambda s, t: jsd(s, t, 0.1)),
    "jsd_0.5": (dict(divergence="jsd", alpha=0.5), lambda s, t: jsd(s, t, 0.5)),
    "jsd_0.9": (dict(divergence="jsd", alpha=0.9), lambda s, t: jsd(s, t, 0.9)),
    "top3_teacher_fkl": (
        dict(top_k=3, topk_source="teacher"),
        lambda s, t: kl(topk_with_tail(t, t, 3), topk_with_tail(s, t, 3)),
    ),
    "top3_student_fkl": (
        dict(top_k=3, topk_source="student"),
        lambda s, t: kl(topk_with_tail(t, s, 3), topk_with_tail(s, s, 3)),
    ),
    "top2_student_rkl": (
        dict(divergence="reverse_kl", top_k=2, topk_source="student"),
        lambda s, t: kl(topk_with_tail(s, s, 2), topk_with_tail(t, s, 2)),
    ),
    "top1_teacher_jsd": (
        dict(divergence="jsd", alpha=0.3, top_k=1, topk_source="teacher"),
        lambda s, t: jsd(topk_with_tail(s, t, 1), topk_with_tail(t, t, 1), 0.3),
    ),
}


@pytest.mark.parametrize("case", sorted(REFERENCE_CASES))
@pytest.mark.parametrize("skip", [0, 1])
def test_value_and_gradient_match_reference(case, skip):
    kwargs, token_loss = REFERENCE_CASES[case]
    student, teacher, _ = make_logits()
    config = LossConfig(skip_first_tokens=skip, chunk_size=3, **kwargs)  # several chunks
    value, grad = module_value_and_grad(student, teacher, MASK, config)
    ref_value, ref_grad = reference_value_and_grad(student, teacher, MASK, skip, token_loss)
    assert value.item() > 1e-3  # a real, non-trivial divergence
    assert_close(value, ref_value)
    assert_close(grad, ref_grad)


def test_teacher_is_a_constant():
    student, teacher, _ = make_logits()
    teacher.requires_grad_(True)
    loss, _ = distillation_loss(student.requires_grad_(True), teacher, MASK, LossConfig())
    loss.backward()
    assert teacher.grad is None
    assert student.grad.abs().sum() > 0


def test_token_weights_match_reference():
    student, teacher, _ = make_logits()
    weights = torch.linspace(0.2, 2.0, B * T, dtype=torch.float64).reshape(B, T)
    config = LossConfig(skip_first_tokens=1)
    value, grad = module_value_and_grad(student, teacher, MASK, config, token_weights=weights)
    ref_value, ref_grad = reference_value_and_grad(student, teacher, MASK, 1, lambda s, t: kl(t, s), weights)
    assert_close(value, ref_value)
    assert_close(grad, ref_grad)


def test_sampled_token_value_and_hand_gradient():
    """Value: mean of log pS(y) - log pT(y). Gradient: coeff * r * (onehot(y) - pS), the REINFORCE surrogate."""
    student, teacher, ids = make_logits()
    skip = 1
    config = LossConfig(divergence="sampled_token", skip_first_tokens=skip, chunk_size=2)
    value, grad = module_value_and_grad(student, teacher, MASK, config, completion_ids=ids)

    positions = loss_positions(MASK, skip)
    expected_grad = torch.zeros(B, T, V, dtype=torch.float64)
    seq_means = []
    for b, seq_positions in enumerate(positions):
        ratios = []
        for t in seq_positions:
            p_s, p_t = softmax(student[b, t]), softmax(teacher[b, t])
            y = int(ids[b, t])
            r = math.log(p_s[y]) - math.log(p_t[y])
            ratios.append(r)
            coeff = 1 / (len(seq_positions) * len(positions))
            for v in range(V):
                expected_grad[b, t, v] = coeff * r * ((v == y) - float(p_s[v]))
        seq_means.append(sum(ratios) / len(ratios))
    assert_close(value, torch.tensor(sum(seq_means) / len(seq_means), dtype=torch.float64))
    assert_close(grad, expected_grad)


def test_sampled_token_needs_ids():
    student, teacher, _ = make_logits()
    with pytest.raises(ValueError, match="completion_ids"):
        distillation_loss(student, teacher, MASK, LossConfig(divergence="sampled_token"))


def test_stats_match_reference():
    student, teacher, ids = make_logits()
    _, stats = distillation_loss(student, teacher, MASK, LossConfig(skip_first_tokens=1), completion_ids=ids)
    rows = [(b, t) for b, positions in enumerate(loss_positions(MASK, 1)) for t in positions]
    fkl, rkl, ent_s, ent_t, ratio = 0.0, 0.0, 0.0, 0.0, 0.0
    for b, t in rows:
        p_s, p_t = softmax(student[b, t]), softmax(teacher[b, t])
        fkl += float(kl(p_t, p_s)) / len(rows)
        rkl += float(kl(p_s, p_t)) / len(rows)
        ent_s -= sum(float(p * torch.log(p)) for p in p_s) / len(rows)
        ent_t -= sum(float(p * torch.log(p)) for p in p_t) / len(rows)
        y = int(ids[b, t])
        ratio += (math.log(p_t[y]) - math.log(p_s[y])) / len(rows)
    got = stats.to_dict()
    assert got["num_tokens"] == len(rows) == 6
    for name, expected in [("forward_kl", fkl), ("reverse_kl", rkl), ("student_entropy", ent_s),
                           ("teacher_entropy", ent_t), ("sampled_logratio", ratio)]:
        assert got[name] == pytest.approx(expected, rel=1e-10), name
    _, no_ids = distillation_loss(student, teacher, MASK, LossConfig())
    assert no_ids.sampled_logratio is None and "sampled_logratio" not in no_ids.to_dict()


# ---- masking ----


@pytest.mark.parametrize("divergence", ["forward_kl", "jsd", "sampled_token"])
def test_skipped_and_padded_positions_do_not_matter(divergence):
    student, teacher, ids = make_logits()
    config = LossConfig(divergence=divergence, skip_first_tokens=2)
    # Loss positions with skip 2: sequence 0 -> t in {2, 3, 4}; sequence 1 (real at 1, 2, 3) -> t = 3.
    outside = torch.ones(B, T, dtype=torch.bool)
    outside[0, 2:] = False
    outside[1, 3] = False
    value, grad = module_value_and_grad(student, teacher, MASK, config, completion_ids=ids)
    student2, teacher2 = student.clone(), teacher.clone()
    student2[outside] += 5 * torch.randn(int(outside.sum()), V, dtype=torch.float64)
    teacher2[outside] -= 3.0 * torch.arange(V, dtype=torch.float64)
    value2, grad2 = module_value_and_grad(student2, teacher2, MASK, config, completion_ids=ids)
    assert_close(value2, value, rtol=0, atol=0)
    assert torch.equal(grad2, grad)
    assert torch.equal(grad[outside], torch.zeros_like(grad[outside]))
    assert (grad[~outside].abs().sum(-1) > 0).all()


def test_all_tokens_skipped_gives_zero_loss_and_backward_works():
    student, teacher, _ = make_logits()
    student.requires_grad_(True)
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0]])
    loss, stats = distillation_loss(student, teacher, mask, LossConfig(skip_first_tokens=3))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(student.grad, torch.zeros_like(student))
    assert stats.num_tokens == 0 and stats.forward_kl.item() == 0.0


def test_sequence_shorter_than_skip_is_left_out_of_the_mean():
    student, teacher, _ = make_logits()
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]])  # sequence 0 has 2 tokens < skip 3
    config = LossConfig(skip_first_tokens=3)
    value, grad = module_value_and_grad(student, teacher, mask, config)
    alone, alone_grad = module_value_and_grad(student[1:], teacher[1:], mask[1:], config)
    assert_close(value, alone)  # not half of it: the empty sequence does not count
    assert_close(grad[1:], alone_grad)
    assert torch.equal(grad[0], torch.zeros_like(grad[0]))
    ref_value, _ = reference_value_and_grad(student, teacher, mask, 3, lambda s, t: kl(t, s))
    assert_close(value, ref_value)


# ---- chunking, precision, gradcheck ----


@pytest.mark.parametrize(
    "kwargs",
    [dict(), dict(divergence="reverse_kl"), dict(divergence="jsd", alpha=0.7), dict(top_k=3),
     dict(top_k=2, topk_source="student", divergence="jsd"), dict(divergence="sampled_token")],
)
def test_chunked_equals_unchunked(kwargs):
    student, teacher, ids = make_logits(seed=1)
    whole = LossConfig(skip_first_tokens=1, chunk_size=10_000, **kwargs)
    value, grad = module_value_and_grad(student, teacher, MASK, whole, completion_ids=ids)
    for chunk_size in [1, 2, 3, 5, 7]:  # 6 loss rows: 1, uneven, and larger than the row count
        config = LossConfig(skip_first_tokens=1, chunk_size=chunk_size, **kwargs)
        chunked, chunked_grad = module_value_and_grad(student, teacher, MASK, config, completion_ids=ids)
        assert_close(chunked, value, rtol=1e-13, atol=1e-15)
        assert_close(chunked_grad, grad, rtol=1e-13, atol=1e-15)


def test_no_grad_mode_gives_the_same_value():
    student, teacher, _ = make_logits()
    with_grad, _ = distillation_loss(student.clone().requires_grad_(True), teacher, MASK, LossConfig())
    with torch.no_grad():
        plain, _ = distillation_loss(student.clone().requires_grad_(True), teacher, MASK, LossConfig())
    assert plain.grad_fn is None
    assert plain.item() == with_grad.item()


@pytest.mark.parametrize("kwargs", [dict(), dict(divergence="jsd", alpha=0.3), dict(top_k=2, divergence="jsd")])
def test_gradcheck(kwargs):
    student, teacher, _ = make_logits(seed=2)
    config = LossConfig(skip_first_tokens=1, chunk_size=4, **kwargs)
    student = student[:, :4].clone().requires_grad_(True)
    teacher, mask = teacher[:, :4], MASK[:, :4]
    assert torch.autograd.gradcheck(lambda s: distillation_loss(s, teacher, mask, config)[0], (student,))


def test_bf16_logits_are_computed_in_fp32():
    student, teacher, _ = make_logits(dtype=torch.bfloat16)
    config = LossConfig(skip_first_tokens=1, divergence="jsd")
    value, grad = module_value_and_grad(student, teacher, MASK, config)
    value32, grad32 = module_value_and_grad(student.float(), teacher.float(), MASK, config)
    assert value.dtype == torch.float32 and grad.dtype == torch.bfloat16
    assert value.item() == pytest.approx(value32.item(), rel=1e-6)  # same inputs, same fp32 arithmetic
    torch.testing.assert_close(grad.float(), grad32, rtol=1e-2, atol=1e-4)  # bf16 rounding of the gradient only


# ---- limits ----


def test_jsd_tends_to_forward_kl_at_alpha_0_and_reverse_kl_at_alpha_1():
    student, teacher, _ = make_logits()
    fkl, fkl_grad = module_value_and_grad(student, teacher, MASK, LossConfig(skip_first_tokens=1))
    rkl, rkl_grad = module_value_and_grad(student, teacher, MASK, LossConfig("reverse_kl", skip_first_tokens=1))
    assert abs(fkl - rkl) > 0.1 * fkl  # the two limits are distinguishable on this data
    # The gap shrinks linearly in eps (about 5e-5 relative at eps = 1e-6 here, where p_T / p_S reaches 3e3).
    eps = 1e-8
    low, low_grad = module_value_and_grad(student, teacher, MASK, LossConfig("jsd", eps, skip_first_tokens=1))
    high, high_grad = module_value_and_grad(student, teacher, MASK, LossConfig("jsd", 1 - eps, skip_first_tokens=1))
    assert_close(low / eps, fkl, rtol=1e-5, atol=0)
    assert_close(low_grad / eps, fkl_grad, rtol=0, atol=1e-5 * fkl_grad.abs().max().item())
    assert_close(high / eps, rkl, rtol=1e-5, atol=0)
    assert_close(high_grad / eps, rkl_grad, rtol=0, atol=1e-5 * rkl_grad.abs().max().item())


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd"])
@pytest.mark.parametrize("source", ["teacher", "student"])
def test_top_k_equal_to_vocabulary_is_the_full_loss(divergence, source):
    student, teacher, _ = make_logits()
    full = LossConfig(divergence, skip_first_tokens=1)
    value, grad = module_value_and_grad(student, teacher, MASK, full)
    topk = LossConfig(divergence, top_k=V, topk_source=source, skip_first_tokens=1)
    value_k, grad_k = module_value_and_grad(student, teacher, MASK, topk)
    assert_close(value_k, value)
    assert_close(grad_k, grad)
    smaller = LossConfig(divergence, top_k=2, topk_source=source, skip_first_tokens=1)
    assert abs(module_value_and_grad(student, teacher, MASK, smaller)[0] - value) > 1e-4  # k < V does differ


# ---- importance weights ----


def test_importance_weights_are_capped_constants():
    logp_train = torch.tensor([[-1.0, -0.5, -3.0]], requires_grad=True)
    logp_sampler = torch.tensor([[-1.5, -1.5, -2.0]])
    weights = importance_weights(logp_train, logp_sampler, cap=2.0)
    torch.testing.assert_close(weights, torch.tensor([[math.exp(0.5), 2.0, math.exp(-1.0)]]))
    assert not weights.requires_grad
    with pytest.raises(UserError, match="cap"):
        importance_weights(logp_train, logp_sampler, cap=0.0)


# ---- configuration ----


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(divergence="forward-kl"), "divergence"),
        (dict(divergence="jsd", alpha=0.0), "alpha"),
        (dict(divergence="jsd", alpha=1.0), "alpha"),
        (dict(divergence="jsd", alpha=-0.2), "alpha"),
        (dict(top_k=0), "top_k"),
        (dict(top_k=2.5), "top_k"),
        (dict(divergence="sampled_token", top_k=5), "top_k"),
        (dict(topk_source="both"), "topk_source"),
        (dict(skip_first_tokens=-1), "skip_first_tokens"),
        (dict(chunk_size=0), "chunk_size"),
    ],
)
def test_bad_config_names_the_field(kwargs, field):
    with pytest.raises(UserError, match=rf"LossConfig\.{field}\b"):
        LossConfig(**kwargs)


def test_unknown_divergence_suggests_the_closest():
    with pytest.raises(UserError, match="did you mean 'forward_kl'"):
        LossConfig(divergence="forward-kl")


def test_top_k_larger_than_vocabulary_is_a_user_error():
    student, teacher, _ = make_logits()
    with pytest.raises(UserError, match="top_k"):
        distillation_loss(student, teacher, MASK, LossConfig(top_k=V + 1))


def test_a_large_vocabulary_gets_smaller_chunks_and_the_same_loss(monkeypatch):
    """The element cap bounds a chunk's memory whatever chunk_size says, and changes no value or gradient."""
    from sdft.methods import losses

    student, teacher, ids = make_logits(seed=3)
    config = LossConfig(skip_first_tokens=1, chunk_size=256)
    value, grad = module_value_and_grad(student, teacher, MASK, config, completion_ids=ids)
    calls = []
    real_run_chunk = losses._run_chunk
    monkeypatch.setattr(losses, "_run_chunk", lambda chunk, *a: calls.append(len(chunk.coeff)) or real_run_chunk(chunk, *a))
    monkeypatch.setattr(losses, "CHUNK_ELEMENTS", 2 * V + 1)  # two rows of logits per chunk
    capped, capped_grad = module_value_and_grad(student, teacher, MASK, config, completion_ids=ids)
    assert calls == [2, 2, 2]  # 6 loss rows
    assert_close(capped, value, rtol=1e-13, atol=1e-15)
    assert_close(capped_grad, grad, rtol=1e-13, atol=1e-15)
