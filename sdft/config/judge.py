"""The LLM judge's knobs (the judge itself: sdft/judge.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class JudgeConfig:
    """The LLM judge that grades free-text answers against a reference (the medical and knowledge tasks).
    Its verdicts are cached under <output_root>/.judge_cache, keyed by the judge's model and the prompt."""

    backend: Literal["none", "openai", "local"] = "none"
    """none: tasks graded by a judge refuse to score; openai: an OpenAI-compatible HTTP endpoint (`url`);
    local: a transformers model (`model`: a hub id or local folder) run in this process."""
    url: str | None = None
    """openai: the endpoint's base URL, e.g. http://127.0.0.1:8000/v1 (None = env SDFT_JUDGE_URL). Nothing
    else is ever contacted."""
    model: str | None = None
    """The judge model's name at the endpoint, or the local model (None = env SDFT_JUDGE_MODEL)."""
    api_key_env: str | None = "OPENAI_API_KEY"
    """openai: the environment variable holding the key (never logged, cached or written); null = send no
    key (e.g. a local vLLM server)."""
    timeout_s: float = 60.0
    """Seconds before one HTTP call is abandoned (and retried)."""
    max_retries: int = 5
    """Retries after a timeout, a connection error, HTTP 429 or 5xx; then the evaluation stops."""
    backoff_s: float = 2.0
    """The wait before the first retry, doubled for each next one (a longer Retry-After header wins)."""
    concurrency: int = 8
    """Judge calls in flight at once (HTTP backend)."""
    max_tokens: int = 16
    """Tokens the judge may write: one verdict word."""
    batch_size: int = 8
    """local: prompts generated together."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """local: the judge model's weights dtype (bfloat16 halves its memory on a GPU)."""
