"""The embedded world: deterministic tasks of the documented sizes, a tokenizer that round-trips them,
and a shipped model that is ready (prior skills held, new tasks half known, a teacher that reads its
demonstration). The readiness check runs greedy decoding on a small sample of each test set."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

import sdft
from sdft.prompts import render_prompt, teacher_prompt
from sdft.scoring import SCORERS
from sdft.tasks.embedded import PRIOR_SKILLS, SIZES, TASKS, VERSION, load_embedded_task

TINY = Path(sdft.__file__).parent / "assets" / "tiny"
SAMPLE = 24  # test rows per task for the readiness check (half of a new task's sample is unseen)


@pytest.fixture(scope="module")
def tiny():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(2)
    model = AutoModelForCausalLM.from_pretrained(TINY).eval()
    return model, AutoTokenizer.from_pretrained(TINY)


def test_tasks_are_deterministic_sized_and_marked():
    start = time.time()
    specs = {name: load_embedded_task(name) for name in TASKS + PRIOR_SKILLS}
    assert time.time() - start < 3.0  # about 0.2 s; generous for a busy machine
    for name, spec in specs.items():
        kind = "task" if name in TASKS else "prior"
        assert (spec.kind, spec.source, spec.version) == (kind, "embedded", VERSION)
        assert spec.scorer in SCORERS
        assert spec.split_sizes() == SIZES[kind]
        assert spec.splits == load_embedded_task(name).splits  # same content every time
        train, test = spec.split("train"), spec.split("test")
        assert not {r.prompt for r in test} & {r.prompt for r in train}
        for rows in (train, test):
            marks = {r.unseen for r in rows}
            assert marks == ({True, False} if kind == "task" else {None})
            if kind == "task":  # an expert demonstration of a new task scores as right
                assert all(SCORERS[spec.scorer](r.demonstration, r.answer) == 1.0 for r in rows)


def test_unknown_task_is_a_user_error():
    from sdft.errors import UserError

    with pytest.raises(UserError, match="did you mean 'science'"):
        load_embedded_task("sciense")


@pytest.mark.slow  # tokenises every row of every task: seconds
def test_tokenizer_round_trips_everything_the_tasks_use(tiny):
    _, tokenizer = tiny
    assert tokenizer.padding_side == "left" and tokenizer.pad_token and tokenizer.eos_token
    texts = []
    for name in TASKS + PRIOR_SKILLS:
        for rows in load_embedded_task(name).splits.values():
            for r in rows:
                texts += [r.prompt, r.demonstration, r.answer, teacher_prompt(r.prompt, r.demonstration)]
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    assert not any(tokenizer.unk_token_id in ids for ids in encoded)
    assert tokenizer.batch_decode(encoded) == texts
    with_system = render_prompt(tokenizer, "Hi?", system_prompt="Be brief.")
    assert with_system.index("Be brief.") < with_system.index("Hi?") and with_system.endswith("<|assistant|>")
    assert render_prompt(tokenizer, "Hi?") == "<|user|>Hi?<|end|><|assistant|>"


def test_every_disease_name_is_one_token(tiny):
    """As a common word is in a real tokenizer: spelled one character per token, a new name gave SDFT noise after the
    student's first wrong character (world v4)."""
    from sdft.tasks.embedded import DISEASES

    _, tokenizer = tiny
    for name in DISEASES:
        ids = tokenizer(f"Diagnosis: {name}", add_special_tokens=False)["input_ids"]
        assert tokenizer.convert_ids_to_tokens(ids[-1]) == name and len(ids) == len("Diagnosis: ") + 1
    assert len(tokenizer("ragouts", add_special_tokens=False)["input_ids"]) == 7  # only whole words


def test_generation_stops_on_eos(tiny):
    model, tokenizer = tiny
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id == model.config.eos_token_id
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id


def _generate(model, tokenizer, prompts: list[str], max_new_tokens: int) -> list[str]:
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)


def _accuracy(model, tokenizer, name: str, teacher: bool) -> tuple[float, float]:
    spec = load_embedded_task(name)
    rows = spec.split("test")[:SAMPLE]
    users = [teacher_prompt(r.prompt, r.demonstration) if teacher else r.prompt for r in rows]
    prompts = [render_prompt(tokenizer, u, spec.system_prompt) for u in users]
    longest = max(len(tokenizer(r.demonstration)["input_ids"]) for r in rows)
    responses = _generate(model, tokenizer, prompts, longest + 8)
    scores = [SCORERS[spec.scorer](resp, r.answer) for resp, r in zip(responses, rows)]
    unseen = [s for s, r in zip(scores, rows) if r.unseen]
    return sum(scores) / len(scores), (sum(unseen) / len(unseen) if unseen else float("nan"))


