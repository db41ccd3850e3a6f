"""The judge's backends: an OpenAI-compatible HTTP endpoint and a local transformers model, behind one small
interface (`complete_many(prompts) -> replies`). The HTTP backend talks to the configured URL and nothing else
(redirects are refused); the key is never logged or written into an error message. Timeouts, connection errors,
HTTP 429 and 5xx are retried with exponential backoff (honouring Retry-After up to MAX_RETRY_AFTER_S); other HTTP
errors stop at once.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Callable, Protocol

from sdft.errors import UserError

if TYPE_CHECKING:
    from sdft.judge import JudgeConfig

MAX_RETRY_AFTER_S = 60.0


class Backend(Protocol):
    identity: str
    """What the cache keys on: the backend kind and the judge model (never a key or a URL secret)."""

    def complete_many(self, prompts: list[str]) -> list[str]: ...


class HttpBackend:
    """An OpenAI-compatible `/chat/completions` endpoint; greedy, one user turn per prompt."""

    def __init__(self, url: str, model: str, api_key: str | None, cfg: JudgeConfig,
                 sleep: Callable[[float], None] = time.sleep):
        base = url.rstrip("/")
        self.endpoint = base if base.endswith("/chat/completions") else base + "/chat/completions"
        self.model, self.identity, self.cfg, self.sleep = model, f"openai:{model}", cfg, sleep
        self._api_key = api_key

    def complete_many(self, prompts: list[str]) -> list[str]:
        with ThreadPoolExecutor(max_workers=self.cfg.concurrency) as pool:
            return list(pool.map(self.complete, prompts))

    def complete(self, prompt: str) -> str:
        last = "no attempt"
        for attempt in range(self.cfg.max_retries + 1):
            if attempt:
                self.sleep(self._wait(attempt, last))
            try:
                return self._post(prompt)
            except _Retryable as err:
                last = err
        raise UserError(self._redact(f"judge endpoint {self.endpoint}: no answer after "
                                     f"{self.cfg.max_retries + 1} attempts (last: {last})"))

    def _wait(self, attempt: int, last: object) -> float:
        wait = self.cfg.backoff_s * 2 ** (attempt - 1)
        retry_after = getattr(last, "retry_after", None)
        return max(wait, min(retry_after, MAX_RETRY_AFTER_S)) if retry_after is not None else wait

    def _post(self, prompt: str) -> str:
        body = {"model": self.model, "messages": [{"role": "user", "content": prompt}],
                "temperature": 0, "max_tokens": self.cfg.max_tokens}
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        request = urllib.request.Request(self.endpoint, json.dumps(body).encode(), headers, method="POST")
        try:
            with _OPENER.open(request, timeout=self.cfg.timeout_s) as response:
                payload = response.read()
        except urllib.error.HTTPError as err:
            if err.code == 429 or err.code >= 500:
                raise _Retryable(f"HTTP {err.code}", _retry_after(err)) from None
            detail = self._redact(err.read(300).decode(errors="replace"))
            raise UserError(f"judge endpoint {self.endpoint} answered HTTP {err.code}: {detail}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as err:
            raise _Retryable(type(err).__name__ + (f": {err.reason}" if hasattr(err, "reason") else "")) from None
        return _reply_text(payload)

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """The judge talks to the configured URL only: a redirect elsewhere is an error, not followed."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


def _retry_after(err: urllib.error.HTTPError) -> float | None:
    try:
        return float(err.headers.get("Retry-After"))
    except (TypeError, ValueError):
        return None


def _reply_text(payload: bytes) -> str:
    """The reply's text; a body of another shape is retried (proxies sometimes answer with an HTML page)."""
    try:
        return str(json.loads(payload)["choices"][0]["message"]["content"] or "")
    except (ValueError, KeyError, IndexError, TypeError):
        raise _Retryable("the reply is not an OpenAI chat completion") from None


class LocalBackend:
    """A transformers chat model in this process, greedy decoding, prompts batched."""

    def __init__(self, model: str, cfg: JudgeConfig, device: str = "auto"):
        from sdft.config import ModelConfig
        from sdft.models import load_model

        self.loaded = load_model(ModelConfig(name_or_path=model, device=device, dtype=cfg.dtype))
        self.identity, self.cfg = f"local:{model}", cfg

    def complete_many(self, prompts: list[str]) -> list[str]:
        from sdft.config import SamplingConfig
        from sdft.generation import generate_texts

        replies = [""] * len(prompts)
        chats = [_chat(self.loaded.tokenizer, p) for p in prompts]
        greedy = SamplingConfig()  # a judge's verdict is its most probable reply
        for indices, completions in generate_texts(self.loaded, chats, greedy, self.cfg.max_tokens,
                                                   batch_size=self.cfg.batch_size):
            for i, per_prompt in zip(indices, completions):
                replies[i] = per_prompt[0].text
        return replies


def _chat(tokenizer, prompt: str) -> str:
    from sdft.prompts import render_prompt

    return render_prompt(tokenizer, prompt)
