"""`train.engine: trl`: TRL's experimental SDFTTrainer (trl 1.16) as a reference engine, with our config mapped
onto it so numbers and speed can be compared with the native trainer (sdft/methods/sdft.py) at the same settings.
Everything TRL-experimental lives in this module; TRL is imported lazily.

What runs where: TRL samples the rollouts, builds the teacher prompt, computes the loss and runs the Trainer loop.
Ours: the rows and their length checks (rollout.prepare_rows: error or skip, never truncate), the optimizer and
schedule (harness.build_optimizer / build_scheduler, passed in), and the teacher's weights (methods/teacher.py), because
TRL's teacher handling has the bugs listed below.

| our key                               | TRL (SDFTConfig field, or mechanism)                  | note |
|---------------------------------------|-------------------------------------------------------|------|
| loss.divergence forward_kl            | distillation_mode full_logits, distillation_alpha 0.0 | exact: compute_divergence special-cases 0 as KL(T||S) |
| loss.divergence reverse_kl            | distillation_alpha 1.0                                | exact: KL(S||T) |
| loss.divergence jsd, loss.alpha       | distillation_alpha = alpha                            | exact: same mixture M = (1-a)S + aT, same weights |
| loss.divergence sampled_token         | distillation_mode sampled_token, alpha 1.0            | gradient exact; TRL logs sg(r)*log pS(y), not r |
| loss.top_k, topk_source student       | topk_logits, distillation_topk, add_tail True         | approx: TRL's tail log(-expm1(log mass)) cancels when top-k holds ~all mass |
| loss.top_k, topk_source teacher       | -                                                     | unsupported (refused by the config): TRL takes the student's top-k |
| loss.skip_first_tokens                | num_loss_tokens_to_skip                               | exact (completions are right-padded) |
| loss.chunk_size                       | -                                                     | ignored: TRL materialises [B, T, V] log-softmax tensors |
| (reduction)                           | mean over a sequence's loss tokens, then sequences    | approx: TRL counts a sequence with no loss token as 0 in the mean |
| (importance weights)                  | distillation_is_clip None                             | exact: the sampler is the trained weights in both engines |
| teacher frozen / ema / live, ema_rate | teacher_model_kind base / ema / live, update_rate     | exact: realised by methods/teacher.py (see traps) |
| rollout.temperature                   | temperature                                           | sampling exact; TRL also divides both logits by it before the loss (a warning when != 1) |
| rollout.top_p                         | top_p; top_k 0, min_p None, repetition_penalty 1      | exact |
| (1 rollout per prompt)                | num_generations 1, steps_per_generation = GA, num_iterations 1 | exact: a step's batch is sampled from the same weights |
| max_completion_tokens                 | max_completion_length                                 | exact; TRL also stops at every eos id in the model's generation_config |
| max_prompt_tokens, max_teacher_prompt_tokens, overlong_prompts | checked here; max_prompt_length None | exact: TRL would left-truncate; it never sees an overlong prompt |
| capped_completions_in_loss false      | -                                                     | unsupported (refused by the config): TRL always keeps them |
| steps                                 | max_steps                                             | exact |
| batch_size, gradient_accumulation     | per_device_train_batch_size = batch / (GA x processes), GA | exact per step; TRL's row order differs and drops an epoch's last incomplete batch |
| learning_rate, lr_schedule, warmup_steps, weight_decay | our AdamW + LambdaLR passed as `optimizers`; args mirror them | exact (transformers' own warm-up would start at lr 0 and skip decay on biases) |
| max_grad_norm                         | max_grad_norm                                         | exact |
| seed                                  | seed                                                  | same seed, different consumers: not the same samples |
| model.dtype bfloat16                  | bf16 True (autocast)                                  | approx: TRL's divergence runs in the logits' dtype, ours in fp32 |
| checkpoint_every, keep_checkpoints    | save_steps, save_total_limit; also the last step      | checkpoints/checkpoint-<N>/ + sdft_teacher.safetensors |
| log_every, sample_count               | logging_steps 1; samples.jsonl every log_every steps  | metrics.jsonl every step through RunLog |
| report_to                             | report_to none; MetricsLog forwards to train.report_to | |
| lora.*                                | the model arrives wrapped; no peft_config             | |
| (dropout)                             | disable_dropout False                                 | approx: TRL samples in train mode, so dropout > 0 is on while sampling |
| (gradient checkpointing)              | activation_checkpointing False                        | TRL defaults it on |
| (vLLM)                                | use_vllm False                                        | |

The teacher prompt: prompts go to TRL as chat messages (the task's system prompt, then the user turn) with the
demonstration as `privileged_context`; TRL keeps the system messages, replaces the user turn with
`teacher_prompt_template` (TEACHER_TEMPLATE with {demonstration} renamed) and applies the chat template, so the teacher
sees exactly sdft.prompts.teacher_prompt(prompt, demonstration) (tests/test_trl_engine.py compares the token ids).
TRL's forward passes no position_ids: left padding shifts positions, harmless for rotary (relative) embeddings only.

Known traps of TRL 1.16's SDFT (METHOD.md) and what this adapter does about them:
- defaults differ from the paper (top-100 JSD at alpha 0.5, frozen teacher, no skipped tokens, 8 generations):
  neutralised, every one is set from our config.
- a non-LoRA teacher is re-read from disk (get_config_model_id): neutralised, the teacher is built from the in-memory
  model at stage start (_SDFTAdapter._setup_teacher_model).
- the EMA teacher is not checkpointed (resume resets it; with LoRA its extra "teacher" adapter breaks resume):
  neutralised, its state is saved in every checkpoint and restored on resume.
- the EMA runs in the student's dtype (SyncRefModelCallback mul_/add_ on the teacher's parameters: in bf16 a rate-0.01
  update rounds away), and with LoRA TRL averages A and B separately starting from zero: neutralised, our fp32 EMA
  (of the weights; with LoRA of A and B from their stage-start values, or of the update scale * B @ A: train.lora_ema).
- prompts left-truncated to 512 tokens: neutralised (max_prompt_length None, our caps checked first).
- max_completion_length None means 20 tokens: neutralised, always an int.
- it logs little: partly; we add completion_tokens, capped_share, step_seconds, tokens_per_second and samples, but not
  the native engine's KL / entropy diagnostics.
- found here, not in METHOD.md: TRL's RepeatSampler seeds its generator once, and transformers skips finished epochs
  on resume without iterating them, so a run resumed at an epoch boundary replays epoch 0's order: neutralised
  (EpochSeeded); with it, resume equals an uninterrupted run bit for bit (tests/test_trl_engine.py).
- the API is experimental: pinned by pyproject (trl<1.17) and checked at import.
TRL's Trainer would send a usage ping to the Hugging Face hub: the sdft CLI sets HF_HUB_DISABLE_TELEMETRY=1 (cli.py).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import nullcontext
from functools import cache
from pathlib import Path
from typing import Any

from transformers import PrinterCallback, TrainerCallback

from sdft.config import Config
from sdft.console import err_console, progress_bar
from sdft.errors import UserError
from sdft.methods.harness import (MetricsLog, StageResult, build_optimizer, build_scheduler, per_device_batch_size,
                                  require_same_device, save_model)
from sdft.methods.hf_trainer import checkpoint_step, resume_checkpoint
from sdft.methods.rollout import PreparedRow, prepare_rows
from sdft.methods.stage import Stage
from sdft.methods.teacher import Teacher, build_teacher
from sdft.methods.trl_callbacks import EpochSeeded, RunLog, TeacherCallback, load_teacher
from sdft.prompts import TEACHER_TEMPLATE, chat_messages

TEACHER_PROMPT_TEMPLATE = TEACHER_TEMPLATE.replace("{demonstration}", "{privileged_context}")
TEACHER_KINDS = {"frozen": "base", "ema": "ema", "live": "live"}  # ours -> TRL's teacher_model_kind


def train_trl_sdft(stage: Stage, callbacks: Sequence[TrainerCallback] = ()) -> StageResult:
    """Train `stage` with TRL's SDFTTrainer; `callbacks` are extra transformers callbacks."""
    cfg = stage.cfg.train
    resume_from = resume_checkpoint(stage)
    if cfg.rollout.temperature != 1.0:
        err_console.print(f"[yellow]engine trl: TRL divides the student's and teacher's logits by "
                          f"train.rollout.temperature={cfg.rollout.temperature} before the loss; the native engine does not[/]")
    trainer = build_trainer(stage, callbacks)
    run = next(c for c in trainer.callback_handler.callbacks if isinstance(c, RunLog))
    main = trainer.accelerator.is_main_process
    run.log = MetricsLog(stage.run_dir, checkpoint_step(resume_from) if resume_from else None, cfg.report_to) if main else None
    if resume_from is not None:
        load_teacher(trainer.sdft_teacher, resume_from)
    with (progress_bar() if main else nullcontext()) as progress:
        run.progress = progress
        try:
            trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        finally:
            stage.loaded.model.eval()
    if main:
        save_model(stage.loaded.model, stage.loaded.tokenizer, stage.model_dir)
    trainer.accelerator.wait_for_everyone()
    return StageResult(steps=trainer.state.global_step, metrics=run.last, model_dir=stage.model_dir)


