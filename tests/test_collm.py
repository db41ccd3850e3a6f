"""Co-LLM's pieces (methods/collm_loss.py, methods/collm.py, generation/deferral.py, collm_steps.py): the loss against
its formula and its limits, what trains, what the head learns on a fixture, the two-model decoder against
single-model greedy decoding and a no-cache reference, the score cache, and resume of the training phases."""

from __future__ import annotations

import dataclasses
import math
import random

import pytest
import torch
from conftest import build_tiny_model, stop_after

from sdft.collm_steps import candidates, run_phase, score_examples, set_trainable
from sdft.config import Config, ModelConfig, SamplingConfig
from sdft.generation import left_pad
from sdft.generation.deferral import defer_decode, threshold_logit
from sdft.generation.native import NativeBackend
from sdft.methods.collm import DeferralModel, GoldExample, collate
from sdft.methods.collm_loss import marginal_nll, weak_label_bce, weak_labels
from sdft.models import load_model
from sdft.prompts import render_prompt
from sdft.tasks.spec import TaskSpec

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def expert_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny-expert"), seed=1)


def _load(path):
    return load_model(ModelConfig(name_or_path=str(path), device="cpu"))


# --- the loss ---------------------------------------------------------------------------------------------

def test_marginal_nll_is_the_formula_and_tends_to_each_models_nll():
    torch.manual_seed(0)
    base, expert = -torch.rand(2, 5) * 4, -torch.rand(2, 5) * 4
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    z = torch.randn(2, 5)
    s = torch.sigmoid(z)
    reference = -torch.log((1 - s) * base.exp() + s * expert.exp())[mask].mean()
    assert torch.allclose(marginal_nll(base, expert, z, mask), reference, atol=1e-6)
    nll_base, nll_expert = -base[mask].mean(), -expert[mask].mean()
    assert torch.allclose(marginal_nll(base, expert, torch.full_like(z, -60.0), mask), nll_base, atol=1e-5)
    assert torch.allclose(marginal_nll(base, expert, torch.full_like(z, 60.0), mask), nll_expert, atol=1e-5)
    # masked positions contribute nothing, whatever they hold (even -inf log-probs)
    wild = base.clone()
    wild[~mask] = -math.inf
    z_wild = z.clone()
    z_wild[~mask] = 1e6
    assert torch.equal(marginal_nll(wild, expert, z_wild, mask), marginal_nll(base, expert, z, mask))


def test_weak_labels_mark_tokens_only_the_expert_gets_right():
    gold = torch.tensor([[3, 4, 5, 6]])
    base_argmax = torch.tensor([[3, 0, 5, 0]])
    expert_right = torch.tensor([[True, True, False, False]])
    assert weak_labels(gold, base_argmax, expert_right).tolist() == [[0.0, 1.0, 0.0, 0.0]]
    z, labels, mask = torch.tensor([0.5, -1.0]), torch.tensor([1.0, 0.0]), torch.tensor([True, True])
    expected = (8 * math.log1p(math.exp(-0.5)) + math.log1p(math.exp(-1.0))) / 2
    assert weak_label_bce(z, labels, mask, 8.0).item() == pytest.approx(expected, rel=1e-6)


# --- training ---------------------------------------------------------------------------------------------

def _fixture_examples(tokenizer, n: int, seed: int = 0) -> list[GoldExample]:
    """Responses of letters with '=<digit>' inside: the expert knows the digits (p 0.95) and not the letters (p 0.001);
    the base is a random model (about 1/100 on every token)."""
    rng = random.Random(seed)
    prompt = tokenizer(render_prompt(tokenizer, "Q", None), add_special_tokens=False)["input_ids"]
    examples = []
    for _ in range(n):
        text = "".join(rng.choice("abcdef") + (f"={rng.randint(0, 9)}" if rng.random() < 0.5 else "") for _ in range(6))
        ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        digits = torch.tensor([tokenizer.decode([i]).isdigit() for i in ids])
        examples.append(GoldExample([*prompt, *ids], len(prompt), torch.where(digits, math.log(0.95), math.log(1e-3)),
                                    digits))
    return examples


def _cfg(**collm) -> Config:
    cfg = Config()
    settings = {"init_steps": 0, "epochs": None, "steps": 30, "batch_size": 8, "learning_rate": 5e-2,
                "train_base": "frozen", **collm}
    train = dataclasses.replace(cfg.train, checkpoint_every=5, log_every=5)
    return dataclasses.replace(cfg, train=train, collm=dataclasses.replace(cfg.collm, **settings))


