"""Continued pre-training (`train.method: cpt`): next-token loss on every token of a task's raw corpus,
the paper's weakest knowledge-injection baseline (METHOD.md: 9/37/7 against SDFT's 89/100/98).

The corpus is the task's `extra["corpus"]` (the knowledge task's articles). Each document is tokenised on
its own (no chat template: this is raw text), ends with the eos token, and is cut into blocks of
train.max_completion_tokens tokens; no block spans two documents and nothing is dropped. The blocks are
trained by the same TRL SFTTrainer loop as SFT (sdft/methods/sft.py: logging, checkpoints, resume, Ctrl-C),
with labels on every token. train.batch_size counts blocks per optimizer step.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

from transformers import TrainerCallback

from sdft.console import err_console, progress_bar
from sdft.errors import UserError
from sdft.methods.harness import MetricsLog, StageResult, graceful_interrupt, save_model
from sdft.methods.hf_trainer import CHECKPOINT_PREFIX, checkpoint_step, latest_checkpoint
from sdft.methods.stage import Stage
from sdft.models import process_state

# One loop for SFT and CPT: these are sft.py's (it owns the TRL session); only the examples differ here.
from sdft.methods.sft import (RunCallback, _no_transformers_bars, _save_on_interrupt, _training_session,
                              build_trainer, train_from)


def corpus_blocks(task, tokenizer, block: int) -> list[list[int]]:
    """Token blocks of at most `block` tokens covering every document of the task's corpus."""
    corpus = task.extra.get("corpus")
    if not corpus:
        raise UserError(f"train.method 'cpt' trains on a task's raw corpus and task '{task.name}' has none "
                        "(the knowledge task has one: its articles)")
    if tokenizer.eos_token_id is None:
        raise UserError("the tokenizer has no eos token; cpt ends every document with it")
    blocks = []
    for ids in tokenizer(list(corpus), add_special_tokens=False)["input_ids"]:
        ids = [*ids, tokenizer.eos_token_id]
        blocks.extend(ids[start : start + block] for start in range(0, len(ids), block))
    return blocks


def train_cpt(stage: Stage, callbacks: Sequence[TrainerCallback] = ()) -> StageResult:
    """Train `stage` on its task's corpus; `callbacks` are extra transformers callbacks."""
    cfg = stage.cfg.train
    resume_from = latest_checkpoint(stage.checkpoint_dir) if stage.resume else None
    if stage.resume and resume_from is None:
        raise UserError(f"nothing to resume in {stage.checkpoint_dir}: it holds no {CHECKPOINT_PREFIX}<step> folder")
    blocks = corpus_blocks(stage.task, stage.loaded.tokenizer, cfg.max_completion_tokens)
    examples = [{"input_ids": ids, "labels": list(ids)} for ids in blocks]
    if resume_from:
        err_console.print(f"resuming from {resume_from}")
    main = process_state(stage.cfg.model).is_main_process
    log = MetricsLog(stage.run_dir, checkpoint_step(resume_from) if resume_from else None, cfg.report_to) if main else None
    with _no_transformers_bars():
        with _training_session(stage), (progress_bar() if main else nullcontext()) as progress, \
                graceful_interrupt() as stop:
            run = RunCallback(log, progress, f"cpt on {stage.task.name}", stage.checkpoint_dir,
                              extra={"corpus_blocks": len(blocks)}, stop_requested=stop)
            trainer = build_trainer(stage, examples, [*callbacks, run])
            try:
                train_from(trainer, resume_from)
            except KeyboardInterrupt:
                _save_on_interrupt(trainer)
                raise
        if trainer.state.global_step < trainer.state.max_steps:  # a first Ctrl-C: the step finished and was saved
            raise KeyboardInterrupt(f"stopped at step {trainer.state.global_step}; resume with --resume")
        if main:
            save_model(stage.loaded.model, stage.loaded.tokenizer, stage.model_dir)
        trainer.accelerator.wait_for_everyone()
    return StageResult(steps=trainer.state.global_step, metrics=run.last, model_dir=stage.model_dir)