def build_trainer(stage: Stage, callbacks: Sequence[TrainerCallback] = ()):
    """The SDFTTrainer for `stage`: rows checked against our caps, our teacher, optimizer and schedule."""
    from datasets import Dataset

    cfg, loaded = stage.cfg, stage.loaded
    rows = prepare_rows(stage.train_rows(), stage.task, loaded.tokenizer, cfg.train)
    if len(rows) < cfg.train.batch_size:
        raise UserError(f"engine trl needs at least train.batch_size={cfg.train.batch_size} training rows, got {len(rows)}: "
                        "TRL's sampler drops an incomplete batch")
    vocab = loaded.model.config.get_text_config().vocab_size
    if cfg.train.loss.top_k is not None and cfg.train.loss.top_k > vocab:
        raise UserError(f"train.loss.top_k={cfg.train.loss.top_k} exceeds the vocabulary size {vocab}")
    args = trl_config(cfg, stage.checkpoint_dir, use_cpu=loaded.device.type == "cpu", processes=_processes())
    require_same_device(loaded.device, args.device)
    model = loaded.model.train()
    teacher = build_teacher(model, cfg.train.teacher, cfg.train.ema_rate, lora=cfg.lora.enabled,
                            lora_ema=cfg.train.lora_ema)  # stage start, in memory
    optimizer = build_optimizer(model, cfg.train)
    trainer = _trainer_class()(
        model=model, args=args, train_dataset=Dataset.from_list(trl_dataset(rows, stage.task.system_prompt)),
        processing_class=loaded.tokenizer, optimizers=(optimizer, build_scheduler(optimizer, cfg.train)),
        callbacks=[*callbacks, TeacherCallback(teacher),
                   RunLog(cfg.train.batch_size, cfg.train.log_every, cfg.train.sample_count, stage.checkpoint_dir)],
        sdft_teacher=teacher,
    )
    trainer.remove_callback(PrinterCallback)  # it prints every log dict to stdout; RunLog logs instead
    return trainer


