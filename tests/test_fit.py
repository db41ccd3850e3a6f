"""The in-memory adapter fit on the tiny random model: it lowers the loss on its own examples and moves the adapter
alone, a seed fixes it (dropout included), the loss is the cross-entropy over label tokens only, and pairs become
examples whose rendered prompt is masked."""

from __future__ import annotations

import pytest
import torch

from sdft.adapters import adapter_parameters, reset_adapters, snapshot_adapters, wrap_with_lora
from sdft.config import LoraConfig, ModelConfig
from sdft.errors import UserError
from sdft.methods.fit import examples_from_pairs, fit_adapter
from sdft.models import load_model
from sdft.prompts import render_prompt

PAIRS = [("What is 2+2?", "It is 4."), ("Name a colour.", "Blue, like the sky."), ("Say hi.", "Hi!")]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def loaded(tiny_model_dir):
    """The tiny model wrapped with a fresh adapter (with dropout, so a seed has dropout to fix)."""
    loaded = load_model(ModelConfig(name_or_path=str(tiny_model_dir)))
    lora = LoraConfig(enabled=True, r=4, dropout=0.1, target_modules=["q_proj", "v_proj", "down_proj"])
    loaded.model = wrap_with_lora(loaded.model, lora)
    return loaded


def fit(loaded, examples, steps: int = 8, seed: int = 0, batch_size: int = 2):
    return fit_adapter(loaded.model, loaded.tokenizer, examples, steps=steps, learning_rate=0.05,
                       batch_size=batch_size, seed=seed)


def test_fit_lowers_the_loss_and_moves_only_the_adapter(loaded):
    examples = examples_from_pairs(loaded.tokenizer, PAIRS)
    before = {name: t.clone() for name, t in loaded.model.state_dict().items()}
    result = fit(loaded, examples)
    assert result.loss_after < result.loss_before - 0.1 and result.steps == 8 and result.seconds > 0
    assert not loaded.model.training
    after, adapter = loaded.model.state_dict(), adapter_parameters(loaded.model)
    assert [name for name in before if ".lora_" not in name and not torch.equal(after[name], before[name])] == []
    assert adapter and all(not torch.equal(after[name], before[name]) for name in adapter)  # every A and B moved


def test_a_seed_fixes_the_fit_and_leaves_the_callers_rng_alone(loaded):
    examples = examples_from_pairs(loaded.tokenizer, PAIRS)
    rng = torch.get_rng_state()
    first, first_adapter = fit(loaded, examples, seed=0), snapshot_adapters(loaded.model)
    assert torch.equal(torch.get_rng_state(), rng)
    reset_adapters(loaded.model)
    torch.manual_seed(1234)  # another caller state: the fit's dropout must not draw from it
    again, again_adapter = fit(loaded, examples, seed=0), snapshot_adapters(loaded.model)
    reset_adapters(loaded.model)
    other, other_adapter = fit(loaded, examples, seed=1), snapshot_adapters(loaded.model)
    assert (again.loss_before, again.loss_after) == (first.loss_before, first.loss_after)
    assert all(torch.equal(again_adapter[name], first_adapter[name]) for name in first_adapter)
    assert other.loss_after != first.loss_after
    assert any(not torch.equal(other_adapter[name], first_adapter[name]) for name in first_adapter)


def hand_cross_entropy(model, examples, masked: bool = True) -> float:
    """Mean over all label tokens of -log p(label), one unpadded example at a time; masked=False counts every token."""
    total, count = 0.0, 0
    with torch.no_grad():
        for example in examples:
            logits = model(input_ids=torch.tensor([example["input_ids"]])).logits[0, :-1]
            targets = torch.tensor(example["labels" if masked else "input_ids"][1:])
            keep = targets != -100
            logp = torch.log_softmax(logits.float(), dim=-1)[keep].gather(-1, targets[keep][:, None])
            total, count = total - logp.sum().item(), count + int(keep.sum())
    return total / count


def test_the_loss_is_the_cross_entropy_over_label_tokens_only(loaded):
    examples = examples_from_pairs(loaded.tokenizer, PAIRS)  # three lengths: batches of two are padded
    loaded.model.eval()
    masked, everything = hand_cross_entropy(loaded.model, examples), hand_cross_entropy(loaded.model, examples, False)
    assert abs(masked - everything) > 1e-3  # the masked prompt tokens would change the loss if they counted
    assert fit(loaded, examples, steps=1).loss_before == pytest.approx(masked, rel=1e-5)


def test_pairs_become_examples_whose_rendered_prompt_is_masked(loaded):
    tokenizer = loaded.tokenizer
    (example,) = examples_from_pairs(tokenizer, PAIRS[:1], system_prompt="Be brief.")
    ids = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    prompt, completion = ids(render_prompt(tokenizer, PAIRS[0][0], "Be brief.")), [*ids(PAIRS[0][1]), tokenizer.eos_token_id]
    assert example == {"input_ids": prompt + completion, "labels": [-100] * len(prompt) + completion}
    assert examples_from_pairs(tokenizer, []) == []


def test_a_fit_with_nothing_to_train_or_learn_from_is_refused(loaded):
    examples = examples_from_pairs(loaded.tokenizer, PAIRS)
    with pytest.raises(UserError, match="at least one example"):
        fit(loaded, [])
    with pytest.raises(UserError, match="example 1 needs"):
        fit(loaded, [examples[0], {"input_ids": [5, 6], "labels": [-100, -100]}])
    loaded.model.requires_grad_(False)
    with pytest.raises(UserError, match="no trainable parameters"):
        fit(loaded, examples)
