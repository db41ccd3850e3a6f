"""Everything that shards (train.sharding=fsdp): torch's FSDP2 `fully_shard` applied by the toolkit itself, the same
path on CPUs (gloo) and GPUs (nccl). accelerate's FSDP plugin is not used: with `use_cpu` its launch becomes plain
data parallel, so it would shard on GPUs only.

What is sharded, over every process of the job (one mesh dimension):
- the student: each decoder layer is its own FSDP unit (gathered for its forward and backward, then freed), the
  embeddings, final norm and head the root's; the optimizer is built after sharding, so AdamW's states are shards;
  the root is freed in the backward as soon as the head's backward is done (`_free_root_in_backward`);
- the teacher, with the same units: the frozen copy and the EMA copy; the EMA's fp32 shadow is a set of shards updated
  shard by shard (`torch._foreach_*` on DTensors works on the local shards) and never gathered;
- checkpoints: each process writes its own shards (student, teacher, optimizer) to `rank-<r>.pt` beside the loop's
  trainer.pt, so resume is exact and needs the same number of processes (another number is refused: resharding is
  not supported);
- the final model: gathered once, shard by shard, into a consolidated Hugging Face folder written by the main process.

Rollouts run with the student's weights gathered whole for the length of the sampling (`full_weights`), the way TRL
gathers ZeRO-3 weights for `generate`: a sampler runs one forward per token, and per-layer gathering would move the
whole model over the wire for every token and keep every process in lockstep until the longest completion ends.
The price is one unsharded copy of the weights during sampling (counted by the dry run's memory model).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from sdft.errors import UserError

SHARDING_FILE = "sharding.json"
"""In a sharded checkpoint: {"sharding": "fsdp", "world_size": N}; read before any model loads on resume."""


def ensure_process_group(device: torch.device) -> None:
    """FSDP needs a process group; a launcher's job already has one (accelerate made it). A single process gets a
    one-member group, so train.sharding=fsdp runs the same code without a launcher."""
    if dist.is_initialized():
        return
    dist.init_process_group("gloo" if device.type == "cpu" else "nccl", store=dist.HashStore(), rank=0, world_size=1)


def require_plain_launch(accelerator) -> None:
    """The native loop wraps (DDP) or shards (train.sharding=fsdp) by itself: a launch that asks accelerate to shard
    (its FSDP or DeepSpeed plugin) would wrap the model a second way, so it is refused."""
    kind = accelerator.distributed_type.value
    if kind in ("FSDP", "DEEPSPEED"):
        raise UserError(f"the native training loop does not run under accelerate's {kind} plugin: launch with a plain "
                        "multi-GPU config (configs/accelerate/fsdp2.yaml) and --set train.sharding=fsdp to shard")


def shard(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """fully_shard every decoder layer (the model's own `_no_split_modules` classes), then the whole model."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    layer_classes = set(_no_split_modules(model))
    layers = [m for m in model.modules() if type(m).__name__ in layer_classes]
    if not layers:
        raise UserError(f"train.sharding=fsdp: {type(model).__name__} names no decoder layer class "
                        "(_no_split_modules) to shard by; use train.sharding=none")
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    # the root too is freed after its forward (fully_shard keeps a root's weights by default): a teacher runs no
    # backward to free them, and between steps every weight is a shard (what checkpoints and the EMA update expect)
    fully_shard(model, mesh=mesh, reshard_after_forward=True)
    if _root_is_input_and_output_only(model, layers):
        model.register_forward_pre_hook(_forget_untrained_forwards(), prepend=True)
        layers[-1].register_forward_hook(_free_root_in_backward(model))
    return model


def _forget_untrained_forwards():
    """In the backward FSDP prefetches the unit that ran before the current one in its record of forwards, a record
    kept from one backward to the next, so it holds the rollout's no-grad forwards too: the first layer's backward
    would prefetch the root (the last sampled token's), gathering it whole again just after it was freed. A forward
    that will be trained starts a fresh record (`reset_iter_state`: between iterations it only clears the record;
    before the first forward FSDP has no state to reset). It takes every trained forward to be followed by its own
    backward before the next one, as the sharded SDFT step (no shared prompt pass) and sft_native.py do."""
    ran = []

    def before_forward(root, args) -> None:
        if torch.is_grad_enabled() and ran:
            root.reset_iter_state()
        ran[:] = [True]

    return before_forward


def _free_root_in_backward(root):
    """The root unit (embeddings, final norm, head; one tensor when tied: Qwen2.5-0.5B's is 27% of the model) is
    gathered again for the backward from the loss, and FSDP keeps it gathered until the root's post-backward at the
    very end, where it would sit beside every layer's gradient shard, the head's and the embedding's full gradients:
    the peak of a sharded step. Only the head's and the final norm's backward read it (an embedding's backward reads
    the token ids), so it is freed (`reshard`; its gradient stays until FSDP reduces it) once the gradient of the
    last decoder layer's output exists, which is when those two are done. Measured on the Qwen2.5-0.5B shape:
    BENCHMARKS.md."""

    def after_forward(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        if torch.is_grad_enabled() and isinstance(hidden, torch.Tensor) and hidden.requires_grad:
            hidden.register_hook(lambda grad: root.reshard())  # returns None: the gradient passes unchanged

    return after_forward


def _root_is_input_and_output_only(model: torch.nn.Module, layers: list[torch.nn.Module]) -> bool:
    """Whether the root's own weights are read only before the first layer by a plain embedding lookup (whose backward
    needs no weights) and after the last layer by the final norm and the head: then nothing after the last layer's
    backward needs them. Another shape (a LoRA-wrapped embedding, a projection before the layers) keeps FSDP's
    default: gathered until the root's post-backward."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner, head = getattr(base, "model", None), getattr(base, "lm_head", None)
    embedding = base.get_input_embeddings() if hasattr(base, "get_input_embeddings") else None
    if type(embedding) is not torch.nn.Embedding or head is None or getattr(inner, "norm", None) is None:
        return False
    in_layers = {id(p) for layer in layers for p in layer.parameters()}
    allowed = {id(p) for m in (embedding, head, inner.norm) for p in m.parameters()}
    return all(id(p) in allowed for p in model.parameters() if id(p) not in in_layers)


def _no_split_modules(model: torch.nn.Module) -> list[str]:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return list(getattr(base, "_no_split_modules", None) or [])


def shard_teacher(teacher, device: torch.device) -> None:
    """The teacher's own weights (a frozen or EMA copy) sharded like the student; an EMA's shadow re-taken from the
    sharded tensors, so it is a set of shards. Teachers without a copy run the student's own (sharded) modules."""
    if hasattr(teacher, "copy"):
        shard(teacher.copy, device)
    if hasattr(teacher, "bind_shadow"):
        teacher.bind_shadow()


def on_any_process(flag: bool, device: torch.device) -> bool:
    """True on every process when it is True on one (a Ctrl-C reaches the processes at different moments, and they
    must stop after the same step, or the ones still stepping wait for the others for ever)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    value = torch.tensor([float(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def world_size(model_cfg) -> int:
    """The processes of this job (a launcher's), known before any model loads."""
    from sdft.models import process_state

    return process_state(model_cfg).num_processes


def is_sharded(model: torch.nn.Module) -> bool:
    return any(isinstance(p, DTensor) for p in model.parameters())


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This process's shard of a sharded tensor (a view: writing it writes the shard), or the tensor itself."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def scalar(value) -> float:
    """A number from a tensor that may be a DTensor (clip_grad_norm_ of sharded gradients returns one)."""
    if isinstance(value, DTensor):
        value = value.full_tensor()
    return float(value)


def local_state(value):
    """A (nested) state with every DTensor replaced by its local shard, for torch.save."""
    if isinstance(value, DTensor):
        return value.to_local().detach().clone()
    if isinstance(value, dict):
        return {k: local_state(v) for k, v in value.items()}
    if isinstance(value, list):
        return [local_state(v) for v in value]
    return value


def like(saved: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Saved local shards as DTensors placed like `reference`'s (what a loaded state is copied into)."""
    out = {}
    for name, value in saved.items():
        ref = reference.get(name)
        out[name] = (DTensor.from_local(value.to(ref.device), ref.device_mesh, ref.placements, run_check=False,
                                        shape=ref.shape, stride=ref.stride()) if isinstance(ref, DTensor) else value)
    return out


@contextlib.contextmanager
def full_weights(model: torch.nn.Module):
    """The model's weights gathered whole (every FSDP unit unsharded, kept so across forwards) for the block; sharded
    again after. A no-op for a model that is not sharded."""
    units = [m for m in model.modules() if hasattr(m, "unshard") and hasattr(m, "set_reshard_after_forward")]
    if not units:
        yield
        return
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)
        unit.unshard()
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()
            unit.set_reshard_after_forward(True, recurse=False)


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's state, gathered one tensor at a time onto the main process's CPU memory (every process must
    call it; the others get an empty dict)."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
    )

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


# --- sharded checkpoints ---------------------------------------------------------------------------------------

def rank_file(checkpoint: Path, rank: int) -> Path:
    return Path(checkpoint) / f"rank-{rank}.pt"


def write_shards(folder: Path, model, companion_state: dict, optimizer) -> None:
    """This process's part of a checkpoint: its shards of the student's trainable weights, the teacher, the optimizer."""
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    torch.save({"student": local_state(trainable), "teacher": local_state(companion_state),
                "optimizer": local_state(optimizer.state_dict())}, rank_file(folder, dist.get_rank()))
    if dist.get_rank() == 0:
        (Path(folder) / SHARDING_FILE).write_text(json.dumps({"sharding": "fsdp", "world_size": dist.get_world_size()}))


def read_shards(path: Path, model, companion, optimizer) -> None:
    """Restore this process's shards in place: student weights, teacher state, optimizer state."""
    file = rank_file(path, dist.get_rank())
    try:
        saved = torch.load(file, weights_only=False)  # our own file
    except Exception as err:  # a torn or edited file: one line, as checkpoint._read words it
        raise UserError(f"cannot resume: {file} is damaged ({type(err).__name__}); start again in a new --output") from err
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in saved["student"].items():
            local(params[name]).copy_(value)
    if companion is not None:
        companion.load_state_dict(like(saved["teacher"], companion.state_dict()))
    optimizer.load_state_dict(saved["optimizer"])
    _states_as_dtensors(optimizer)


def _states_as_dtensors(optimizer: torch.optim.Optimizer) -> None:
    """load_state_dict leaves the saved shards as plain tensors; AdamW needs them placed like their parameters."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            if not isinstance(param, DTensor):
                continue
            state = optimizer.state.get(param, {})
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and not isinstance(value, DTensor) and value.dim() > 0:
                    state[key] = like({key: value}, {key: param})[key]


def require_same_world(checkpoint_dir: Path, world_size: int) -> None:
    """A sharded checkpoint resumes on the number of processes that wrote it (checked before any model loads)."""
    from sdft.methods.checkpoint import checkpoints

    found = checkpoints(checkpoint_dir)
    marker = found[-1] / SHARDING_FILE if found else None
    if marker is None or not marker.is_file():
        return
    saved = json.loads(marker.read_text())["world_size"]
    if saved != world_size:
        raise UserError(f"cannot resume from {found[-1]}: it holds train.sharding=fsdp shards of {saved} processes and "
                        f"this job has {world_size}; resume with {saved} processes (resharding a checkpoint is not "
                        "supported)")


# --- the trained model -----------------------------------------------------------------------------------------

def save_consolidated(stage, model: torch.nn.Module) -> None:
    """Every process: gather the sharded model into the main process's memory, which writes it to stage.model_dir as a
    Hugging Face folder (a LoRA model: its adapter) and then loads it back, unsharded, as the stage's model for the
    evaluation that follows (only the main process evaluates)."""
    import dataclasses

    from sdft.files import write_folder_whole

    state = full_state_dict(model)
    if dist.get_rank() != 0:
        return
    tokenizer = stage.loaded.tokenizer
    write_folder_whole(stage.model_dir, lambda tmp: (model.save_pretrained(str(tmp), state_dict=state,
                                                                           safe_serialization=True),
                                                     _unsharded_architectures(Path(tmp)),
                                                     tokenizer.save_pretrained(str(tmp))))
    state.clear()  # the gathered weights: freed before the model is loaded back
    from sdft.models import load_model

    if hasattr(model, "get_base_model"):  # LoRA: the stage-start model with the trained adapter, as a peft model
        from peft import PeftModel

        base = load_model(stage.cfg.model).model
        stage.loaded.model = PeftModel.from_pretrained(base, str(stage.model_dir)).eval()
    else:
        stage.loaded.model = load_model(dataclasses.replace(stage.cfg.model, name_or_path=str(stage.model_dir),
                                                            revision=None)).model


def _unsharded_architectures(folder: Path) -> None:
    """save_pretrained records the class name, which fully_shard changed to FSDP<name>: record the model's own."""
    config = folder / "config.json"
    if config.is_file():
        data = json.loads(config.read_text())
        data["architectures"] = [name.removeprefix("FSDP") for name in data.get("architectures") or []]
        config.write_text(json.dumps(data, indent=2))


@contextlib.contextmanager
def swapped_in(params: dict[str, torch.Tensor], values: dict[str, torch.Tensor]):
    """`params` compute with `values` inside the block and with their own values after. A plain tensor swaps its data
    (no copy for an fp32 value, no version bump under a pending backward); a shard is written in place (FSDP gathers
    from its own storage, so a swapped .data would go unseen) and written back after. Sharded runs never keep a
    backward pending across a teacher forward (sdft.py shares no prompt pass when sharded)."""
    if not any(isinstance(p, DTensor) for p in params.values()):
        saved = {name: p.data for name, p in params.items()}
        try:
            for name, p in params.items():
                p.data = values[name].to(p.dtype)  # the value itself for an fp32 parameter
            yield
        finally:
            for name, p in params.items():
                p.data = saved[name]
        return
    with torch.no_grad():
        saved = {name: local(p).clone() for name, p in params.items()}
        for name, p in params.items():
            local(p).copy_(local(values[name]))
    try:
        yield
    finally:
        with torch.no_grad():
            for name, p in params.items():
                local(p).copy_(saved[name])
