"""Predictors: how a model answers a task's rows. The evaluation service (sdft/eval_service.py) runs any of them
through sdft/evaluate.py, so the cache, per-row resume, scoring and results.json come with every predictor.

- fewshot_prompt.py: the few-shot prompt layouts and token examples with the loss on demonstration outputs
- predictors.py:     the registry (name -> predictor): student / teacher prompts, zero_shot, icl, ttt, ttt_vote
- ttt_data.py:       test-time training's data: leave-out tasks x demo orders x augmentations; views; the vote
- ttt.py:            the TTT predictor: reset the adapter, fit on the demos, answer under views, vote
"""
