"""Loading models and tokenizers: the embedded tiny model, local folders, run folders and hub ids all go
through `from_pretrained`, the code path of any Hugging Face model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from sdft.config import EMBEDDED_MODEL, ModelConfig
from sdft.errors import UserError
from sdft.hub import looks_like_path, offline_because

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
    path = Path(name_or_path).expanduser()
    if path.is_file():
        raise UserError(f"model '{name_or_path}' is a file; name a model folder (holding config.json), a run folder, "
                        "a hub id or 'embedded'")
    if (path / RUN_MODEL_SUBDIR / "config.json").is_file() or (path / RUN_MODEL_SUBDIR / "adapter_config.json").is_file():
        return str(path / RUN_MODEL_SUBDIR)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"'{path}' is a folder but holds no model (no config.json, no {RUN_MODEL_SUBDIR}/)")
        return str(path)
    if looks_like_path(name_or_path):
        raise UserError(f"model '{name_or_path}' not found: no such folder")
    return name_or_path


def load_model(cfg: ModelConfig) -> LoadedModel:
    """Model in eval mode on its device, and its tokenizer set up for batched generation."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(cfg.name_or_path)
    device = resolve_device(cfg.device)
    common = {"revision": cfg.revision, "trust_remote_code": cfg.trust_remote_code}
    try:
        if not Path(path).is_dir() or (Path(path) / "config.json").is_file():  # an adapter folder has none
            # the config first: a model that needs remote code, or that transformers does not know, stops here
            # in one line, before the tokenizer prints warnings about it
            AutoConfig.from_pretrained(path, **common)
        tokenizer = AutoTokenizer.from_pretrained(path, **common)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=_DTYPES[cfg.dtype], use_safetensors=True, **common)
    except _LOAD_ERRORS as err:  # not on disk, not reachable on the hub, damaged, or not a model transformers knows
        raise UserError(f"could not load model '{cfg.name_or_path}': {load_problem(err)}") from err
    prepare_tokenizer(tokenizer)
    model.to(device).eval()
    return LoadedModel(model, tokenizer, cfg.name_or_path, path, device)


def _load_errors() -> tuple[type[BaseException], ...]:
    from safetensors import SafetensorError

    return OSError, ValueError, SafetensorError


_LOAD_ERRORS = _load_errors()


def load_problem(err: BaseException) -> str:
    """What went wrong loading a model, in one line."""
    text = str(err)
    if "custom code" in text or "trust_remote_code" in text:
        return ("it ships its own Python code (its config.json names modules to import); set "
                "model.trust_remote_code=true only if you trust its author")
    if "does not recognize this architecture" in text:
        return "its config.json names a model type this transformers does not know (model_type); check the folder"
    if type(err).__name__ == "SafetensorError":
        return f"its weights file is damaged or cut short ({text.splitlines()[0]})"
    first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    offline = offline_because()
    return f"{first} (offline: {offline})" if offline and "cache" in first else first


def model_vocabulary(cfg: ModelConfig) -> int | None:
    """The model's vocabulary size from its config.json, without loading a weight; None for an adapter folder (its
    config.json is the base model's, read when the model loads)."""
    from transformers import AutoConfig

    path = resolve_model_path(cfg.name_or_path)
    if Path(path).is_dir() and not (Path(path) / "config.json").is_file():
        return None
    try:
        config = AutoConfig.from_pretrained(path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    except _LOAD_ERRORS as err:
        raise UserError(f"could not load model '{cfg.name_or_path}': {load_problem(err)}") from err
    return config.get_text_config().vocab_size


def prepare_tokenizer(tokenizer) -> None:
    """Left padding for batched generation; a pad token (the eos token if the model has none)."""
    if tokenizer.chat_template is None:
        raise UserError("the tokenizer has no chat template; sdft formats every prompt as a chat turn")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
