"""The registry of generation backends: SamplingConfig.backend -> the backend."""

from __future__ import annotations

from sdft.generation.base import Backend
from sdft.generation.hf import HFBackend
from sdft.generation.native import NativeBackend

BACKENDS: dict[str, Backend] = {"hf": HFBackend(), "native": NativeBackend()}
"""Stateless, so one instance each. A vLLM backend is one more entry (and a Literal value in SamplingConfig)."""


def backend(name: str) -> Backend:
    return BACKENDS[name]
