"""SEAL's continual mode through the sequence runner: `<knowledge task>@N` names one article as a task, and
`train.method: seal` writes one self-edit per article, fits an adapter on it + the article and merges it, so SEAL, SDFT
and SFT on the same passage stream fill one matrix."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from sdft.config import load_config
from sdft.errors import UserError
from sdft.generation import Generation
from sdft.methods import seal as seal_methods
from sdft.sequence import plan_sequence, run_sequence
from sdft.tasks import knowledge_world as world
from sdft.tasks.passages import passages_of
from sdft.tasks.registry import load_tasks, task_registry

pytestmark = pytest.mark.usefixtures("one_thread")


def test_an_article_view_holds_that_articles_questions_and_article_only():
    registry = task_registry()
    full, view = load_tasks(["knowledge", "knowledge@3"], registry)
    event = world.events("task", world.VERSION)[2]
    assert list(view.extra["articles"]) == [event.title] and view.extra["corpus"] == [
        f"{event.title}\n\n{world.article(event)}"]
    for split in ("train", "test", "ood"):
        assert view.split(split) == [r for r in full.split(split) if r.article == event.title]
        assert len(view.split(split)) == len(world.questions(event, split)) > 0
    [passage] = passages_of(view, "test")
    assert passage.questions == tuple(world.questions(event, "test"))
    assert load_tasks(["knowledge_oracle@3"], registry)[0].split("test")[0].prompt.startswith("Read the article")


@pytest.mark.parametrize("name,message", [("knowledge@31", "'knowledge' has articles 1 to 30"),
                                          ("science@1", "'science' has no articles"),
                                          ("knowlege@1", "did you mean 'knowledge'")])
def test_a_bad_article_name_is_one_line(name, message):
    with pytest.raises(UserError, match=message):
        load_tasks([name], task_registry())


def stream_config(tiny_model_dir, *overrides):
    return load_config(None, [
        f"model.name_or_path={tiny_model_dir}", "tasks=[knowledge@1, knowledge@2]", "eval.general=[]",
        "eval.max_new_tokens=3", "train.steps=1", "train.batch_size=2", "train.max_completion_tokens=8",
        "train.max_prompt_tokens=64", "seal.inner_epochs=2", "seal.max_self_edit_tokens=6",
        "lora.enabled=true", "sequence.methods=[seal, sft]",
        "sequence.method_overrides={seal: {lora.enabled: false}, sft: {task_sources.knowledge.teacher_context: answer}}",
        *overrides])


def test_seal_with_the_sequences_lora_is_refused_in_one_line(tiny_model_dir, tmp_path):
    with pytest.raises(UserError, match="train.method seal fits its own adapter"):
        plan_sequence(stream_config(tiny_model_dir, "sequence.method_overrides={}"), tmp_path / "run")


def test_seal_and_sft_on_one_passage_stream_fill_one_matrix(tiny_model_dir, tmp_path, monkeypatch):
    written = []

    def sampler(loaded, passage, seal, n, seed):
        written.append((passage.title, seed))
        return [Generation([], f"{passage.title} line one.\n\n{passage.title} line two.", False)]

    monkeypatch.setattr(seal_methods, "sample_self_edits", sampler)
    results = run_sequence(plan_sequence(stream_config(tiny_model_dir), tmp_path / "run"))
    titles = [e.title for e in world.events("task", world.VERSION)[:2]]
    assert [title for title, _ in written] == titles  # one self-edit per stage, for that stage's article
    for method in ("seal", "sft"):
        assert len(results["methods"][method]["matrix"]) == 3
    stage1, stage2 = (tmp_path / "run" / "seal" / "seed-0" / f"stage-{k}-knowledge@{k}" for k in (1, 2))
    record = json.loads((stage1 / "self_edits.jsonl").read_text().splitlines()[0])
    # the article and the self-edit's two lines, 2 epochs at batch 1: the inner loop's update
    assert record["title"] == titles[0] and record["lines"] == 2 and record["steps"] == 6
    assert not (stage1 / "merged").exists()  # the merged model is the stage's model/ (no sequence LoRA to merge)
    assert yaml.safe_load((stage2 / "config.yaml").read_text())["model"]["name_or_path"] == str(stage1 / "model")
    base = load_file(str(tiny_model_dir / "model.safetensors"))
    after = load_file(str(stage1 / "model" / "model.safetensors"))
    changed = [k for k in base if not torch.equal(base[k], after[k])]
    assert changed and all(k in after for k in base)  # full weights, the update merged into them


def test_an_empty_self_edit_in_the_stream_is_a_counted_no_op(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(seal_methods, "sample_self_edits", lambda loaded, passage, seal, n, seed: [
        Generation([], " \n ", False)])
    monkeypatch.setattr(seal_methods, "fit_adapter", lambda *a, **k: pytest.fail("an empty self-edit was fitted"))
    cfg = stream_config(tiny_model_dir, "tasks=[knowledge@1]", "sequence.methods=[seal]")
    results = run_sequence(plan_sequence(cfg, tmp_path / "run"))
    stage = tmp_path / "run" / "seal" / "seed-0" / "stage-1-knowledge@1"
    assert json.loads((stage / "self_edits.jsonl").read_text()) == {
        "title": world.events("task", world.VERSION)[0].title, "self_edit": " \n ", "lines": 0, "empty": True,
        "hit_cap": False, "steps": 0}
    base = load_file(str(tiny_model_dir / "model.safetensors"))
    after = load_file(str(stage / "model" / "model.safetensors"))
    assert all(torch.equal(base[k], after[k]) for k in base)
    assert results["methods"]["seal"]["matrix"][1] == results["methods"]["seal"]["matrix"][0]
