"""Evaluation: the cache hits and misses when it should, an interrupted evaluation resumes to the same
numbers, and pass@k comes out of sampled evaluation."""

from __future__ import annotations

import dataclasses
import json

import pytest

from conftest import qa_records
from sdft.generation import batching
from sdft.config import load_config
from sdft.models import load_model
from sdft.eval_service import EvalService
from sdft.tasks.loading import rows_from_records
from sdft.tasks.spec import TaskSpec

pytestmark = pytest.mark.usefixtures("one_thread")


def evaluate_many(loaded, cfg, jobs):
    return EvalService(cfg, []).evaluate(loaded, jobs)
FIELDS = {"prompt": "question", "demonstration": "response", "answer": "label"}


@pytest.fixture
def setup(tiny_model_dir):
    cfg = load_config(None, [f"model.name_or_path={tiny_model_dir}", "eval.max_new_tokens=4",
                             "eval.batch_size=2", "tasks=[doubling]"])
    rows = rows_from_records(qa_records(5), FIELDS, "fixture")
    task = TaskSpec("doubling", "1", "fixture", "normalized", {"test": rows})
    return cfg, load_model(cfg.model), task


@pytest.fixture
def generated(monkeypatch):
    """Counts the prompts actually sent to the model."""
    counter = {"prompts": 0}
    real = batching._generate_batch

    def counting(loaded, prompts, *args):
        counter["prompts"] += len(prompts)
        return real(loaded, prompts, *args)

    monkeypatch.setattr(batching, "_generate_batch", counting)
    return counter


def test_the_cache_hits_on_a_repeat_and_misses_on_a_new_version_or_setting(setup, generated):
    cfg, loaded, task = setup
    first = evaluate_many(loaded, cfg, [(task, False)])[0]
    assert generated["prompts"] == 5
    again = evaluate_many(loaded, cfg, [(task, False)])[0]
    assert generated["prompts"] == 5 and again.samples == first.samples  # served from the cache
    evaluate_many(loaded, cfg, [(dataclasses.replace(task, version="2"), False)])
    assert generated["prompts"] == 10  # a new task version misses
    longer = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, max_new_tokens=5))
    evaluate_many(loaded, longer, [(task, False)])
    assert generated["prompts"] == 15  # new generation settings miss
    evaluate_many(loaded, cfg, [(task, True)])
    assert generated["prompts"] == 20  # the teacher prompt is another evaluation
    with_weights_changed = load_model(cfg.model)
    next(with_weights_changed.model.parameters()).data.add_(0.1)
    evaluate_many(with_weights_changed, cfg, [(task, False)])
    assert generated["prompts"] == 25  # other weights miss


def test_an_interrupted_evaluation_resumes_to_the_same_numbers(setup, generated, monkeypatch, tmp_path):
    cfg, loaded, task = setup
    uncached = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, cache=False))
    expected = evaluate_many(loaded, uncached, [(task, False)])[0]
    real, batches = batching._generate_batch, {"n": 0}

    def dies_on_the_second_batch(*args):
        batches["n"] += 1
        if batches["n"] == 2:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(batching, "_generate_batch", dies_on_the_second_batch)
    with pytest.raises(KeyboardInterrupt):
        evaluate_many(loaded, cfg, [(task, False)])
    monkeypatch.setattr(batching, "_generate_batch", real)
    (cache_file,) = (tmp_path / "runs" / ".eval_cache").glob("*.jsonl")
    assert len(cache_file.read_text().splitlines()) == 2  # the first batch of 2 rows was kept
    with cache_file.open("a") as handle:
        handle.write('{"row": 4, "trunc')  # a line cut off by the kill is ignored
    resumed = evaluate_many(loaded, cfg, [(task, False)])[0]
    assert resumed.summary() == expected.summary()
    assert [s["response"] for s in resumed.samples] == [s["response"] for s in expected.samples]
    # the resume cut the torn line off before appending, so the cache still reads whole
    assert all(json.loads(line) for line in cache_file.read_text().splitlines())


def test_sampled_evaluation_reports_pass_at_k(setup):
    cfg, loaded, task = setup
    sampled = load_config(None, [f"model.name_or_path={cfg.model.name_or_path}", "eval.max_new_tokens=4",
                                 "eval.sampling.temperature=1.0", "eval.samples=4", "eval.cache=false"])
    result = evaluate_many(loaded, sampled, [(task, False)])[0]
    assert result.n == 5 and len(result.samples) == 20
    assert set(result.pass_at_k) == {"pass@1", "pass@2", "pass@4"}
    assert result.pass_at_k["pass@1"] == pytest.approx(result.accuracy)
    assert result.pass_at_k["pass@1"] <= result.pass_at_k["pass@2"] <= result.pass_at_k["pass@4"]


def test_one_service_builds_its_judge_once(setup, monkeypatch):
    """A local judge model loads once per run, not at every evaluation (every row of a sequence's matrix)."""
    from sdft import eval_service
    from sdft.judge import Grade

    cfg, loaded, task = setup
    judged = dataclasses.replace(task, scorer="judge_medical")
    built = []

    class FakeJudge:
        identity, malformed = "fake", 0

        def grade_many(self, rubric, items):
            return [Grade("CORRECT", {"score": 1.0}) for _ in items]

    monkeypatch.setattr(eval_service, "make_judge", lambda *args: built.append(args) or FakeJudge())
    monkeypatch.setattr(eval_service, "require_judge", lambda cfg, tasks: None)
    service = EvalService(dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, cache=False)), [])
    for _ in range(3):
        assert service.score(loaded, [judged])["scores"]["doubling"]["accuracy"] == 1.0
    assert len(built) == 1
