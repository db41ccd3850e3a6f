"""SFT + re-invoke, the paper's strongest forgetting baseline (Shenfeld et al. 2026, Table 1; METHOD.md: "after SFT,
on-policy distillation from the base model on general prompts"). The recipe comes from Lu & Thinking Machines Lab
(2025, "On-Policy Distillation"), where a model fine-tuned on new documents got its instruction following back by
on-policy distillation from its own earlier weights on general chat prompts.

What runs, in one stage:
1. SFT on the task's demonstrations: the Hugging Face session of sft.py, unchanged (its run files under <run>/sft/).
2. Re-invoke: the student samples its own answers to general prompts (by default the training splits of the general
   suite, eval.general; or train.reinvoke.tasks), the teacher is the stage-start model (frozen: a copy taken before
   SFT, or with LoRA the adapter disabled) prompted with the same plain prompt (no demonstration), and the loss is the
   SDFT distillation loss (train.loss; Lu et al. used per-token reverse KL: train.loss.divergence=reverse_kl). The
   step is SDFT's own (methods/sdft.py) with the teacher's prompt set to the student's; the native loop runs it
   (<run>/checkpoints, metrics.jsonl, model/).
Resume: a kill in SFT resumes SFT from its checkpoint; a kill in re-invoke resumes re-invoke from its checkpoint (the
teacher's stage-start copy is in it); a kill between the two redoes nothing but loading SFT's final checkpoint.
"""

from __future__ import annotations

import dataclasses

from sdft.errors import UserError
from sdft.methods.harness import StageResult
from sdft.methods.rollout import PreparedRow
from sdft.methods.loop import run_loop
from sdft.methods.sdft import build_trainer, train_step
from sdft.methods.stage import CHECKPOINT_DIR, Stage, holds_checkpoint
from sdft.methods.teacher import build_teacher
from sdft.methods.tokens import demonstration_examples, rows_within_caps, student_prompt_ids

SFT_PHASE_DIR = "sft"


def train_sft_reinvoke(stage: Stage) -> StageResult:
    sft_stage, reinvoke_stage = phases(stage)
    if not sft_stage.resume and not reinvoke_stage.resume and stage.resume:
        raise UserError(f"nothing to resume in {stage.run_dir}: neither phase (SFT in {sft_stage.checkpoint_dir}, "
                        f"re-invoke in {stage.checkpoint_dir}) has a checkpoint")
    teacher = build_teacher(stage.loaded.model, "frozen", 0.0, lora=stage.cfg.lora.enabled, lora_ema="adapter")
    sft_steps = stage.cfg.train.steps
    if not reinvoke_stage.resume:  # SFT runs (or, finished, only reloads its final checkpoint's weights)
        from sdft.methods.hf_session import train_on_examples

        examples, skipped = demonstration_examples(stage.train_rows(), stage.task, stage.loaded.tokenizer,
                                                   stage.cfg.train)
        sft_steps = train_on_examples(sft_stage, examples, f"sft_reinvoke (sft) on {stage.task.name}",
                                      {"skipped_rows": skipped}).steps
    trainer = build_trainer(reinvoke_stage, rows=lambda: general_rows(reinvoke_stage), teacher=lambda model: teacher)
    result = run_loop(trainer, train_step, f"sft_reinvoke (re-invoke) on {stage.task.name}")
    return dataclasses.replace(result, steps=sft_steps + result.steps,
                               metrics={**result.metrics, "sft_steps": sft_steps, "reinvoke_steps": result.steps})


def phases(stage: Stage) -> tuple[Stage, Stage]:
    """The SFT phase (its own folder) and the re-invoke phase (the stage's folder, with train.reinvoke's steps and
    learning rate); each resumes when the stage resumes and it has a checkpoint."""
    train, reinvoke = stage.cfg.train, stage.cfg.train.reinvoke
    sft_dir = stage.run_dir / SFT_PHASE_DIR
    sft_stage = Stage(stage.cfg, stage.loaded, stage.task, sft_dir, resume=stage.resume and holds_checkpoint(
        sft_dir / CHECKPOINT_DIR))
    phase_train = dataclasses.replace(train, steps=reinvoke.steps, epochs=None,
                                      learning_rate=reinvoke.learning_rate or train.learning_rate)
    reinvoke_stage = Stage(dataclasses.replace(stage.cfg, train=phase_train), stage.loaded, stage.task, stage.run_dir,
                           resume=stage.resume and holds_checkpoint(stage.checkpoint_dir))
    return sft_stage, reinvoke_stage


def general_rows(stage: Stage) -> list[PreparedRow]:
    """The re-invoke prompts: every row of the named tasks' split (train.reinvoke.tasks, default the general suite),
    each prompt as the student sees it and, the teacher seeing no demonstration, the same ids for the teacher."""
    from sdft.tasks.registry import load_tasks, task_registry

    cfg = stage.cfg
    names = cfg.train.reinvoke.tasks or cfg.eval.general
    if not names:
        raise UserError("train.method sft_reinvoke needs general prompts: set train.reinvoke.tasks or eval.general")
    prepared = []
    for task in load_tasks(names, task_registry(cfg.custom_tasks, cfg.task_sources)):
        rows = task.rows(cfg.train.reinvoke.split)
        ids = student_prompt_ids(stage.loaded.tokenizer, rows, task.system_prompt)
        kept = rows_within_caps(task.name, cfg.train, [{"prompt": len(i)} for i in ids])
        prepared.extend(PreparedRow(rows[i], ids[i], ids[i]) for i in kept)
    return prepared
