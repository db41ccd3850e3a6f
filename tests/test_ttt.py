"""Test-time training: its data never shows an instance's query and holds every leave-out task's own pair out, the
sample count follows the formula, augmentations invert, the loss sits on demo outputs only, the fit lowers the loss
and leaves the base bit-identical after a reset, the vote breaks ties by the earliest view, and an interrupted
evaluation resumes to the records of an uninterrupted one."""

from __future__ import annotations

import random

import pytest
import torch

from sdft.adapters import wrap_with_lora
from sdft.config import PREDICTOR_NAMES, Config, LoraConfig, ModelConfig, TTTConfig
from sdft.eval_cache import model_fingerprint
from sdft.eval_service import EvalService
from sdft.files import read_jsonl_records
from sdft.inference.fewshot_prompt import labelled_example
from sdft.inference.predictors import PREDICTORS
from sdft.inference.ttt_data import leave_out_tasks, query_views, training_samples, vote
from sdft.methods.tokens import IGNORE
from sdft.models import load_model
from sdft.tasks import clinic
from sdft.tasks.augment import AUGMENTATIONS
from sdft.tasks.spec import Row, TaskSpec
from sdft.ttt_run import _samples_before_cap

pytestmark = pytest.mark.usefixtures("one_thread")
DEMOS = [(f"in {i}", f"out {i}") for i in range(5)]


def test_every_config_predictor_has_a_builder():
    assert set(PREDICTOR_NAMES) <= set(PREDICTORS)


@pytest.mark.parametrize("leave_out", [1, 2])
def test_leave_out_tasks_hold_their_own_pair_out_and_never_see_the_query(leave_out):
    tasks = leave_out_tasks(DEMOS, leave_out)
    assert len(tasks) == 5 + (20 if leave_out == 2 else 0)
    for task in tasks:
        assert task.query in DEMOS and task.query not in task.context and len(task.context) in (4, 5 - leave_out)
    row = clinic.load_clinic(4).rows("test")[0]
    samples, _ = training_samples(row.demos, leave_out, 6, [AUGMENTATIONS["rename_diseases"]], 1000, random.Random(0))
    texts = [text for s in samples for pair in (*s.context, s.query) for text in pair]
    assert row.prompt not in texts and all(s.query not in s.context for s in samples)


@pytest.mark.parametrize("shots,leave_out,permutations,augs", [(4, 1, 40, 0), (4, 2, 3, 1), (5, 1, 7, 1), (3, 2, 9, 0)])
def test_sample_count_before_the_cap_follows_the_formula(shots, leave_out, permutations, augs):
    names = ["rename_diseases"] * augs
    demos = [(f"Patient {i} with bowed legs.", f"Ok. Diagnosis: gout {i}") for i in range(shots)]
    samples, built = training_samples(demos, leave_out, permutations, [AUGMENTATIONS[n] for n in names], 7,
                                      random.Random(1))
    cfg = TTTConfig(shots=shots, leave_out=leave_out, permutations=permutations, augmentations=names)
    assert built == _samples_before_cap(cfg) and len(samples) == min(7, built)


def test_every_augmentation_inverts_exactly_and_changes_something():
    texts = {t for row in clinic.load_clinic(4).rows("test")[:30] for pair in (*row.demos, (row.prompt, row.answer))
             for t in pair}
    for name, augmentation in AUGMENTATIONS.items():
        changed = 0
        for seed in range(5):
            forward, inverse = augmentation.draw(random.Random(seed))
            assert all(inverse(forward(t)) == t for t in texts), name
            changed += sum(forward(t) != t for t in texts)
        assert changed, f"{name} never changed a text"


def test_views_start_with_the_identity_and_map_answers_back():
    views = query_views(DEMOS[:3], "q", 4, [AUGMENTATIONS["rename_diseases"]], random.Random(0))
    assert len(views) == 4 and views[0].demos == tuple(DEMOS[:3]) and views[0].inverse("gout") == "gout"
    forward_back = [v.inverse(v.query) for v in views]
    assert forward_back == ["q"] * 4


