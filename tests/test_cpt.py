"""Continued pre-training (`method: cpt`) on the knowledge fixture's articles with the tiny random model: the
blocks cover the raw corpus exactly, training lowers the loss on it and moves every weight, train.epochs
counts blocks, and a task without a corpus is refused."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from sdft.config import ModelConfig, TaskSourceConfig, load_config
from sdft.errors import UserError
from sdft.methods.cpt import corpus_blocks, train_cpt
from sdft.methods.stage import Stage
from sdft.models import load_model
from sdft.tasks.paper.knowledge import load_knowledge
from sdft.tasks.spec import Row, TaskSpec
from sdft.train_run import train_stage, with_epochs_as_steps

FIXTURES = Path(__file__).parent / "fixtures" / "paper"
BLOCK = 64
BASE = ["train.method=cpt", "train.batch_size=4", "train.warmup_steps=0", "train.learning_rate=0.01",
        "train.lr_schedule=constant", "train.log_every=1", "train.checkpoint_every=100",
        f"train.max_completion_tokens={BLOCK}", "model.device=cpu"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def knowledge():
    return load_knowledge(TaskSourceConfig(source="local", path=str(FIXTURES / "knowledge")))


def stage_for(tmp_path, model_dir, task, *overrides) -> Stage:
    cfg = load_config(None, [*BASE, *overrides])
    return Stage(cfg, load_model(ModelConfig(name_or_path=str(model_dir), device="cpu")), task, tmp_path / "run")


def test_blocks_cover_every_document_and_never_span_two(tiny_model_dir, knowledge):
    tokenizer = load_model(ModelConfig(name_or_path=str(tiny_model_dir), device="cpu")).tokenizer
    blocks = corpus_blocks(knowledge, tokenizer, BLOCK)
    documents = [tokenizer(d, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
                 for d in knowledge.extra["corpus"]]
    assert len(blocks) == sum(math.ceil(len(d) / BLOCK) for d in documents)
    assert all(len(b) <= BLOCK for b in blocks)
    assert [t for b in blocks for t in b] == [t for d in documents for t in d]  # nothing dropped, nothing added
    assert tokenizer.decode(documents[0][:-1]).startswith("2025 Marlow Bay earthquake\n\nThe 2025 Marlow Bay")


def corpus_loss(stage) -> float:
    blocks = corpus_blocks(stage.task, stage.loaded.tokenizer, BLOCK)
    model, total, count = stage.loaded.model, 0.0, 0
    with torch.no_grad():
        for ids in blocks:
            out = model(input_ids=torch.tensor([ids]), labels=torch.tensor([ids]))
            total, count = total + out.loss.item() * (len(ids) - 1), count + len(ids) - 1
    return total / count


def test_cpt_lowers_the_corpus_loss_and_moves_every_weight(tmp_path, tiny_model_dir, knowledge):
    stage = stage_for(tmp_path, tiny_model_dir, knowledge, "train.steps=12")
    before_loss = corpus_loss(stage)
    before = {n: p.detach().clone() for n, p in stage.loaded.model.named_parameters()}
    result = train_cpt(stage)
    assert result.steps == 12
    assert corpus_loss(stage) < 0.7 * before_loss
    unchanged = [n for n, p in stage.loaded.model.named_parameters() if torch.equal(before[n], p.detach())]
    assert not unchanged
    assert (stage.run_dir / "metrics.jsonl").is_file() and (stage.model_dir / "config.json").is_file()


def test_epochs_count_corpus_blocks(tmp_path, tiny_model_dir, knowledge):
    stage = stage_for(tmp_path, tiny_model_dir, knowledge, "train.epochs=1")
    blocks = len(corpus_blocks(knowledge, stage.loaded.tokenizer, BLOCK))
    stage = dataclasses.replace(stage, cfg=with_epochs_as_steps(stage.cfg, stage.task, stage.loaded.tokenizer))
    result = train_stage(stage)
    assert result.steps == math.ceil(blocks / 4)


def test_a_task_without_a_corpus_is_refused(tmp_path, tiny_model_dir):
    toy = TaskSpec(name="toy", version="1", source="test", scorer="exact", splits={"train": [Row("q", "d", "a")]})
    with pytest.raises(UserError, match="task 'toy' has none"):
        train_cpt(stage_for(tmp_path, tiny_model_dir, toy, "train.steps=1"))
