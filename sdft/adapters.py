"""Every LoRA operation in one place: wrap a model, reset its adapter to the freshly initialised state,
snapshot and restore it, read each layer's effective update, merge and save.

Test-time training fits a throwaway adapter per instance and SEAL one per self-edit: both reset the adapter in
place instead of wrapping the model again, so the peft model, its Parameter objects (and an optimizer built on
them) and the base weights all stay as they are. An adapter tensor is a parameter whose name holds ".lora_"
(peft's lora_A / lora_B, and their embedding and DoRA kin)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from sdft.config import LoraConfig
from sdft.errors import UserError
from sdft.files import write_folder_whole

_INITIAL = "_sdft_initial_adapters"
"""The attribute of a wrapped model that holds its adapter as first initialised (for reset_adapters)."""


def wrap_with_lora(model, lora: LoraConfig, seed: int | None = None):
    """Wrap the model with fresh LoRA adapters (peft); the base weights stay frozen. The fresh adapter is
    recorded (one clone of it, on the model's device) so that reset_adapters can return to it. With `seed`, the
    adapters' random initial values are drawn from that seed, leaving the global generator as it was: a stage then
    starts the same whatever ran before it in the process (a rerun sequence skips its finished stages)."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    peft_config = PeftLoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules), task_type="CAUSAL_LM",
    )
    try:
        with torch.random.fork_rng(enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            wrapped = get_peft_model(model, peft_config)
    except ValueError as err:  # e.g. no module matches target_modules
        raise UserError(f"lora.target_modules {lora.target_modules} do not fit this model: {err}") from err
    setattr(wrapped, _INITIAL, snapshot_adapters(wrapped))
    return wrapped


def adapter_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The adapter's own tensors by name; every other parameter is the base model's."""
    return {name: p for name, p in model.named_parameters() if ".lora_" in name}


def snapshot_adapters(model: torch.nn.Module) -> dict[str, Tensor]:
    """A copy of every adapter tensor (on its own device, so restoring is a plain copy)."""
    return {name: p.detach().clone() for name, p in adapter_parameters(model).items()}


def restore_adapters(model: torch.nn.Module, snapshot: dict[str, Tensor]) -> None:
    """Copy `snapshot` into the adapter in place: the Parameter objects stay the same, the base weights are
    untouched. A snapshot of another adapter (other names or shapes) is refused before anything is copied."""
    params = adapter_parameters(model)
    misfits = sorted(params.keys() ^ snapshot.keys()) or sorted(
        name for name in params if params[name].shape != snapshot[name].shape)
    if misfits:
        raise UserError(f"the adapter snapshot does not fit this model's adapter (e.g. '{misfits[0]}'): it was taken "
                        "from a model with other lora settings (rank, target modules) or no adapter")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(snapshot[name])


def reset_adapters(model: torch.nn.Module) -> None:
    """Return the adapter to its state right after wrap_with_lora (every lora_B zero, every lora_A its initial
    draw), in place: no new peft model, no new Parameter objects, base weights bit-identical. An optimizer built on
    the adapter stays valid but keeps its moments and step count: reset those separately (e.g. build a new one)."""
    initial = getattr(model, _INITIAL, None)
    if initial is None:
        raise UserError("reset_adapters needs a model wrapped by sdft.adapters.wrap_with_lora "
                        "(which records the fresh adapter)")
    restore_adapters(model, initial)


def lora_layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The model's LoRA layers by module name; each must adapt a Linear layer (effective_update's shape)."""
    from peft.tuners.lora import LoraLayer

    layers = {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}
    for name, layer in layers.items():
        if not isinstance(layer.base_layer, torch.nn.Linear):
            raise UserError(f"sdft supports LoRA on Linear layers only; '{name}' is "
                            f"{type(layer.base_layer).__name__} (leave it out of lora.target_modules)")
    return layers


def effective_update(layer) -> Tensor:
    """What the active adapter adds to the layer's weight, scale * B @ A, in fp32 (what merging adds)."""
    adapter = layer.active_adapters[0]
    a, b = layer.lora_A[adapter].weight.float(), layer.lora_B[adapter].weight.float()
    return (b @ a) * layer.scaling[adapter]


def merge_and_save(model, tokenizer, directory: str | Path):
    """Fold the adapter into the base weights (peft's merge_and_unload), save the merged model (safetensors) and
    the tokenizer to `directory`, and return the merged model: a plain model that loads with from_pretrained."""
    merged = model.merge_and_unload()
    write_folder_whole(directory, lambda tmp: (merged.save_pretrained(str(tmp), safe_serialization=True),
                                             tokenizer.save_pretrained(str(tmp))))
    return merged
