"""`sdft collm`, the evaluation half: choose the threshold on the validation rows (decode each candidate through the
evaluation service, keep the best), evaluate the composed system on every task and the general suite, and time the
composed decoding against the base alone."""

from __future__ import annotations

import dataclasses
import time

import torch

from sdft.collm_steps import candidates, validation_tokens
from sdft.config import Config, SamplingConfig
from sdft.evaluate import TaskEval
from sdft.inference.collm import CollmPredictor


def evaluate_systems(cfg: Config, plan, service, trained, systems: dict) -> dict:
    """{"systems": {base, expert, collm}, "sweep": [...], "speed": {...}}."""
    c = cfg.collm
    sweep = [] if c.threshold is not None else threshold_sweep(cfg, service, trained)
    threshold = c.threshold if c.threshold is not None else best(sweep)["threshold"]
    predictor = CollmPredictor(trained.expert, threshold, c.strategy, trained.expert_fingerprint)
    evals = service.evaluate(trained.deferral, [(t, predictor) for t in [*plan.tasks, *plan.general]])
    tasks, general = evals[: len(plan.tasks)], evals[len(plan.tasks) :]
    collm = {"scores": {e.task: e.summary() for e in tasks},
             "general": service.general_scores(trained.deferral, general) if general else None,
             "threshold": threshold, "strategy": c.strategy, **deferral_stats(tasks, general)}
    speed = timing(cfg, plan, trained, threshold)
    collm["tokens_per_second"] = {"collm": speed["collm_tokens_per_second"], "base": speed["base_tokens_per_second"]}
    return {"systems": {**systems, "collm": collm}, "threshold": threshold,
            "threshold_source": "config" if c.threshold is not None else best(sweep)["source"],
            "sweep": sweep, "speed": speed}


def share(evals: list[TaskEval]) -> float:
    """The fraction of the generated tokens (of all these evaluations together) that the expert wrote."""
    tokens = sum(s["tokens"] for e in evals for s in e.samples)
    return sum(s["deferred"] for e in evals for s in e.samples) / tokens if tokens else 0.0


def deferral_stats(tasks: list[TaskEval], general: list[TaskEval]) -> dict:
    """The share of generated tokens the expert wrote, per task and over the whole general suite, and the expert's
    calls per answer (the decoder calls it once per deferred token, catching up on what the base wrote since)."""
    def calls(evals):
        samples = [s for e in evals for s in e.samples]
        return sum(s["deferred"] for s in samples) / len(samples) if samples else 0.0

    rate = {e.task: share([e]) for e in tasks}
    per_answer = {e.task: calls([e]) for e in tasks}
    if general:
        rate["general"], per_answer["general"] = share(general), calls(general)
    return {"deferral_rate": rate, "expert_calls_per_answer": per_answer}


def threshold_sweep(cfg: Config, service, trained) -> list[dict]:
    """Every candidate threshold decoded on the validation rows: accuracy per task, deferral rates, and the
    selection score (the mean of the tasks' mean accuracy and the general suite's mean: a threshold must keep both)."""
    probs, labels = validation_tokens(trained.deferral.model, [s for s in trained.sets if s.validation],
                                      trained.deferral.tokenizer.pad_token_id, cfg.eval.batch_size)
    views = [dataclasses.replace(s.task, splits={cfg.eval.split: s.validation_rows},
                                 version=f"{s.task.version}+collm-validation-{cfg.collm.split}-{len(s.validation_rows)}")
             for s in trained.sets if s.validation_rows]
    general = {s.task.name for s in trained.sets if s.general}
    rows, seen = [], set()
    for source, eta in candidates(probs, labels, cfg.collm.quantiles):
        if eta in seen:
            continue
        seen.add(eta)
        predictor = CollmPredictor(trained.expert, eta, cfg.collm.strategy, trained.expert_fingerprint)
        evals = service.evaluate(trained.deferral, [(v, predictor) for v in views])
        rows.append(_sweep_row(source, eta, evals, general))
    return rows


def _sweep_row(source: str, eta: float, evals: list[TaskEval], general: set[str]) -> dict:
    acc = {e.task: e.accuracy for e in evals}
    tasks = [a for name, a in acc.items() if name not in general]
    gen = [a for name, a in acc.items() if name in general]
    parts = [sum(tasks) / len(tasks)] + ([sum(gen) / len(gen)] if gen else [])
    stats = deferral_stats([e for e in evals if e.task not in general], [e for e in evals if e.task in general])
    return {"source": source, "threshold": eta, "validation_accuracy": acc,
            "general_mean": sum(gen) / len(gen) if gen else None, "deferral_rate": stats["deferral_rate"],
            "overall_deferral_rate": share(evals),
            "score": sum(parts) / len(parts)}


def best(sweep: list[dict]) -> dict:
    """The highest selection score; among equals the highest threshold (the fewest expert calls)."""
    return max(sweep, key=lambda r: (round(r["score"], 12), r["threshold"]))


def timing(cfg: Config, plan, trained, threshold: float) -> dict:
    """Tokens per second of the composed decoding against the base alone (sdft's native KV-cache sampler), greedy,
    on the first eval.batch_size test prompts of every task and general task, timed back to back."""
    from sdft.generation import left_pad
    from sdft.generation.deferral import defer_decode
    from sdft.generation.native import NativeBackend
    from sdft.prompts import render_prompt

    ev, loaded = cfg.eval, trained.deferral
    tokenizer, model = loaded.tokenizer, loaded.model
    prompts = [render_prompt(tokenizer, r.prompt, t.system_prompt)
               for t in [*plan.tasks, *plan.general] for r in t.rows(ev.split, ev.batch_size)]
    batches = [tokenizer(prompts[i : i + ev.batch_size], add_special_tokens=False)["input_ids"]
               for i in range(0, len(prompts), ev.batch_size)]
    spent, tokens = {"base": 0.0, "collm": 0.0}, {"base": 0, "collm": 0}
    for ids in batches:
        prompt_ids, prompt_mask = left_pad(ids, tokenizer.pad_token_id, loaded.device)
        began = time.perf_counter()
        out = NativeBackend().sample(model.base, tokenizer, prompt_ids, prompt_mask, SamplingConfig(), ev.max_new_tokens)
        spent["base"], tokens["base"] = spent["base"] + time.perf_counter() - began, tokens["base"] + int(out.mask.sum())
        began = time.perf_counter()
        out = defer_decode(model.base, model.deferral_logit, trained.expert.model, prompt_ids, prompt_mask, threshold,
                           cfg.collm.strategy, ev.max_new_tokens, tokenizer.eos_token_id, tokenizer.pad_token_id)
        spent["collm"] += time.perf_counter() - began
        tokens["collm"] += int(out.rollout.mask.sum())
    rate = {k: tokens[k] / spent[k] if spent[k] else None for k in spent}
    return {"prompts": len(prompts), "base_tokens_per_second": rate["base"], "collm_tokens_per_second": rate["collm"],
            "collm_over_base": rate["collm"] / rate["base"] if rate["base"] and rate["collm"] else None,
            "threads": torch.get_num_threads()}