def _phase(cfg, tiny_model_dir, run_dir, examples, phase="train"):
    loaded = _load(tiny_model_dir)
    model = DeferralModel(loaded.model, loaded.model.config.hidden_size)
    set_trainable(model, phase, cfg.collm.train_base)
    task = TaskSpec("fixture", "1", "fixture", "exact", {"train": []})
    return model, run_phase(cfg, phase, model, loaded, task, run_dir, examples)


def test_head_only_training_changes_only_the_head_and_learns_where_the_expert_knows(tiny_model_dir, tmp_path):
    loaded = _load(tiny_model_dir)
    examples = _fixture_examples(loaded.tokenizer, 48)
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    model, steps = _phase(_cfg(), tiny_model_dir, tmp_path / "run", examples)
    assert steps == 30
    after = {k.removeprefix("base."): v for k, v in model.state_dict().items() if k.startswith("base.")}
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert model.head.weight.abs().sum() > 0  # started at zero
    batch = collate(_fixture_examples(loaded.tokenizer, 16, seed=1), loaded.tokenizer.pad_token_id, torch.device("cpu"))
    with torch.no_grad():
        _, _, z = model(batch["input_ids"], batch["attention_mask"])
    s = torch.sigmoid(z[:, :-1])
    expert_only = batch["expert_right"] & batch["mask"]
    rest = ~batch["expert_right"] & batch["mask"]
    assert s[expert_only].mean() > 3 * s[rest].mean(), (s[expert_only].mean(), s[rest].mean())


def test_lora_and_full_modes_train_the_base_too(tiny_model_dir):
    loaded = _load(tiny_model_dir)
    model = DeferralModel(loaded.model, loaded.model.config.hidden_size)
    set_trainable(model, "init", "full")
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["head.weight"]
    set_trainable(model, "train", "full")
    assert all(p.requires_grad for p in model.parameters())


def test_a_phase_resumes_to_the_uninterrupted_result_and_a_finished_one_is_loaded(tiny_model_dir, tmp_path,
                                                                                   monkeypatch):
    from sdft.methods import loop

    tokenizer = _load(tiny_model_dir).tokenizer
    cfg, examples = _cfg(steps=12), _fixture_examples(tokenizer, 24)
    whole, _ = _phase(cfg, tiny_model_dir, tmp_path / "whole", examples)
    monkeypatch.setattr(loop, "graceful_interrupt", stop_after(7))
    with pytest.raises(KeyboardInterrupt):
        _phase(cfg, tiny_model_dir, tmp_path / "cut", examples)
    monkeypatch.undo()
    resumed, steps = _phase(cfg, tiny_model_dir, tmp_path / "cut", examples)
    assert steps == 12 and torch.equal(resumed.head.weight, whole.head.weight)
    loaded_again, _ = _phase(cfg, tiny_model_dir, tmp_path / "cut", examples)  # finished: loaded, not trained
    assert torch.equal(loaded_again.head.weight, whole.head.weight)


def test_the_score_step_is_computed_once_and_keyed_by_the_task_version(tiny_model_dir, expert_dir, tmp_path):
    expert = _load(expert_dir)
    task = TaskSpec("fixture", "1", "fixture", "exact", {"train": []})
    first = _fixture_examples(expert.tokenizer, 6)
    assert score_examples(tmp_path, expert, "fp", task, first, 4) is True
    again = [GoldExample(e.ids, e.prompt_len) for e in first]
    assert score_examples(tmp_path, expert, "fp", task, again, 4) is False  # stored: nothing computed
    assert all(torch.equal(a.expert_logp, b.expert_logp) and torch.equal(a.expert_right, b.expert_right)
               for a, b in zip(first, again))
    with torch.no_grad():  # the stored values are the expert's log-probs of the gold tokens
        e = first[0]
        logp = expert.model(torch.tensor([e.ids])).logits[0, :-1].log_softmax(-1)
        gold = torch.tensor(e.ids[1:])
        assert torch.allclose(logp[e.prompt_len - 1 :].gather(1, gold[e.prompt_len - 1 :, None]).squeeze(1),
                              e.expert_logp, atol=1e-5)
    bumped = dataclasses.replace(task, version="2")
    assert score_examples(tmp_path, expert, "fp", bumped, [GoldExample(e.ids, e.prompt_len) for e in first], 4)


def test_threshold_candidates_span_the_deferral_rates_and_the_roc_point():
    probs = torch.tensor([0.9, 0.8, 0.7, 0.2, 0.1])
    labels = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0])
    found = dict(candidates(probs, labels, [0.0, 0.4, 1.0]))
    assert found["rate 0%"] == 1.0 and found["rate 100%"] == 0.0
    assert (probs > found["rate 40%"]).float().mean() == pytest.approx(0.4)
    assert 0.2 < found["roc"] < 0.7  # separates the positives from the negatives


