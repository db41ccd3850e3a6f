"""The bridge to EleutherAI's lm-evaluation-harness (the paper's prior-benchmark suite), in one module.

lm_eval is an optional dependency (`pip install 'sdft[harness]'`) and an unstable upstream surface. This is the
only place that touches it; tested against lm_eval 0.4.13. The API used:
- `lm_eval.simple_evaluate(model=LM, tasks=[...], task_manager=..., num_fewshot=, limit=, batch_size=,
  apply_chat_template=False, bootstrap_iters=0, log_samples=False, random_seed=, numpy_random_seed=,
  torch_random_seed=, fewshot_random_seed=, confirm_run_unsafe_code=)` -> `{"results": {task_or_group:
  {"<metric>,<filter>": value}}}` (groups with an aggregate, e.g. mmlu, are keys of "results" too);
- `lm_eval.models.huggingface.HFLM(pretrained=<PreTrainedModel>, tokenizer=<tokenizer>, batch_size=int)`:
  wraps the model already in memory (it calls model.eval(); we restore the mode afterwards);
- `lm_eval.tasks.TaskManager(include_path=, include_defaults=)`, its `all_tasks` and `task_index[name].cfg`
  (read for `unsafe_code` before anything runs).

Real benchmarks (hellaswag, mmlu, ...) download their datasets from the Hugging Face hub. Local tasks
(`include_path`: YAML files with `dataset_path: json` and local `data_files`) need no network; when every
requested task is local, the built-in task folder is not even indexed.
"""

from __future__ import annotations

import contextlib
import os
import random

import numpy as np
import torch

from sdft.errors import UserError
from sdft.models import LoadedModel

HARNESS_DEFAULT_METRICS: dict[str, str] = {
    # "<metric>,<filter>" as lm_eval 0.4.13 reports it (from the task YAMLs).
    "hellaswag": "acc,none",
    "truthfulqa_mc1": "acc,none",
    "mmlu": "acc,none",  # group aggregate over the 57 subjects, weighted by subject size (_mmlu.yaml)
    "ifeval": "inst_level_loose_acc,none",
    "winogrande": "acc,none",
    "humaneval": "pass@1,create_test",  # code_eval's "pass@1" under the task's "create_test" filter
}


def harness_scores(loaded: LoadedModel, tasks: list[str], *, metrics: dict[str, str] | None = None,
                   num_fewshot: int | None = None, limit: int | None = None, batch_size: int = 8,
                   include_path: str | None = None, allow_code_execution: bool = False,
                   seed: int = 0) -> dict[str, float]:
    """{task: score in [0, 1]} for lm-eval `tasks` (names or groups) on the model in memory, no chat template.

    `metrics` overrides HARNESS_DEFAULT_METRICS per task; `include_path` is a folder of local task YAMLs;
    `allow_code_execution` must be True for tasks that run model-written code (humaneval). The caller's
    model mode, tokenizer padding side and global random states are left as they were."""
    lm_eval, HFLM, TaskManager = _import_lm_eval()
    wanted = {**HARNESS_DEFAULT_METRICS, **(metrics or {})}
    manager = _task_manager(TaskManager, tasks, include_path)
    unsafe = [t for t in tasks if (getattr(manager.task_index.get(t), "cfg", None) or {}).get("unsafe_code")]
    if unsafe and not allow_code_execution:
        raise UserError(f"harness task(s) {', '.join(unsafe)} execute model-written code; pass "
                        "allow_code_execution=True (config: eval.harness.allow_code_execution: true), in a sandbox")
    with _restored(loaded), _code_eval_env(allow_code_execution):
        lm = HFLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=batch_size)
        try:
            out = lm_eval.simple_evaluate(
                model=lm, tasks=list(tasks), task_manager=manager, num_fewshot=num_fewshot, limit=limit,
                apply_chat_template=False, bootstrap_iters=0, log_samples=False, random_seed=seed,
                numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
                confirm_run_unsafe_code=allow_code_execution)
        except ValueError as err:  # a group holding an unsafe task: lm_eval's own check
            if "unsafe" in str(err):
                raise UserError(f"{err} (sdft: eval.harness.allow_code_execution)") from err
            raise
    return {task: _pick(task, out["results"], wanted) for task in tasks}


def _import_lm_eval():
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as err:
        raise UserError("the general suite's harness tasks need lm-evaluation-harness: "
                        f"pip install 'sdft[harness]' ({err})") from err
    return lm_eval, HFLM, TaskManager


def _task_manager(TaskManager, tasks: list[str], include_path: str | None):
    """Only the local folder when it holds every task (fast, offline); else built-ins plus the folder."""
    if include_path is not None:
        local = TaskManager(include_path=str(include_path), include_defaults=False)
        if set(tasks) <= set(local.all_tasks):
            return local
    manager = TaskManager(include_path=str(include_path) if include_path is not None else None)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        where = f" (nor in include_path {include_path})" if include_path else ""
        raise UserError(f"unknown lm-eval task(s) {', '.join(unknown)}{where}; `lm-eval ls tasks` lists them")
    return manager


def _pick(task: str, results: dict, wanted: dict[str, str]) -> float:
    reported = {k: v for k, v in results.get(task, {}).items()
                if "," in k and "_stderr" not in k and isinstance(v, (int, float))}
    available = ", ".join(sorted(reported)) or "none"
    if task not in wanted:
        raise UserError(f"no metric chosen for harness task '{task}'; set one of: {available}")
    if wanted[task] not in reported:
        raise UserError(f"harness task '{task}' reported no metric '{wanted[task]}'; it reported: {available}")
    return float(reported[wanted[task]])


@contextlib.contextmanager
def _restored(loaded: LoadedModel):
    """Put back what HFLM / simple_evaluate change: model mode, padding side, python/numpy/torch RNGs."""
    training, padding_side = loaded.model.training, getattr(loaded.tokenizer, "padding_side", None)
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        loaded.model.train(training)
        if padding_side is not None:
            loaded.tokenizer.padding_side = padding_side
        random.setstate(states[0]), np.random.set_state(states[1]), torch.set_rng_state(states[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


@contextlib.contextmanager
def _code_eval_env(allow: bool):
    """HF evaluate's code_eval (humaneval) refuses to run unless HF_ALLOW_CODE_EVAL=1."""
    old = os.environ.get("HF_ALLOW_CODE_EVAL")
    if allow:
        os.environ["HF_ALLOW_CODE_EVAL"] = "1"
    try:
        yield
    finally:
        if allow and old is None:
            del os.environ["HF_ALLOW_CODE_EVAL"]
        elif allow:
            os.environ["HF_ALLOW_CODE_EVAL"] = old