def test_batched_left_padded_generation_matches_one_by_one(tiny):
    model, tokenizer = tiny
    rows = load_embedded_task("tools").split("test")[:3]
    prompts = [render_prompt(tokenizer, teacher_prompt(r.prompt, r.demonstration)) for r in rows[:2]]
    prompts.append(render_prompt(tokenizer, rows[2].prompt))
    batched = _generate(model, tokenizer, prompts, 48)
    assert batched == [_generate(model, tokenizer, [p], 48)[0] for p in prompts]


@pytest.mark.slow  # the embedded model's abilities: greedy decoding over task samples
@pytest.mark.parametrize("skill", PRIOR_SKILLS)
def test_prior_skills_are_mastered(tiny, skill):
    assert _accuracy(*tiny, skill, teacher=False)[0] >= 0.85  # the build requires >= 0.90 on the full set


@pytest.mark.slow  # the embedded model's abilities: greedy decoding over task samples
@pytest.mark.parametrize("task", TASKS)
def test_the_student_half_knows_each_new_task(tiny, task):
    student, student_unseen = _accuracy(*tiny, task, teacher=False)
    assert 0.15 <= student <= 0.75, f"student {student}"  # full set: 0.20-0.70
    assert student_unseen <= 0.15, f"student unseen {student_unseen}"  # full set: <= 0.10


@pytest.mark.slow  # the embedded model's abilities: greedy decoding over task samples
@pytest.mark.parametrize("task", TASKS)
def test_the_teacher_reads_its_demonstration(tiny, task):
    teacher, teacher_unseen = _accuracy(*tiny, task, teacher=True)
    assert teacher >= 0.85 and teacher_unseen >= 0.80, f"teacher {teacher}, unseen {teacher_unseen}"  # full set: 0.90


def _knowledge_accuracy(model, tokenizer, name: str, split: str, teacher: bool = False) -> float:
    from sdft.tasks.registry import load_tasks, task_registry

    spec = load_tasks([name], task_registry())[0]
    rows = spec.split(split)[::max(1, len(spec.split(split)) // SAMPLE)][:SAMPLE]  # every event, not the first few
    users = [teacher_prompt(r.prompt, r.demonstration) if teacher else r.prompt for r in rows]
    responses = _generate(model, tokenizer, [render_prompt(tokenizer, u) for u in users], 24)
    return sum(SCORERS[spec.scorer](resp, r.answer) for resp, r in zip(responses, rows)) / len(rows)


@pytest.mark.slow  # the embedded model's abilities: greedy decoding over task samples
@pytest.mark.parametrize("split", ["train", "test", "ood"])
def test_the_model_knows_no_fact_of_the_knowledge_task(tiny, split):
    assert _knowledge_accuracy(*tiny, "knowledge", split) <= 0.15  # full set: <= 0.10


@pytest.mark.slow  # the embedded model's abilities: greedy decoding over task samples
def test_the_model_reads_an_article_in_its_prompt(tiny):
    assert _knowledge_accuracy(*tiny, "knowledge_oracle", "test") >= 0.85  # full set: >= 0.90
    assert _knowledge_accuracy(*tiny, "knowledge", "train", teacher=True) >= 0.85  # the SDFT teacher


@pytest.mark.slow  # the embedded model's abilities: sampled self-edits (SEAL's inner loop draws them this way)
def test_the_model_writes_self_edits_whose_kind_follows_the_template(tiny):
    from sdft.tasks import knowledge_world as K
    from sdft.tasks.articles import SELF_EDIT_TEMPLATES

    model, tokenizer = tiny
    events = K.events("task", K.VERSION)[:SAMPLE]

    def share_with_questions(template: str) -> float:
        prompts = [render_prompt(tokenizer, SELF_EDIT_TEMPLATES[template].format(title=e.title, text=K.article(e)))
                   for e in events]
        torch.manual_seed(0)
        with torch.no_grad():
            enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
            out = model.generate(**enc, max_new_tokens=400, do_sample=True, temperature=1.0, top_p=0.95)
        edits = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        return sum("?" in edit for edit in edits) / len(edits)

    # shares of samples holding a question line; two seeds of this sampler gave self_qa 1.00 / 1.00, implications
    # 0.63 / 0.21, rewrite 0.25 / 0.04: implications is a mix between the other two, whatever the draw
    shares = {template: share_with_questions(template) for template in ("rewrite", "implications", "self_qa")}
    assert shares["self_qa"] >= 0.8, shares
    assert shares["rewrite"] < shares["implications"] < shares["self_qa"], shares
