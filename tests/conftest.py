"""Shared fixtures: a tiny random-weight model with a locally built character tokenizer and chat template,
and small task files. Nothing is downloaded."""

from __future__ import annotations

import json
import string
from pathlib import Path

import pytest
import torch

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIAL_TOKENS = ["<|pad|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>", "<|unk|>"]


def build_char_tokenizer():
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    chars = sorted(set(string.printable) - set("\x0b\x0c\r"))
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + chars)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<|unk|>"))
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens(SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<|pad|>",
        eos_token="<|end|>",
        unk_token="<|unk|>",
        chat_template=CHAT_TEMPLATE,
    )


def build_tiny_model(path: Path, seed: int = 0) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_char_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def qa_records(n: int) -> list[dict]:
    return [
        {"question": f"What is {i} + {i}?", "response": f"It is {2 * i}. Answer: {2 * i}", "label": str(2 * i), "unseen": i % 2 == 0}
        for i in range(n)
    ]


@pytest.fixture
def custom_task_file(tmp_path) -> Path:
    """A custom task 'doubling' over local JSONL files, with a field mapping."""
    write_jsonl(tmp_path / "data" / "train.jsonl", qa_records(6))
    write_jsonl(tmp_path / "data" / "test.jsonl", qa_records(5))
    task = tmp_path / "doubling.yaml"
    task.write_text(
        "name: doubling\nversion: '2'\nscorer: normalized\n"
        "fields: {prompt: question, demonstration: response, answer: label}\n"
        "splits: {train: data/train.jsonl, test: data/test.jsonl}\n"
    )
    return task


@pytest.fixture(autouse=True)
def _in_tmp_dir(tmp_path, monkeypatch):
    """Every test runs in its own folder: default run folders and the evaluation cache land there."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matmuls on a shared 2-core machine: one thread is much faster than two fighting for the cores.
    Modules of tiny-model training tests opt in with pytestmark = pytest.mark.usefixtures("one_thread")."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _network_choice_undone():
    """The CLI runs offline by setting HF_HUB_OFFLINE in the environment (sdft/hub.py): undo it after every test, so
    that one test's choice never reaches the next one's subprocesses."""
    import os

    from sdft import hub

    saved = os.environ.get(hub.OFFLINE_ENV)
    yield
    if saved is None:
        os.environ.pop(hub.OFFLINE_ENV, None)
    else:
        os.environ[hub.OFFLINE_ENV] = saved
    hub._state["offline_because"] = None


def stop_after(n_steps: int):
    """A stand-in for graceful_interrupt whose stop flag turns on after n_steps checks: a Ctrl-C after step n."""
    from contextlib import contextmanager

    @contextmanager
    def fake_interrupt():
        calls = {"n": 0}

        def stop():
            calls["n"] += 1
            return calls["n"] > n_steps

        yield stop

    return fake_interrupt


QA_FIELDS = {"prompt": "question", "demonstration": "response", "answer": "label"}
"""qa_records' keys -> the row fields."""


def doubling_task(rows: int = 12):
    """A small task built from qa_records: `rows` training rows, the first 4 as its test split."""
    from sdft.tasks.loading import rows_from_records
    from sdft.tasks.spec import TaskSpec

    built = rows_from_records(qa_records(rows), QA_FIELDS, "fixture")
    return TaskSpec("doubling", "1", "fixture", "normalized", {"train": built, "test": built[:4]})
