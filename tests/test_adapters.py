"""sdft.adapters on the tiny random model: a reset returns the fresh adapter in place (same Parameter objects, base
weights bit-identical), snapshots round-trip exactly and a foreign one is refused, the effective update is what
merging adds, and a merged folder loads and computes the adapted model's logits."""

from __future__ import annotations

import pytest
import torch

from sdft.adapters import (
    adapter_parameters,
    effective_update,
    lora_layers,
    merge_and_save,
    reset_adapters,
    restore_adapters,
    snapshot_adapters,
    wrap_with_lora,
)
from sdft.config import LoraConfig, ModelConfig
from sdft.errors import UserError
from sdft.models import load_model

LORA = LoraConfig(enabled=True, r=4, target_modules=["q_proj", "v_proj", "down_proj"])

pytestmark = pytest.mark.usefixtures("one_thread")


def base_weights(model) -> dict[str, torch.Tensor]:
    """Every non-adapter tensor, by its name in the unwrapped model (peft inserts '.base_layer' into the names)."""
    module = model.get_base_model() if hasattr(model, "get_base_model") else model
    return {name.replace(".base_layer", ""): t.detach().clone() for name, t in module.state_dict().items()
            if ".lora_" not in name}


def train(model, steps: int = 3, seed: int = 0) -> torch.optim.Optimizer:
    """A few AdamW steps on random tokens: enough to move every lora_A and lora_B."""
    ids = torch.randint(10, 90, (2, 12), generator=torch.Generator().manual_seed(seed))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.05)
    model.train()
    for _ in range(steps):
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    return optimizer


@pytest.fixture
def wrapped(tiny_model_dir):
    """(the loaded model, now wrapped with a fresh adapter; its base weights as they were before wrapping)."""
    loaded = load_model(ModelConfig(name_or_path=str(tiny_model_dir)))
    before = base_weights(loaded.model)
    loaded.model = wrap_with_lora(loaded.model, LORA)
    return loaded, before


def assert_same_tensors(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert actual.keys() == expected.keys()
    assert [name for name in expected if not torch.equal(actual[name], expected[name])] == []


def test_reset_returns_the_fresh_adapter_in_place(wrapped):
    loaded, before = wrapped
    model = loaded.model
    fresh, params = snapshot_adapters(model), adapter_parameters(model)
    optimizer = train(model)
    assert all(not torch.equal(p, fresh[name]) for name, p in params.items())  # training moved every A and B
    reset_adapters(model)
    current = adapter_parameters(model)
    assert all(not p.any() for name, p in current.items() if "lora_B" in name)
    assert_same_tensors({n: p for n, p in current.items() if "lora_A" in n}, {n: t for n, t in fresh.items() if "lora_A" in n})
    assert_same_tensors(base_weights(model), before)
    assert all(current[name] is params[name] for name in params)  # the same Parameter objects...
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert {id(p) for p in current.values()} == in_optimizer  # ...so the optimizer still holds the adapter


def test_reset_needs_a_model_wrapped_here(tiny_model_dir):
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    model = load_model(ModelConfig(name_or_path=str(tiny_model_dir))).model
    model = get_peft_model(model, PeftLoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    with pytest.raises(UserError, match="wrap_with_lora"):
        reset_adapters(model)


def test_snapshot_and_restore_round_trip_exactly(wrapped):
    loaded, before = wrapped
    model = loaded.model
    train(model, seed=0)
    snapshot = snapshot_adapters(model)
    kept = {name: t.clone() for name, t in snapshot.items()}
    params = adapter_parameters(model)
    train(model, seed=1)
    assert any(not torch.equal(params[n], snapshot[n]) for n in snapshot)  # moved on, and the snapshot is a copy
    restore_adapters(model, snapshot)
    assert_same_tensors(adapter_parameters(model), kept)
    assert all(adapter_parameters(model)[name] is params[name] for name in params)
    assert_same_tensors(base_weights(model), before)


def test_a_snapshot_of_another_adapter_is_refused_by_name(wrapped, tiny_model_dir):
    model = wrapped[0].model
    other = wrap_with_lora(load_model(ModelConfig(name_or_path=str(tiny_model_dir))).model, LoraConfig(r=2, target_modules=["q_proj", "v_proj", "down_proj"]))
    current = snapshot_adapters(model)
    with pytest.raises(UserError, match=r"does not fit this model's adapter \(e.g. '.*lora_A.*'\).*other lora settings"):
        restore_adapters(model, snapshot_adapters(other))  # another rank: the same names, other shapes
    missing = dict(current)
    dropped = sorted(missing)[-1]
    del missing[dropped]
    with pytest.raises(UserError, match=f"e.g. '{dropped}'"):
        restore_adapters(model, missing)
    assert_same_tensors(snapshot_adapters(model), current)  # nothing copied


def test_the_effective_update_is_what_merging_adds(wrapped, tmp_path):
    loaded, before = wrapped
    train(loaded.model)
    updates = {name: effective_update(layer) for name, layer in lora_layers(loaded.model).items()}
    assert len(updates) == 2 * 3 and all(u.dtype == torch.float32 and u.abs().max() > 1e-4 for u in updates.values())
    merged = merge_and_save(loaded.model, loaded.tokenizer, tmp_path / "merged").state_dict()
    for name, update in updates.items():
        weight = name.removeprefix("base_model.model.") + ".weight"
        torch.testing.assert_close(merged[weight] - before[weight], update, rtol=1e-5, atol=1e-6)


def test_merge_and_save_writes_a_folder_that_computes_the_adapted_logits(wrapped, tmp_path):
    loaded, _ = wrapped
    train(loaded.model)
    ids = torch.randint(10, 90, (2, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        adapted = loaded.model(input_ids=ids).logits
        merged = merge_and_save(loaded.model, loaded.tokenizer, tmp_path / "merged")
        assert not hasattr(merged, "peft_config") and not adapter_parameters(merged)
        reloaded = load_model(ModelConfig(name_or_path=str(tmp_path / "merged")))
        torch.testing.assert_close(reloaded.model(input_ids=ids).logits, adapted, rtol=1e-5, atol=1e-5)
    assert (tmp_path / "merged" / "model.safetensors").is_file()
    assert reloaded.tokenizer.get_vocab() == loaded.tokenizer.get_vocab()
