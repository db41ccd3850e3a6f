"""The Co-LLM predictor: a base model with its deferral head and an expert answer together (generation/deferral.py),
through the evaluation service like every predictor (cache, per-row resume, results.json). Each record adds the
tokens the expert wrote (`deferred`), the answer's length (`tokens`) and its share of its batch's seconds."""

from __future__ import annotations

import time

from sdft.generation.base import generations, left_pad
from sdft.generation.deferral import defer_decode
from sdft.inference.predictors import Answers
from sdft.prompts import render_prompt


class CollmPredictor:
    """`loaded.model` is the DeferralModel (base + head; the service fingerprints both); `expert` a LoadedModel."""

    name = "collm"

    def __init__(self, expert, threshold: float, strategy: str, expert_fingerprint: str):
        self.expert, self.threshold, self.strategy = expert, threshold, strategy
        self._settings = {"threshold": threshold, "strategy": strategy, "expert": expert_fingerprint}

    def settings(self) -> dict:
        return self._settings

    def prepare(self, tasks) -> None:
        pass

    def answer(self, loaded, task, rows, todo, ev, seed) -> Answers:
        tokenizer, deferral = loaded.tokenizer, loaded.model
        prompts = [render_prompt(tokenizer, rows[i].prompt, task.system_prompt) for i in todo]
        ids = tokenizer(prompts, add_special_tokens=False)["input_ids"] if prompts else []
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        for start in range(0, len(order), ev.batch_size):
            batch = order[start : start + ev.batch_size]
            began = time.perf_counter()
            prompt_ids, prompt_mask = left_pad([ids[i] for i in batch], tokenizer.pad_token_id, loaded.device)
            out = defer_decode(deferral.base, deferral.deferral_logit, self.expert.model, prompt_ids, prompt_mask,
                               self.threshold, self.strategy, ev.max_new_tokens, tokenizer.eos_token_id,
                               tokenizer.pad_token_id)
            seconds = (time.perf_counter() - began) / len(batch)
            done = generations(out.rollout, tokenizer, ev.max_new_tokens)
            extra = [{"deferred": int(d), "tokens": int(n), "seconds": seconds}
                     for d, n in zip(out.deferred.sum(dim=1).tolist(), out.rollout.mask.sum(dim=1).tolist())]
            yield [todo[i] for i in batch], [[g] for g in done], extra
