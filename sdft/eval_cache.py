"""The evaluation cache: per-sample results on disk, keyed by what determines them.

key = (model fingerprint, task, task version, split, row limit, prompt kind, generation settings). Each key
owns one JSONL file that grows a batch at a time, so a second identical evaluation costs nothing and an
interrupted one resumes where it stopped (a half-written last line is ignored). Greedy decoding resumes
exactly; with sampling the remaining rows are batched differently, so they get other, equally valid samples.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from sdft.config import EvalConfig
from sdft.files import append_jsonl, read_jsonl_records


def model_fingerprint(model: torch.nn.Module, skip: str | None = None) -> str:
    """sha256 over every parameter and buffer (names, dtypes, shapes, bytes): the weights actually in
    memory, whatever file or adapter they came from. Linear in model size (seconds for a 7B model). Names holding
    `skip` are left out (".lora_": the base weights alone)."""
    digest = hashlib.sha256()
    tensors = dict(model.named_parameters())
    tensors.update(model.named_buffers())
    for name in sorted(n for n in tensors if skip is None or skip not in n):
        tensor = tensors[name].detach().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.cpu().view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def cache_key(fingerprint: str, task: str, version: str, split: str, limit: int | None, teacher: bool | str,
              ev: EvalConfig, seed: int, predictor: dict | None = None) -> str:
    """The key of one evaluation: everything that decides its samples (eval.batch_size changes nothing). `teacher`
    is the prompt kind (False / True: the plain / teacher prompt) or a predictor's name, `predictor` its settings."""
    settings = {"max_new_tokens": ev.max_new_tokens, "temperature": ev.sampling.temperature,
                "top_p": ev.sampling.top_p, "samples": ev.samples}
    if ev.sampling.backend != "hf":  # caches written before the backend was a setting are hf's: their keys stay valid
        settings["backend"] = ev.sampling.backend
    if ev.sampling.temperature > 0:
        settings["seed"] = seed
    prompt = ("teacher" if teacher else "student") if isinstance(teacher, bool) else teacher
    payload = {"model": fingerprint, "task": task, "version": version, "split": split, "limit": limit,
               "prompt": prompt, "generation": settings}
    if predictor:  # the plain and teacher prompts have none: their keys stay those of older caches
        payload["predictor"] = predictor
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


class SampleStore:
    """One evaluation's per-sample records, appended batch by batch."""

    def __init__(self, directory: Path, key: str, label: str = ""):
        self.path = Path(directory) / f"{label}{'-' if label else ''}{key}.jsonl"

    def load(self) -> dict[int, list[dict]]:
        """row index -> its samples, for every row whose samples were all written."""
        done: dict[int, list[dict]] = {}
        for record in read_jsonl_records(self.path):  # skips the torn last line of a killed run
            done.setdefault(record["row"], []).append(record)
        return done

    def append(self, records: list[dict]) -> None:
        append_jsonl(self.path, records)
