"""An LLM judge: grades a free-text answer against a reference answer with a fixed rubric.

Two backends (sdft/judge_backends.py) behind one small interface (`complete_many(prompts) -> replies`): an
OpenAI-compatible HTTP endpoint (`/chat/completions`; URL and model from the config or SDFT_JUDGE_URL /
SDFT_JUDGE_MODEL, the key from the environment variable the config names) and a local transformers model. The
HTTP backend talks to the configured URL and nothing else; the key is never logged, cached or written into an
error message.

Every parsed verdict is cached on disk, keyed by (judge identity, sha256 of the prompt), so a repeated
evaluation costs no judge call. A reply without exactly one verdict word is "malformed": it scores 0, is
counted, and is not cached (a later run asks again). Retries are the HTTP backend's (judge_backends.py).

Its knobs are sdft.config.JudgeConfig.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sdft.config import JudgeConfig
from sdft.errors import UserError
from sdft.files import append_jsonl, read_jsonl_records

if TYPE_CHECKING:
    from sdft.judge_backends import Backend

URL_ENV, MODEL_ENV = "SDFT_JUDGE_URL", "SDFT_JUDGE_MODEL"


# --- rubrics -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Rubric:
    """A grading instruction (fields {question}, {reference}, {response}) and what each verdict scores.
    `grades[verdict]` holds 'score' (the task's accuracy) and any extra metric (e.g. 'lenient')."""

    name: str
    template: str
    grades: dict[str, dict[str, float]] = field(default_factory=dict)


MEDICAL = Rubric(
    name="medical",
    # The CORRECT/INCORRECT rubric against the reference answer (METHOD.md: medical, graded by an LLM judge).
    template=(
        "You are grading an answer to a medical question against the reference answer.\n"
        "Reply CORRECT if the answer reaches the same medical conclusion as the reference (other wording and "
        "extra correct detail are fine). Reply INCORRECT if it reaches a different conclusion, misses the "
        "main point, contains a medical error, or gives no answer.\n\n"
        "[Question]\n{question}\n\n[Reference answer]\n{reference}\n\n[Answer to grade]\n{response}\n\n"
        "Reply with one word: CORRECT or INCORRECT."
    ),
    grades={"CORRECT": {"score": 1.0}, "INCORRECT": {"score": 0.0}},
)

KNOWLEDGE = Rubric(
    name="knowledge",
    # Strict = fully correct; lenient also accepts a partly correct answer (the paper reports both; the
    # exact wording of its judge prompt is not public, this one is ours).
    template=(
        "You are grading an answer to a question about recent events against the reference answer.\n"
        "Reply CORRECT if the answer states every fact of the reference and nothing that contradicts it. "
        "Reply PARTIAL if it states the key fact of the reference but is incomplete or adds a minor error. "
        "Reply INCORRECT if it misses or contradicts the key fact, or gives no answer.\n\n"
        "[Question]\n{question}\n\n[Reference answer]\n{reference}\n\n[Answer to grade]\n{response}\n\n"
        "Reply with one word: CORRECT, PARTIAL or INCORRECT."
    ),
    grades={"CORRECT": {"score": 1.0, "lenient": 1.0}, "PARTIAL": {"score": 0.0, "lenient": 1.0},
            "INCORRECT": {"score": 0.0, "lenient": 0.0}},
)

RUBRICS: dict[str, Rubric] = {r.name: r for r in (MEDICAL, KNOWLEDGE)}


def parse_verdict(reply: str, rubric: Rubric) -> str | None:
    """The one verdict word in the reply (any case, whole words: 'INCORRECT' never counts as 'CORRECT');
    None when there is none or two different ones."""
    words = "|".join(sorted(rubric.grades, key=len, reverse=True))
    found = {m.upper() for m in re.findall(rf"\b({words})\b", reply, flags=re.IGNORECASE)}
    return found.pop() if len(found) == 1 else None


# --- the judge: rubric + backend + cache ---------------------------------------------------------------

@dataclass
class Grade:
    verdict: str | None
    """The rubric's verdict word; None when the reply was malformed (scored 0, not cached)."""
    metrics: dict[str, float]


class JudgeCache:
    """Parsed verdicts on disk, one JSONL file per judge identity: {"key": sha256(prompt), "verdict": ..}."""

    def __init__(self, directory: Path, identity: str):
        self.path = Path(directory) / f"{hashlib.sha256(identity.encode()).hexdigest()[:16]}.jsonl"
        self._lock = threading.Lock()
        self.verdicts: dict[str, str] = {}
        for record in read_jsonl_records(self.path):  # skips the torn last line of a killed run
            self.verdicts[record["key"]] = record["verdict"]

    def add(self, entries: dict[str, str]) -> None:
        with self._lock:
            self.verdicts.update(entries)
            append_jsonl(self.path, [{"key": k, "verdict": v} for k, v in entries.items()])


class Judge:
    """Grades (question, reference, response) triples with a rubric; counts calls, cache hits, malformed."""

    def __init__(self, backend: Backend, cache: JudgeCache | None):
        self.backend, self.cache = backend, cache
        self.identity = backend.identity
        self.calls = self.cache_hits = self.malformed = 0

    def grade_many(self, rubric_name: str, items: list[tuple[str, str, str]]) -> list[Grade]:
        rubric = RUBRICS[rubric_name]
        prompts = [rubric.template.format(question=q, reference=r, response=a) for q, r, a in items]
        keys = [hashlib.sha256(p.encode()).hexdigest() for p in prompts]
        known = self.cache.verdicts if self.cache else {}
        first = {k: i for i, k in reversed(list(enumerate(keys)))}  # a repeated prompt is asked once
        todo = sorted(i for k, i in first.items() if k not in known)
        self.cache_hits += sum(k in known for k in keys)
        replies = self.backend.complete_many([prompts[i] for i in todo]) if todo else []
        self.calls += len(todo)
        fresh = {keys[i]: parse_verdict(reply, rubric) for i, reply in zip(todo, replies)}
        self.malformed += sum(v is None for v in fresh.values())
        if self.cache:
            self.cache.add({k: v for k, v in fresh.items() if v is not None})
        verdicts = [known.get(k) if k in known else fresh.get(k) for k in keys]
        zero = {name: 0.0 for name in next(iter(rubric.grades.values()))}
        return [Grade(v, dict(rubric.grades[v]) if v else dict(zero)) for v in verdicts]


def judge_problem(cfg: JudgeConfig) -> str | None:
    """Why no judge can be built from this config (None when one can); checked before any model loads."""
    if cfg.backend == "none":
        return "no judge is configured: set eval.judge.backend to 'openai' (with url and model) or 'local'"
    if not (cfg.model or os.environ.get(MODEL_ENV)):
        return f"eval.judge.model is not set (nor {MODEL_ENV})"
    if cfg.backend == "openai":
        if not (cfg.url or os.environ.get(URL_ENV)):
            return f"eval.judge.url is not set (nor {URL_ENV})"
        if cfg.api_key_env and not os.environ.get(cfg.api_key_env):
            return (f"the judge's key is read from the environment variable {cfg.api_key_env}, which is not set "
                    "(set eval.judge.api_key_env: null for an endpoint without a key)")
    return None


def make_judge(cfg: JudgeConfig, cache_dir: Path | None, device: str = "auto") -> Judge:
    """The configured judge; a UserError naming what is missing when there is none."""
    problem = judge_problem(cfg)
    if problem:
        raise UserError(problem)
    from sdft.judge_backends import HttpBackend, LocalBackend

    model = cfg.model or os.environ[MODEL_ENV]
    if cfg.backend == "openai":
        key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
        backend: Backend = HttpBackend(cfg.url or os.environ[URL_ENV], model, key, cfg)
    else:
        backend = LocalBackend(model, cfg, device)  # batch size and dtype: cfg.batch_size, cfg.dtype
    return Judge(backend, JudgeCache(cache_dir, backend.identity) if cache_dir else None)
