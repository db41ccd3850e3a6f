"""SEAL on the tiny random model: a useless self-edit earns no reward and a question-shaped one a positive reward,
selection keeps the best positive self-edit deterministically, the outer SFT raises the kept self-edit's
log-probability, the inner adapter's reset leaves the base bit-identical, an empty self-edit is a counted no-op,
bad input is one line before any model loads, and an interrupted run resumes to the records of an uninterrupted
one."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from sdft.adapters import adapter_parameters, wrap_with_lora
from sdft.cli import app
from sdft.config import TEMPLATE_NAMES, Config, ModelConfig, SealConfig, load_config
from sdft.errors import UserError
from sdft.eval_cache import model_fingerprint
from sdft.files import read_jsonl_records
from sdft.generation import Generation
from sdft.methods import seal as seal_methods
from sdft.methods.seal import (
    Answering,
    best_self_edit,
    outer_sft,
    score_self_edit,
    self_edit_lines,
)
from sdft.models import load_model
from sdft.prompts import render_prompt
from sdft.tasks.articles import SELF_EDIT_TEMPLATES
from sdft.tasks.passages import Passage, load_passages, split_passages

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = SealConfig(k=2, train_passages=2, held_out_passages=1, eval_times=1, inner_epochs=10, inner_learning_rate=5e-3,
                  rounds=2, max_self_edit_tokens=8, outer_learning_rate=1e-2, outer_epochs=10)
"""Settings under which the tiny random model learns a fact its self-edit states four times (found by trying: 9 of 9
fits across passages and seeds; the paper's lr 1e-3 moves a random 2-layer model too little)."""
ANSWERING = Answering(max_new_tokens=6, batch_size=8)
PASSAGES = [Passage(f"T{i}", f"Kel{i} hit Rom{i}.", ((f"Where did Kel{i} hit?", f"Rom{i}"),), "normalized")
            for i in range(3)]


def tiny(tiny_model_dir, **seal_overrides) -> Config:
    cfg = Config(model=ModelConfig(name_or_path=str(tiny_model_dir)), seal=dataclasses.replace(FAST, **seal_overrides))
    cfg.eval.max_new_tokens = 6
    return cfg.validate()


def answer_line(tokenizer, passage: Passage) -> str:
    """A question-shaped self-edit: the question in the form the model is asked in (its chat template) with the
    answer, four times."""
    question, answer = passage.questions[0]
    return "\n".join([f"{render_prompt(tokenizer, question)}{answer}"] * 4)


@pytest.fixture
def inner(tiny_model_dir):
    loaded = load_model(ModelConfig(name_or_path=str(tiny_model_dir)))
    loaded.model = wrap_with_lora(loaded.model, FAST.inner_lora, 0)
    return loaded


def test_the_config_names_every_template_and_no_other():
    assert set(TEMPLATE_NAMES) == set(SELF_EDIT_TEMPLATES)


@pytest.mark.parametrize("override,message", [("seal.k=0", "seal.k must be >= 1"),
                                              ("seal.template=summary", "unknown template 'summary'"),
                                              ("seal.seeds=[1,1]", "seal.seeds must name at least one seed, each once")])
def test_bad_settings_are_one_line_before_any_model_loads(override, message):
    with pytest.raises(UserError, match=message):
        load_config(None, [override])
    result = CliRunner().invoke(app, ["seal", "nothing.yaml", "--set", override], prog_name="sdft")
    assert result.exit_code == 1


def test_a_passage_without_questions_is_refused(monkeypatch):
    from sdft.tasks import passages

    monkeypatch.setattr(passages, "embedded_passages", lambda split: [dataclasses.replace(PASSAGES[0], questions=())])
    with pytest.raises(UserError, match="has no questions"):
        load_passages(SealConfig())


def test_the_passage_split_is_seeded_and_disjoint():
    passages = load_passages(SealConfig())
    train, held = split_passages(passages, 20, 10, seed=0)
    assert split_passages(list(reversed(passages)), 20, 10, seed=0) == (train, held)
    assert not {p.title for p in train} & {p.title for p in held} and len(train) == 20 and len(held) == 10
    assert split_passages(passages, 20, 10, seed=1) != (train, held)
    with pytest.raises(UserError, match="exceed"):
        split_passages(passages, 25, 10, seed=0)


def test_a_useless_self_edit_earns_nothing_and_a_question_shaped_one_a_positive_reward(inner):
    passage = PASSAGES[0]
    baseline = seal_methods.answer_accuracy(inner, passage, ANSWERING)
    useless = score_self_edit(inner, passage, Generation([], "aaa\nbbb", False), baseline, FAST, 0, ANSWERING)
    useful = score_self_edit(inner, passage, Generation([], answer_line(inner.tokenizer, passage), False), baseline,
                             FAST, 0, ANSWERING)
    assert baseline == 0.0 and useless.reward == 0.0 and useful.reward == 1.0 and useful.accuracy == 1.0


def test_an_empty_self_edit_is_a_no_op_with_reward_zero(inner, monkeypatch):
    monkeypatch.setattr(seal_methods, "fit_adapter", lambda *a, **k: pytest.fail("an empty self-edit was fitted"))
    scored = score_self_edit(inner, PASSAGES[0], Generation([], " \n\n  ", False), 0.25, FAST, 0, ANSWERING)
    assert scored.empty and scored.reward == 0.0 and scored.accuracy == 0.25 and self_edit_lines(" a \n\nb") == ["a", "b"]


def test_the_reset_leaves_the_base_bit_identical(inner, tiny_model_dir):
    base = model_fingerprint(inner.model, skip=".lora_")
    fresh = {name: p.detach().clone() for name, p in adapter_parameters(inner.model).items()}
    score_self_edit(inner, PASSAGES[0], Generation([], answer_line(inner.tokenizer, PASSAGES[0]), False), 0.0, FAST, 0,
                    ANSWERING)
    assert model_fingerprint(inner.model, skip=".lora_") == base
    assert all(torch.equal(p, fresh[name]) for name, p in adapter_parameters(inner.model).items())
    plain = load_model(ModelConfig(name_or_path=str(tiny_model_dir))).model
    ids = torch.tensor([[5, 40, 41, 42, 43]])
    assert torch.equal(inner.model(input_ids=ids).logits, plain(input_ids=ids).logits)


@pytest.mark.parametrize("rewards,best", [([0.1, 0.3, 0.3, -0.2], 1), ([0.0, -0.5], None), ([0.0, 0.0], None),
                                          ([-0.1, 0.25], 1), ([], None)])
def test_selection_keeps_the_earliest_best_positive_reward(rewards, best):
    assert best_self_edit(rewards) == best


def completion_logprob(loaded, prompt: str, completion: str) -> float:
    """log p(completion + eos | prompt in the chat template), summed over the completion's tokens."""
    tokenizer = loaded.tokenizer
    prompt_ids = tokenizer(render_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        logprobs = torch.log_softmax(loaded.model(input_ids=ids).logits[0, :-1].float(), dim=-1)
    targets = ids[0, 1:]
    return logprobs[torch.arange(len(targets)), targets][len(prompt_ids) - 1:].sum().item()


def test_the_outer_sft_raises_the_kept_self_edits_log_probability(tiny_model_dir):
    loaded = load_model(ModelConfig(name_or_path=str(tiny_model_dir)))
    pairs = [(seal_methods.self_edit_prompt(p, "implications"), f"Kel{i} hit Rom{i}.") for i, p in enumerate(PASSAGES)]
    before = [completion_logprob(loaded, *pair) for pair in pairs]
    wrapped, fit = outer_sft(loaded, pairs, FAST, seed=0)
    loaded.model = wrapped.merge_and_unload()
    after = [completion_logprob(loaded, *pair) for pair in pairs]
    assert fit.loss_after < fit.loss_before and all(a > b + 1.0 for a, b in zip(after, before))


def fake_sampler(tokenizer):
    """Self-edits the random model would never write: a question-shaped one, then an empty one, then repeats."""

    def sample(loaded, passage, seal, n, seed):
        texts = [answer_line(tokenizer, passage), ""]
        return [Generation([], texts[i % 2], False) for i in range(n)]

    return sample


def run(cfg, output, monkeypatch, tokenizer, stop_after: int | None = None):
    from sdft import seal_run

    monkeypatch.setattr(seal_run, "load_passages", lambda seal: PASSAGES)
    monkeypatch.setattr(seal_methods, "sample_self_edits", fake_sampler(tokenizer))
    if stop_after is not None:
        calls, real = {"n": 0}, seal_methods.score_self_edit

        def interrupting(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] > stop_after:
                raise KeyboardInterrupt
            return real(*args, **kwargs)

        monkeypatch.setattr(seal_methods, "score_self_edit", interrupting)
    try:
        return seal_run.run_seal(seal_run.plan_seal(cfg, output))
    finally:
        monkeypatch.undo()


def without_seconds(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def test_rounds_count_empty_self_edits_train_the_policy_and_resume(tiny_model_dir, tmp_path, monkeypatch):
    cfg = tiny(tiny_model_dir)
    tokenizer = load_model(cfg.model).tokenizer
    whole = run(cfg, tmp_path / "whole", monkeypatch, tokenizer)
    first = whole["per_seed"]["0"]["rounds"][0]
    assert first["empty_self_edits"] == 2 and first["positive_share"] == 1.0 and first["sft"]["examples"] == 2
    assert first["mean_reward"] == 0.5 and set(whole["seal_table"]) == {
        "no_update", "passage_only", "base_self_edits", "oracle", "seal_round_1", "seal_round_2"}
    assert (tmp_path / "whole" / "seed-0" / "rounds" / "round-2" / "policy" / "model.safetensors").is_file()
    with pytest.raises(KeyboardInterrupt):  # stopped in round 1's second passage (after the table's 1 + 2 scores)
        run(cfg, tmp_path / "cut", monkeypatch, tokenizer, stop_after=4)
    assert len(read_jsonl_records(tmp_path / "cut" / "seed-0" / "rounds" / "round-1" / "self_edits.jsonl")) == 1
    resumed = run(cfg, tmp_path / "cut", monkeypatch, tokenizer)
    for path in ("rounds/round-1/self_edits.jsonl", "rounds/round-2/self_edits.jsonl", "table/seal_round_2.jsonl"):
        assert without_seconds(read_jsonl_records(tmp_path / "cut" / "seed-0" / path)) == without_seconds(
            read_jsonl_records(tmp_path / "whole" / "seed-0" / path))
    assert resumed["seal_table"] == whole["seal_table"]


def test_the_table_and_rounds_are_means_over_the_seeds_with_intervals():
    from sdft.metrics import mean_ci95
    from sdft.seal_run import seed_means

    seeds = [{"seal_table": {"no_update": a, "seal_round_1": b}, "rounds": [{"round": 1, "mean_reward": c, "sft": {}}]}
             for a, b, c in ((0.0, 0.5, 0.1), (0.2, 0.25, 0.3), (0.1, 0.0, 0.2))]
    means = seed_means(seeds)
    assert means["seal_table"]["no_update"] == pytest.approx(0.1)
    assert means["seal_table"]["seal_round_1"] == pytest.approx(0.25)
    assert means["seal_table_ci95"]["seal_round_1"] == pytest.approx(mean_ci95([0.5, 0.25, 0.0])[1])
    assert means["seal_table_ci95"]["seal_round_1"] == pytest.approx(4.303 * 0.25 / 3 ** 0.5, rel=1e-3)
    assert means["rounds"] == [{"round": 1, "mean_reward": pytest.approx(0.2),
                                "mean_reward_ci95": pytest.approx(4.303 * 0.1 / 3 ** 0.5, rel=1e-3)}]
    assert seed_means(seeds[:1])["seal_table_ci95"]["no_update"] is None


@pytest.mark.slow
def test_sdft_seal_end_to_end_on_the_embedded_world(tmp_path):
    """The command on the shipped model, small: every file of the run folder, the table's keys, and a rerun on the
    finished folder that recomputes nothing."""
    import json

    sets = ["seal.k=2", "seal.train_passages=2", "seal.held_out_passages=2", "seal.eval_times=1", "seal.inner_epochs=2",
            "seal.rounds=2", "seal.max_self_edit_tokens=64", "eval.max_new_tokens=24",
            "seal.continual=null", "seal.seeds=[0]"]  # the continual run: test_the_continual_stream_runs_after_...
    args = ["seal", str(Path(__file__).resolve().parent.parent / "configs" / "seal.yaml"), "--output", str(tmp_path / "run"),
            *(item for s in sets for item in ("--set", s))]
    first = CliRunner().invoke(app, args, prog_name="sdft")
    assert first.exit_code == 0, first.output
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["seeds"] == [0] and list(results["per_seed"]) == ["0"]
    assert list(results["seal_table"]) == ["no_update", "passage_only", "base_self_edits", "seal_round_1",
                                           "seal_round_2", "oracle"]
    assert [r["round"] for r in results["rounds"]] == [1, 2] and all(r["self_edits"] == 4 for r in results["rounds"])
    for r in (1, 2):
        assert (tmp_path / "run" / "seed-0" / "rounds" / f"round-{r}" / "policy" / "model.safetensors").is_file()
        assert len(read_jsonl_records(tmp_path / "run" / "seed-0" / "rounds" / f"round-{r}" / "self_edits.jsonl")) == 2
    stamp = (tmp_path / "run" / "seed-0" / "rounds.jsonl").stat().st_mtime_ns
    again = CliRunner().invoke(app, args, prog_name="sdft")
    assert again.exit_code == 0 and json.loads((tmp_path / "run" / "results.json").read_text())["seal_table"] == \
        results["seal_table"] and (tmp_path / "run" / "seed-0" / "rounds.jsonl").stat().st_mtime_ns == stamp


def release_file(tmp_path, items) -> Path:
    import json

    path = tmp_path / "squad_val.json"
    path.write_text(json.dumps(items))
    return path


RELEASE_ITEMS = [{"title": f"Article {i}", "context": f"Text {i}.", "id": i,
                  "questions": [{"question": f"Q{i}?", "answer": f"A{i}", "id": "x"}]} for i in range(4)]


def test_the_paper_config_dry_runs_on_local_files_in_the_release_schema(tmp_path, monkeypatch):
    for name, value in (("SDFT_JUDGE_URL", "http://127.0.0.1:9/v1"), ("SDFT_JUDGE_MODEL", "judge"),
                        ("OPENAI_API_KEY", "k")):
        monkeypatch.setenv(name, value)
    path = release_file(tmp_path, RELEASE_ITEMS)
    args = ["seal", str(Path(__file__).resolve().parent.parent / "configs" / "paper" / "seal.yaml"), "--dry-run",
            "--set", f"seal.files=[{path}]", "--set", "seal.train_passages=3", "--set", "seal.held_out_passages=1"]
    result = CliRunner().invoke(app, args, prog_name="sdft")
    assert result.exit_code == 0, result.output
    assert "passages: 3 to train on, 1 held out, 4 questions in all" in result.output
    assert "Qwen/Qwen2.5-7B" in result.output and "each fitted 3 times" in result.output
    passages = load_passages(SealConfig(source="local", files=[str(path)]))
    assert passages[2].questions == (("Q2?", "A2"),) and passages[2].scorer == "judge_knowledge"
    monkeypatch.delenv("SDFT_JUDGE_MODEL")
    refused = CliRunner().invoke(app, args, prog_name="sdft")
    assert refused.exit_code == 1 and "graded by an LLM judge (judge_knowledge), but eval.judge.model" in refused.output


@pytest.mark.parametrize("items,message", [
    ({"title": "x"}, "expected a JSON list of passages"),
    ([{"title": "T", "context": "C", "questions": [{"question": "Q?"}]}], "item 1, question 1: 'answer' must be"),
    ([{"title": "T", "context": "", "questions": []}], "item 1: 'context' must be a non-empty string"),
    ([{"title": "T", "context": "C"}], "item 1: 'questions' must be a list"),
    ([{"title": "T", "context": "C", "questions": []}], "the passage 'T' has no questions"),
])
def test_a_malformed_release_file_is_one_line_naming_the_item(tmp_path, items, message):
    with pytest.raises(UserError, match=message):
        load_passages(SealConfig(source="local", files=[str(release_file(tmp_path, items))], scorer="normalized"))


def stream_file(tmp_path, tiny_model_dir, tasks: str) -> Path:
    path = tmp_path / "stream.yaml"
    path.write_text(f"model: {{name_or_path: {tiny_model_dir}}}\ntasks: {tasks}\n"
                    "eval: {general: [], max_new_tokens: 3}\n"
                    "train: {steps: 1, batch_size: 2, max_completion_tokens: 8, max_prompt_tokens: 64}\n"
                    "seal: {inner_epochs: 1, max_self_edit_tokens: 6}\n"
                    "sequence: {methods: [seal, sft], method_overrides: {seal: {lora.enabled: false}, "
                    "sft: {task_sources.knowledge.teacher_context: answer}}}\nlora: {enabled: true}\n")
    return path


def test_the_continual_stream_runs_after_the_table_with_the_last_policy_writing(tiny_model_dir, tmp_path, monkeypatch):
    cfg = tiny(tiny_model_dir, rounds=1, continual=str(stream_file(tmp_path, tiny_model_dir, "[knowledge@1]")))
    tokenizer = load_model(cfg.model).tokenizer
    results = run(cfg, tmp_path / "run", monkeypatch, tokenizer)
    continual = results["continual"]
    assert continual["writer"] == str(tmp_path / "run" / "seed-0" / "rounds" / "round-1" / "policy")
    assert continual["tasks"] == ["knowledge@1"] and set(continual["methods"]) == {"seal", "sft"}
    assert {"acc", "bwt", "general_delta"} <= set(continual["methods"]["seal"]["metrics"])
    assert (tmp_path / "run" / "continual" / "report.md").is_file()
    assert (tmp_path / "run" / "continual" / "seal" / "seed-0" / "stage-1-knowledge@1" / "self_edits.jsonl").is_file()


def test_a_stream_article_the_writer_trained_on_is_refused_before_anything_loads(tiny_model_dir, tmp_path):
    from sdft.seal_run import plan_seal

    cfg = load_config(None, [f"model.name_or_path={tiny_model_dir}", "seal.train_passages=20",
                             f"seal.continual={stream_file(tmp_path, tiny_model_dir, '[knowledge@1]')}"])
    first_article = load_passages(cfg.seal)[0].title
    with pytest.raises(UserError, match=f"is about '{first_article}', a training passage of seed 0"):
        plan_seal(cfg, tmp_path / "run", dry_run=True)
