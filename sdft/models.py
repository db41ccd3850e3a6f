"""Loading models and tokenizers: the embedded tiny model, local folders, run folders and hub ids all go
through `from_pretrained`, the code path of any Hugging Face model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from sdft.config import EMBEDDED_MODEL, ModelConfig
from sdft.errors import UserError

EMBEDDED_MODEL_DIR = Path(__file__).resolve().parent / "assets" / "tiny"
RUN_MODEL_SUBDIR = "model"  # a run folder keeps its trained weights here

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    source: str
    """What the user named (e.g. 'embedded', a hub id, a run folder)."""
    path: str
    """What from_pretrained actually read."""
    device: torch.device


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"model.device is '{name}' but no CUDA device is available; use 'cpu' or 'auto'")
    return torch.device(name)


def process_state(cfg: ModelConfig):
    """This process's place in an `accelerate launch` job (one process otherwise)."""
    from accelerate import PartialState

    return PartialState(cpu=resolve_device(cfg.device).type == "cpu")


def resolve_model_path(name_or_path: str) -> str:
    """'embedded' -> the shipped model; a run folder -> its model/; a local folder -> itself; else a hub id."""
    if name_or_path == EMBEDDED_MODEL:
        if not (EMBEDDED_MODEL_DIR / "config.json").is_file():
            raise UserError(f"the embedded model is missing from {EMBEDDED_MODEL_DIR}; run scripts/build_tiny_model.py")
        return str(EMBEDDED_MODEL_DIR)
    path = Path(name_or_path)
    if (path / RUN_MODEL_SUBDIR / "config.json").is_file() or (path / RUN_MODEL_SUBDIR / "adapter_config.json").is_file():
        return str(path / RUN_MODEL_SUBDIR)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"'{path}' is a folder but holds no model (no config.json, no {RUN_MODEL_SUBDIR}/)")
        return str(path)
    if _looks_like_path(name_or_path):
        raise UserError(f"model '{name_or_path}' not found: no such folder")
    return name_or_path


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or name.endswith((".yaml", ".json"))


def load_model(cfg: ModelConfig) -> LoadedModel:
    """Model in eval mode on its device, and its tokenizer set up for batched generation."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(cfg.name_or_path)
    device = resolve_device(cfg.device)
    common = {"revision": cfg.revision, "trust_remote_code": cfg.trust_remote_code}
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **common)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=_DTYPES[cfg.dtype], use_safetensors=True, **common)
    except OSError as err:  # not on disk and not reachable on the hub
        raise UserError(f"could not load model '{cfg.name_or_path}': {str(err).splitlines()[0]}") from err
    prepare_tokenizer(tokenizer)
    model.to(device).eval()
    return LoadedModel(model, tokenizer, cfg.name_or_path, path, device)


def prepare_tokenizer(tokenizer) -> None:
    """Left padding for batched generation; a pad token (the eos token if the model has none)."""
    if tokenizer.chat_template is None:
        raise UserError("the tokenizer has no chat template; sdft formats every prompt as a chat turn")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