def trl_dataset(rows: list[PreparedRow], system_prompt: str | None) -> list[dict[str, Any]]:
    """TRL's conversational format: the student's chat messages, and the demonstration as privileged context."""
    return [{"prompt": chat_messages(r.row.prompt, system_prompt), "privileged_context": r.row.demonstration} for r in rows]


def trl_config_kwargs(cfg: Config, output_dir: str | Path, *, use_cpu: bool, processes: int = 1) -> dict[str, Any]:
    """Config -> SDFTConfig keyword arguments (see the module docstring's table). Pure: no model, no data, no TRL.
    What TRL cannot express was refused when the config was validated (sdft/config/root.py)."""
    train, loss = cfg.train, cfg.train.loss
    per_device = per_device_batch_size(train, processes)
    mode = {"sampled_token": "sampled_token"}.get(loss.divergence, "full_logits" if loss.top_k is None else "topk_logits")
    alpha = {"forward_kl": 0.0, "reverse_kl": 1.0, "sampled_token": 1.0}.get(loss.divergence, loss.alpha)
    return dict(
        output_dir=str(output_dir),
        # the loss
        distillation_mode=mode, distillation_alpha=alpha, distillation_topk=loss.top_k, distillation_add_tail=True,
        distillation_is_clip=None, num_loss_tokens_to_skip=loss.skip_first_tokens,
        # the teacher: these fields are for the record; _SDFTAdapter builds it with methods/teacher.py
        teacher_model_kind=TEACHER_KINDS[train.teacher], teacher_update_rate=train.ema_rate, teacher_sync_steps=1,
        generate_from_teacher=False, teacher_prompt_template=TEACHER_PROMPT_TEMPLATE,
        # rollouts: one per prompt, a step's whole batch sampled at its start (steps_per_generation = GA)
        num_generations=1, steps_per_generation=train.gradient_accumulation, num_iterations=1,
        temperature=train.rollout.temperature, top_p=train.rollout.top_p, top_k=0, min_p=None, repetition_penalty=1.0,
        max_completion_length=train.max_completion_tokens,  # TRL's None would mean 20 tokens
        max_prompt_length=None,  # no truncation: prepare_rows checked every prompt against our caps
        use_vllm=False, shuffle_dataset=True, disable_dropout=False, remove_unused_columns=False,
        # optimisation: our optimizer and schedule are passed in; these mirror them for the record
        max_steps=train.steps, per_device_train_batch_size=per_device, gradient_accumulation_steps=train.gradient_accumulation,
        learning_rate=train.learning_rate, lr_scheduler_type="cosine" if train.lr_schedule == "cosine" else "constant_with_warmup",
        warmup_steps=train.warmup_steps, weight_decay=train.weight_decay, max_grad_norm=train.max_grad_norm,
        seed=cfg.seed, bf16=cfg.model.dtype == "bfloat16", fp16=False,  # TRL defaults bf16 to True: never leave it unset
        activation_checkpointing=False, use_cpu=use_cpu,
        # the run folder
        logging_steps=1, logging_nan_inf_filter=False, save_strategy="steps", save_steps=train.checkpoint_every,
        save_total_limit=train.keep_checkpoints, save_only_model=False, eval_strategy="no", report_to="none",
        disable_tqdm=True, dataloader_num_workers=0, dataloader_pin_memory=not use_cpu,
    )


