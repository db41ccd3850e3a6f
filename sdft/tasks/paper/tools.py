"""Tool use: ToolAlpaca in the authors' released format (METHOD.md: the regenerated split, 97 test items).

Schema facts and where they come from:
- the authors' released files (data/tooluse_data/train_data and eval_data in idanshen/Self-Distillation;
  save_to_disk folders; features in their dataset_info.json, as carried by forks such as
  lhzuin/disentangling_self_distillation and RohanAwhad/idan-Self-Distillation):
  {"prompt", "name", "description", "nl_documentation", "instruction", "golden_answer", "golden_response"}.
  `prompt` is the whole user turn: "Your task is to answer the user's question using available tools.",
  the tool's Name / Description / Documentation (its NL documentation), the ReAct format
  (Thought / Action / Action Input "must be in JSON format"), "Begin!" and "Question: <instruction>".
- `golden_answer`: the gold calls, each {"Action": name, "Action_Input": "<JSON object as a string>"}. In
  train_data the feature is a struct of lists ({"Action": [..], "Action_Input": [..]}); in eval_data a list
  of structs ([{"Action", "Action_Input"}, ..]). Both shapes are read. The same field is ToolAlpaca's
  "Golden_Answers" (tangqiaoyu/ToolAlpaca data/eval_simulated.json).
- `golden_response` (train only): a list of strings, one per ReAct step, joined with newlines as the
  demonstration (their main.py: '\\n'.join(example['golden_response'])); e.g. " I need to ...\\nAction:
  sendHttpRequest\\nAction Input: {...}".
- the scorer (sdft.scoring.tool_call_match): the multiset of action names equals the gold one and the
  merged JSON inputs are equal (METHOD.md), so argument order does not matter.
No hub dataset is published for this split: `source: hub` needs `hub:` naming your own copy.
"""

from __future__ import annotations

import json

from sdft.config import TaskSourceConfig
from sdft.errors import UserError
from sdft.tasks.paper.common import PAPER_VERSION, describe, field_of, hub_records, local_records, text_of
from sdft.tasks.spec import Row, TaskSpec

LOCAL_FILES = {"train": "train_data", "test": "eval_data"}


def load_tools(src: TaskSourceConfig) -> TaskSpec:
    if src.source == "hub" and not src.hub:
        raise UserError("task_sources.tools: the authors' ToolAlpaca split is not on the hub; use source: local "
                        "(their data/tooluse_data folder) or name your copy with hub:")
    splits, where = {}, []
    for split, default in {**LOCAL_FILES, **src.files}.items():
        if src.source == "hub":
            records, path = hub_records(src.hub, None, split, src.revision)
        else:
            records, path = local_records("tools", src, split, default)
        splits[split] = [tool_row(r, path, n) for n, r in enumerate(records, start=1)]
        where.append(path)
    return TaskSpec(name="tools", version=PAPER_VERSION, source=describe(src, where), scorer="tool_call",
                    splits=splits, description="ToolAlpaca: one or more ReAct calls with JSON inputs",
                    extra={"world": "paper"})


def tool_row(record: dict, where: str, number: int) -> Row:
    prompt = text_of(record, "prompt", where, number)
    calls = gold_calls(field_of(record, "golden_answer", where, number, (list, dict)), where, number)
    answer = "\n".join(f"Action: {name}\nAction Input: {json.dumps(args)}" for name, args in calls)
    steps = record.get("golden_response")
    if isinstance(steps, str):
        steps = [steps]
    if steps is not None and (not isinstance(steps, list) or not all(isinstance(s, str) for s in steps)):
        raise UserError(f"{where}: row {number} golden_response must be a list of strings")
    # Eval rows carry no written response: their demonstration is the gold calls themselves.
    demonstration = "\n".join(steps) if steps else answer
    return Row(prompt=prompt, demonstration=demonstration, answer=answer)


def gold_calls(gold: list | dict, where: str, number: int) -> list[tuple[str, dict]]:
    """[(action, input object)] from either released shape of golden_answer."""
    if isinstance(gold, dict):  # struct of lists
        names, inputs = gold.get("Action") or [], gold.get("Action_Input") or []
        if len(names) != len(inputs):
            raise UserError(f"{where}: row {number} golden_answer has {len(names)} actions but {len(inputs)} inputs")
        gold = [{"Action": n, "Action_Input": i} for n, i in zip(names, inputs)]
    calls = [_call(c, where, number) for c in gold]
    if not calls:
        raise UserError(f"{where}: row {number} golden_answer holds no action")
    return calls


def _call(call: object, where: str, number: int) -> tuple[str, dict]:
    if not isinstance(call, dict) or not isinstance(call.get("Action"), str):
        raise UserError(f"{where}: row {number} golden_answer entries need 'Action' and 'Action_Input'")
    raw = call.get("Action_Input")
    try:
        args = json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError as err:
        raise UserError(f"{where}: row {number} Action_Input of {call['Action']} is not JSON ({err.msg})") from err
    if not isinstance(args, dict):
        raise UserError(f"{where}: row {number} Action_Input of {call['Action']} must be a JSON object")
    return call["Action"].strip(), args
