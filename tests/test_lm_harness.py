"""The lm-evaluation-harness bridge, offline: a local multiple-choice task on the tiny random model, scored by
the harness and by our own forward pass; the metric and code-execution guards."""

from __future__ import annotations

import random
import socket
import sys

import pytest
import torch

pytest.importorskip("lm_eval")

from sdft.config import ModelConfig  # noqa: E402
from sdft.errors import UserError  # noqa: E402
from sdft.lm_harness import harness_scores  # noqa: E402
from sdft.models import load_model  # noqa: E402
from conftest import write_jsonl  # noqa: E402

pytestmark = pytest.mark.slow  # lm-eval's TaskManager indexes every harness task: ~20 s

ROWS = [  # hand-written questions and choices; labels are set per test from the model's own preferences
    ("What colour is the sky?", ["blue", "green", "a loud noise"]),
    ("How many legs has a cat?", ["four", "two", "seventeen"]),
    ("What is 2 + 3?", ["5", "23", "six"]),
    ("Which is a fruit?", ["apple", "chair", "river"]),
    ("Where do fish live?", ["water", "trees", "in the sky"]),
    ("What do bees make?", ["honey", "bricks", "music"]),
]


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    """No network: any socket connection fails the test; the datasets cache stays in tmp_path."""
    import datasets

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets")


@pytest.fixture
def loaded(tiny_model_dir):
    return load_model(ModelConfig(name_or_path=str(tiny_model_dir), device="cpu"))


def choice_logliks(loaded, context: str, choices: list[str]) -> list[float]:
    """Our own scoring: summed log-probability of ' ' + choice after the context (one forward pass each)."""
    scores = []
    for choice in choices:
        ctx = loaded.tokenizer.encode(context)
        full = loaded.tokenizer.encode(context + " " + choice)
        assert full[: len(ctx)] == ctx
        with torch.no_grad():
            logp = loaded.model(torch.tensor([full])).logits.float().log_softmax(-1)[0]
        scores.append(sum(logp[i - 1, full[i]].item() for i in range(len(ctx), len(full))))
    return scores


def write_task(folder, records: list[dict]) -> str:
    data = write_jsonl(folder / "tiny_mc.jsonl", records)
    (folder / "tiny_mc.yaml").write_text(
        "task: tiny_mc\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        "doc_to_text: \"Q: {{question}}\\nA:\"\n"
        "doc_to_choice: choices\n"
        "doc_to_target: label\n"
        "target_delimiter: \" \"\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        "metadata:\n  version: 1.0\n"
    )
    return str(folder)


def test_local_task_score_equals_our_own_forward_pass(loaded, tmp_path):
    records, correct = [], 0
    for i, (question, choices) in enumerate(ROWS):
        scores = choice_logliks(loaded, f"Q: {question}\nA:", choices)
        best = max(range(len(choices)), key=scores.__getitem__)
        assert sorted(scores)[-1] - sorted(scores)[-2] > 1e-3, "near tie: pick other rows"
        label = best if i % 3 else (best + 1) % len(choices)  # rows 0 and 3 are answered wrong
        correct += label == best
        records.append({"question": question, "choices": choices, "label": label})
    task_dir = write_task(tmp_path / "tasks", records)

    loaded.model.train()
    rng = torch.get_rng_state(), random.getstate()
    scores = harness_scores(loaded, ["tiny_mc"], metrics={"tiny_mc": "acc,none"}, include_path=task_dir,
                            batch_size=4, seed=3)

    assert scores == {"tiny_mc": correct / len(ROWS)}
    assert correct == 4
    assert loaded.model.training and loaded.tokenizer.padding_side == "left"
    assert torch.equal(torch.get_rng_state(), rng[0]) and random.getstate() == rng[1]


@pytest.mark.parametrize("metrics", [None, {"tiny_mc": "f1,none"}])
def test_missing_or_unknown_metric_lists_what_the_harness_reported(loaded, tmp_path, metrics):
    records = [{"question": q, "choices": c, "label": 0} for q, c in ROWS[:2]]
    task_dir = write_task(tmp_path / "tasks", records)
    with pytest.raises(UserError, match=r"tiny_mc.*acc,none"):
        harness_scores(loaded, ["tiny_mc"], metrics=metrics, include_path=task_dir)


def test_humaneval_needs_allow_code_execution(loaded):
    with pytest.raises(UserError, match="allow_code_execution"):
        harness_scores(loaded, ["humaneval"])


def test_unknown_task_is_a_user_error(loaded, tmp_path):
    (tmp_path / "tasks").mkdir()
    with pytest.raises(UserError, match="no_such_task"):
        harness_scores(loaded, ["no_such_task"], include_path=str(tmp_path / "tasks"))


def test_missing_lm_eval_names_the_extra(loaded, monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    with pytest.raises(UserError, match=r"sdft\[harness\]"):
        harness_scores(loaded, ["hellaswag"])


def test_harness_scores_join_the_general_suite_mean(loaded, tmp_path, tiny_model_dir, custom_task_file):
    from sdft.config import load_config
    from sdft.eval_service import EvalService
    from sdft.tasks.registry import load_tasks, task_registry

    records = [{"question": q, "choices": c, "label": 0} for q, c in ROWS]
    task_dir = write_task(tmp_path / "tasks", records)
    cfg = load_config(None, [f"model.name_or_path={tiny_model_dir}", f"custom_tasks=[{custom_task_file}]",
                             "tasks=[doubling]", "eval.max_new_tokens=4", "eval.harness.tasks=[tiny_mc]",
                             "eval.harness.metrics={tiny_mc: 'acc,none'}", f"eval.harness.include_path={task_dir}"])
    (doubling,) = load_tasks(["doubling"], task_registry(cfg.custom_tasks))
    general = EvalService(cfg, [doubling]).score(loaded, [doubling])["general"]
    assert set(general) == {"mean", "doubling", "tiny_mc"}
    assert general["mean"] == pytest.approx((general["doubling"] + general["tiny_mc"]) / 2)