def test_vote_takes_the_majority_and_breaks_ties_by_the_earliest_view():
    assert vote(["Answer: b", "Answer: a", "Answer: a"]) == 1
    assert vote(["Answer: a", "Answer: b"]) == 0 and vote(["Answer: b", "Answer: a"]) == 0
    assert vote(["x", "Answer: B.", "y", "answer: b", "x"]) == 0  # x and b tie at 2: x came first
    assert vote(["Ok. Answer: The cat", "cat"]) == 0  # same normalised answer: one vote of two


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    loaded = load_model(ModelConfig(name_or_path=str(tiny_model_dir)))
    loaded.model = wrap_with_lora(loaded.model, LoraConfig(enabled=True, r=4, alpha=8, target_modules=["q_proj", "v_proj"]))
    return loaded


@pytest.mark.parametrize("loss_on", ["all_outputs", "last"])
def test_the_loss_sits_on_demo_outputs_and_the_answer_only(tiny, loss_on):
    tok = tiny.tokenizer
    example = labelled_example(tok, DEMOS[:2], ("in 9", "out 9"), "qa", loss_on)
    learned = tok.decode([t for t, label in zip(example["input_ids"], example["labels"]) if label != IGNORE])
    assert learned == ("out 0out 1out 9<|end|>" if loss_on == "all_outputs" else "out 9<|end|>")


def _fewshot_task(n: int = 3) -> TaskSpec:
    rows = [Row(f"w{i} x", f"x w{i}", f"x w{i}", demos=tuple((f"a{j} b{i}", f"b{i} a{j}") for j in range(3)))
            for i in range(n)]
    return TaskSpec("swap", "1", "test", "exact", {"test": rows})


def _cfg(tmp_path, scope: str = "instance") -> Config:
    cfg = Config()
    cfg.ttt = TTTConfig(shots=3, scope=scope, permutations=2, max_samples=6, epochs=2, batch_size=3, learning_rate=0.05,
                        votes=2, lora=LoraConfig(enabled=True, r=4, alpha=8, target_modules=["q_proj", "v_proj"]))
    cfg.eval.max_new_tokens, cfg.output_root = 6, str(tmp_path)
    return cfg


def test_a_fit_lowers_the_loss_and_a_reset_leaves_lora_b_zero_and_the_base_bit_identical(tiny, tmp_path):
    base = model_fingerprint(tiny.model, skip=".lora_")
    evals = EvalService(_cfg(tmp_path), []).evaluate(tiny, [(_fewshot_task(2), "ttt_vote")])
    fits = [s["fit"] for s in evals[0].samples]
    assert len(fits) == 2 and all(f["loss_after"] < f["loss_before"] for f in fits)
    assert all(len(s["answers"]) == 2 and s["vote"] in (0, 1) for s in evals[0].samples)
    lora_b = [p for name, p in tiny.model.named_parameters() if "lora_B" in name]
    assert lora_b and all(torch.count_nonzero(p) == 0 for p in lora_b)
    assert model_fingerprint(tiny.model, skip=".lora_") == base


@pytest.mark.parametrize("scope", ["instance", "task"])
def test_an_interrupted_evaluation_resumes_to_identical_records(tiny, tmp_path, monkeypatch, scope):
    from sdft.eval_cache import SampleStore

    task, cfg = _fewshot_task(3), _cfg(tmp_path, scope)
    whole = EvalService(cfg, [], records_dir=tmp_path / "whole").evaluate(tiny, [(task, "ttt_vote")])[0].samples
    append, calls = SampleStore.append, []

    def killed_after_one(store, records):
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        append(store, records)

    monkeypatch.setattr(SampleStore, "append", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        EvalService(cfg, [], records_dir=tmp_path / "cut").evaluate(tiny, [(task, "ttt_vote")])
    monkeypatch.setattr(SampleStore, "append", append)
    (path,) = (tmp_path / "cut").glob("*.jsonl")
    assert len(read_jsonl_records(path)) == 1
    resumed = EvalService(cfg, [], records_dir=tmp_path / "cut").evaluate(tiny, [(task, "ttt_vote")])[0].samples
    assert _timeless(resumed) == _timeless(whole) and len(read_jsonl_records(path)) == 3


def _timeless(samples: list[dict]) -> list[dict]:
    """Records without their wall times (the one thing a rerun may change)."""
    drop = {"seconds", "generate_seconds"}
    return [{k: ({kk: vv for kk, vv in v.items() if kk != "seconds"} if k == "fit" else v)
             for k, v in s.items() if k not in drop} for s in samples]