def trl_config(cfg: Config, output_dir: str | Path, *, use_cpu: bool, processes: int = 1):
    """The SDFTConfig for `cfg`; TRL's own validation errors become a UserError."""
    sdft_config = _trl().SDFTConfig
    try:
        return sdft_config(**trl_config_kwargs(cfg, output_dir, use_cpu=use_cpu, processes=processes))
    except (ValueError, TypeError) as err:
        raise UserError(f"engine trl: TRL's SDFTConfig rejected the settings: {err}") from err


@cache
def _trl():
    """trl.experimental.sdft, imported once, its experimental-API warning silenced."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    import trl.experimental.sdft as sdft_module

    for name in ("_setup_teacher_model", "_get_teacher_context_for_self_distillation", "_get_train_sampler"):
        if not hasattr(sdft_module.SDFTTrainer, name):
            import trl

            raise UserError(f"engine trl supports trl 1.16; the installed trl {trl.__version__} changed SDFTTrainer ({name})")
    return sdft_module


@cache
def _trainer_class():
    """SDFTTrainer with the teacher taken from methods/teacher.py (built from the in-memory model at stage start)."""

    class _SDFTAdapter(_trl().SDFTTrainer):
        def __init__(self, *args, sdft_teacher: Teacher, **kwargs):
            self.sdft_teacher = sdft_teacher  # read by _setup_teacher_model, which super().__init__ calls
            super().__init__(*args, **kwargs)

        def _setup_teacher_model(self) -> None:
            self.teacher_model = self.sdft_teacher.module()

        def _get_teacher_context_for_self_distillation(self):
            return self.sdft_teacher.weights()

        def _get_train_sampler(self, dataset=None):
            return EpochSeeded(super()._get_train_sampler(dataset))

    return _SDFTAdapter


def _processes() -> int:
    from accelerate import PartialState

    state = PartialState()
    if state.distributed_type.value in ("DEEPSPEED", "FSDP"):
        raise UserError("engine trl does not support DeepSpeed or FSDP: its teacher is an in-memory copy (use DDP or engine native)")
    return state.num_processes
