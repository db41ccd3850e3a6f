"""The SDFT teacher: the model itself, conditioned on a demonstration, with one of three weight sources.

| kind   | full fine-tuning                                   | LoRA                                              |
|--------|----------------------------------------------------|---------------------------------------------------|
| frozen | a second copy of the stage-start weights (memory)  | the adapter disabled: no second copy              |
| ema    | fp32 shadow weights + a copy of the model to run   | train.lora_ema=adapter: an fp32 shadow of the adapter's |
|        | them (phi <- a*theta + (1-a)*phi every step); for  | weights, swapped in while the teacher runs;       |
|        | an fp32 model the copy's weights are the shadow    | train.lora_ema=update: an fp32 shadow of each layer's   |
|        |                                                    | update scale * B @ A, added to the base weights   |
| live   | the student itself, no gradient (the paper saw it diverge)                                             |

Every teacher is built from the in-memory model at stage start, never re-read from disk, and its state is
part of a checkpoint, so resuming restores it exactly.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Callable

import torch
from torch import Tensor

from sdft import distributed
from sdft.adapters import effective_update, lora_layers
from sdft.console import err_console
from sdft.errors import UserError
from sdft.methods.rollout import Rollout, completion_logits


class Teacher:
    """Base: the live student. Subclasses change which weights run the forward pass."""

    SETTING = "train.teacher=live"
    """The settings that build this teacher: a checkpoint records them, and resume refuses others."""

    def __init__(self, model: torch.nn.Module):
        self.student = model

    def weights(self) -> contextlib.AbstractContextManager:
        """A context in which `self.module()` computes with the teacher's weights."""
        return contextlib.nullcontext()

    def module(self) -> torch.nn.Module:
        return self.student

    @torch.no_grad()
    def logits(self, prompt_ids: Tensor, prompt_mask: Tensor, rollout: Rollout) -> Tensor:
        """In eval mode: the teacher's targets carry no dropout (LoRA's or the model's), whichever module runs them."""
        model = self.module()
        was_training = model.training
        model.eval()
        try:
            with self.weights():
                return completion_logits(model, prompt_ids, prompt_mask, rollout)
        finally:
            model.train(was_training)

    def update(self) -> None:
        """Called after every optimizer step."""

    def state_dict(self) -> dict[str, Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        pass


class FrozenCopyTeacher(Teacher):
    """Full fine-tuning, frozen: a deep copy of the weights at stage start (costs one model of memory)."""

    SETTING = "train.teacher=frozen"

    def __init__(self, model: torch.nn.Module):
        super().__init__(model)
        self.copy = copy.deepcopy(model).eval().requires_grad_(False)

    def module(self) -> torch.nn.Module:
        return self.copy

    def state_dict(self) -> dict[str, Tensor]:
        return {name: p for name, p in self.copy.named_parameters()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        _copy_into(self.copy, state)


class FrozenAdapterTeacher(Teacher):
    """LoRA, frozen: the base weights are the stage-start weights, so disabling the adapter is the teacher."""

    SETTING = "train.teacher=frozen with LoRA"

    def weights(self) -> contextlib.AbstractContextManager:
        return self.student.disable_adapter()


class EmaCopyTeacher(FrozenCopyTeacher):
    """Full fine-tuning, EMA: fp32 shadow weights updated after every step, cast into a runnable copy.
    The shadow is fp32 whatever the model dtype: in bf16 an update of rate 0.01 would round away. For an fp32
    parameter the copy's own tensor is the shadow: no third set of weights, nothing to cast."""

    SETTING = "train.teacher=ema"

    def __init__(self, model: torch.nn.Module, rate: float):
        super().__init__(model)
        self.rate = rate
        self.bind_shadow()

    def bind_shadow(self) -> None:
        """The shadow from the copy's weights (again after sdft/distributed.py shards them: then a set of shards)."""
        copies = dict(self.copy.named_parameters())
        self.shadow = {n: copies[n].detach() if copies[n].dtype == torch.float32 else copies[n].detach().float().clone()
                       for n, p in self.student.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self) -> None:
        current = dict(self.student.named_parameters())
        shadows = list(self.shadow.values())
        torch._foreach_mul_(shadows, 1.0 - self.rate)  # the same arithmetic as mul_ then add_, in one call per step
        torch._foreach_add_(shadows, [current[name].detach().float() for name in self.shadow], alpha=self.rate)
        _copy_into(self.copy, self.shadow)

    def state_dict(self) -> dict[str, Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        _load_shadow(self.shadow, state)
        _copy_into(self.copy, self.shadow)


class EmaAdapterTeacher(Teacher):
    """LoRA, EMA of the adapter's weights (train.lora_ema=adapter): an fp32 shadow of every trainable tensor (A and B),
    started from their stage-start values, as EmaCopyTeacher does for full fine-tuning. The teacher runs the
    student's own modules with the shadow swapped in as the adapter's data (no copy for an fp32 adapter) and the
    student's tensors swapped back after. Memory: one adapter."""

    SETTING = "train.teacher=ema with train.lora_ema=adapter"

    def __init__(self, model: torch.nn.Module, rate: float):
        super().__init__(model)
        self.rate = rate
        self.bind_shadow()

    def bind_shadow(self) -> None:
        """The adapter's tensors and their shadow (again after sdft/distributed.py shards them: then shards)."""
        self.adapter = {name: p for name, p in self.student.named_parameters() if p.requires_grad}
        self.shadow = {name: p.detach().float().clone() for name, p in self.adapter.items()}

    @torch.no_grad()
    def update(self) -> None:
        shadows = list(self.shadow.values())
        torch._foreach_mul_(shadows, 1.0 - self.rate)
        torch._foreach_add_(shadows, [p.detach().float() for p in self.adapter.values()], alpha=self.rate)

    def weights(self) -> contextlib.AbstractContextManager:
        return distributed.swapped_in(self.adapter, self.shadow)

    def state_dict(self) -> dict[str, Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        _load_shadow(self.shadow, state)


class EmaUpdateTeacher(Teacher):
    """LoRA, EMA of the effective update (train.lora_ema=update): an fp32 shadow of each adapted layer's scale * B @ A
    (an EMA of the product, which no fixed-rank adapter can hold). The teacher runs the base weights with the
    adapter disabled, each adapted base layer computing with its weight plus the shadow (_run_with_update).
    Memory: one fp32 matrix per adapted layer."""

    SETTING = "train.teacher=ema with train.lora_ema=update"

    def __init__(self, model: torch.nn.Module, rate: float):
        super().__init__(model)
        self.rate = rate
        self.layers = lora_layers(model)
        self.shadow = {name: effective_update(layer).clone() for name, layer in self.layers.items()}

    @torch.no_grad()
    def update(self) -> None:
        for name, layer in self.layers.items():
            self.shadow[name].mul_(1.0 - self.rate).add_(effective_update(layer), alpha=self.rate)

    @contextlib.contextmanager
    def weights(self):
        undo = [_run_with_update(layer.base_layer, self.shadow[name]) for name, layer in self.layers.items()]
        try:
            with self.student.disable_adapter():
                yield
        finally:
            for restore in undo:
                restore()

    def state_dict(self) -> dict[str, Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        _load_shadow(self.shadow, state)


def _load_shadow(shadow: dict[str, Tensor], state: dict[str, Tensor]) -> None:
    """A checkpoint's EMA state into `shadow`; a state of another shape of teacher is refused by name."""
    misfits = state.keys() ^ shadow.keys() or {n for n in shadow if state[n].shape != shadow[n].shape}
    if misfits:
        raise UserError(f"the checkpoint's EMA teacher does not fit this run's (e.g. '{sorted(misfits)[0]}'): it was "
                        "saved with other lora or train.lora_ema settings; resume with the run's own settings (LoRA runs "
                        "from before lora.ema existed averaged the update: --set train.lora_ema=update)")
    for name, tensor in shadow.items():
        tensor.copy_(state[name])


def _run_with_update(base: torch.nn.Linear, update: Tensor) -> Callable[[], None]:
    """Make `base` compute with its weight plus `update`; returns the undo. An fp32 layer runs one matmul with the
    merged weight W + U (a temporary, one layer at a time) instead of a second full-rank matmul x @ U^T: the teacher
    forward then costs what the student's does. A lower-precision layer keeps the fp32 side path, since W + U
    rounded to bf16 would lose the small EMA update."""
    if base.weight.dtype == update.dtype:
        base.forward = lambda x: torch.nn.functional.linear(x, base.weight + update, base.bias)
        return lambda: vars(base).pop("forward", None)
    hook = base.register_forward_hook(_add_update(update))
    return hook.remove


def _add_update(update: Tensor) -> Callable:
    def hook(module, inputs, output):
        return output + torch.nn.functional.linear(inputs[0].to(update.dtype), update).to(output.dtype)

    return hook


def _copy_into(model: torch.nn.Module, weights: dict[str, Tensor]) -> None:
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in weights and not _same_storage(weights[name], param):  # a shared fp32 shadow is already there
                param.copy_(weights[name])


def _same_storage(a: Tensor, b: Tensor) -> bool:
    return distributed.local(a).data_ptr() == distributed.local(b).data_ptr()  # a shard's data_ptr() is 0


def build_teacher(model: torch.nn.Module, kind: str, ema_rate: float, lora: bool, lora_ema: str) -> Teacher:
    """The teacher for this stage, taken from the in-memory model as it is now (the stage start). `lora_ema`
    (train.lora_ema) says what an EMA teacher averages when `lora` is on: the adapter's weights, or its update."""
    if kind == "live":
        err_console.print("[yellow]warning: train.teacher=live distils the student into itself; the SDFT paper saw this diverge[/]")
        return Teacher(model)
    if kind == "frozen":
        return FrozenAdapterTeacher(model) if lora else FrozenCopyTeacher(model)
    if not lora:
        return EmaCopyTeacher(model, ema_rate)
    return EmaAdapterTeacher(model, ema_rate) if lora_ema == "adapter" else EmaUpdateTeacher(model, ema_rate)