# --- decoding ---------------------------------------------------------------------------------------------

def _prompts(tokenizer, texts=("Hi", "What is 2 + 2? Say it", "abc")):
    ids = [tokenizer(render_prompt(tokenizer, t, None), add_special_tokens=False)["input_ids"] for t in texts]
    return left_pad(ids, tokenizer.pad_token_id, torch.device("cpu"))


def _greedy(loaded, ids, mask, cap=12):
    out = NativeBackend().sample(loaded.model, loaded.tokenizer, ids, mask, SamplingConfig(), cap)
    return [row[: int(n)] for row, n in zip(out.ids.tolist(), out.mask.sum(1).tolist())]


def _decoded(out):
    return [row[: int(n)] for row, n in zip(out.rollout.ids.tolist(), out.rollout.mask.sum(1).tolist())]


def test_threshold_one_is_the_base_and_threshold_zero_with_defer_is_the_expert(tiny_model_dir, expert_dir):
    base, expert = _load(tiny_model_dir), _load(expert_dir)
    tok = base.tokenizer
    ids, mask = _prompts(tok)
    head = DeferralModel(base.model, base.model.config.hidden_size)
    torch.manual_seed(0)
    head.head.weight.data.normal_()
    decode = lambda eta, strategy="defer": defer_decode(base.model, head.deferral_logit, expert.model, ids, mask, eta,
                                                        strategy, 12, tok.eos_token_id, tok.pad_token_id)
    never, always = decode(1.0), decode(0.0)
    assert _decoded(never) == _greedy(base, ids, mask) and not never.deferred.any()
    assert _decoded(always) == _greedy(expert, ids, mask)
    assert always.deferred.sum() == always.rollout.mask.sum()
    assert _greedy(base, ids, mask) != _greedy(expert, ids, mask)  # the two differ, so the test can fail
    assert threshold_logit(0.5) == 0.0


def test_compose_with_zero_deferral_is_the_base(tiny_model_dir, expert_dir):
    base, expert = _load(tiny_model_dir), _load(expert_dir)
    tok = base.tokenizer
    ids, mask = _prompts(tok)
    zero = lambda hidden: torch.full(hidden.shape[:1], -1e4)
    out = defer_decode(base.model, zero, expert.model, ids, mask, 0.0, "compose", 12, tok.eos_token_id,
                       tok.pad_token_id)
    assert out.deferred.any() and _decoded(out) == _greedy(base, ids, mask)


def test_deferring_on_some_tokens_matches_a_no_cache_reference(tiny_model_dir, expert_dir):
    """The expert's cache is caught up on the tokens the base wrote between its calls: the result equals recomputing
    both models over the whole text at every step."""
    base, expert = _load(tiny_model_dir), _load(expert_dir)
    tok = base.tokenizer
    head = DeferralModel(base.model, base.model.config.hidden_size)
    torch.manual_seed(3)
    head.head.weight.data.normal_(0, 2.0)
    texts = ("Hi", "What is 2 + 2? Say it", "abc")
    ids, mask = _prompts(tok, texts)
    out = defer_decode(base.model, head.deferral_logit, expert.model, ids, mask, 0.5, "defer", 12, tok.eos_token_id,
                       tok.pad_token_id)
    assert 0 < out.deferred.sum() < out.rollout.mask.sum()  # some tokens each way
    for row, text in enumerate(texts):
        sequence = tok(render_prompt(tok, text, None), add_special_tokens=False)["input_ids"]
        written, deferred = [], []
        with torch.no_grad():
            for _ in range(12):
                _, _, z = head(torch.tensor([sequence]), torch.ones(1, len(sequence), dtype=torch.long))
                defer = bool(z[0, -1] > 0)
                model = expert.model if defer else base.model
                token = int(model(torch.tensor([sequence])).logits[0, -1].argmax())
                written.append(token), deferred.append(defer)
                sequence.append(token)
                if token == tok.eos_token_id:
                    break
        assert _decoded(out)[row] == written
        assert out.deferred[row, : len(written)].tolist() == deferred


def test_the_linear_schedule_warms_up_then_decays_to_zero():
    from sdft.config import TrainConfig
    from sdft.methods.harness import build_scheduler

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_scheduler(optimizer, TrainConfig(steps=10, warmup_steps=2, lr_schedule="linear"))
    rates = []
    for _ in range(10):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert rates[:3] == pytest.approx([1 / 3, 2 / 3, 1.0]) and rates[-1] == pytest.approx(1 / 8)
    assert all(a > b for a, b in zip(rates[2:], rates[3:]))
