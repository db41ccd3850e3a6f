"""Few-shot tasks: rows whose `demos` hold K demonstration pairs besides the query (Row.prompt). Three sources, all
checked here, before any model loads (a bad instance is one line naming it):

- embedded: the few-shot family `clinic` (sdft/tasks/clinic.py), or a K-shot view of an embedded task: each test row
  gets K demos (prompt, expert demonstration) drawn from the train split by seed;
- jsonl: files of `{instruction?, demos: [{input, output}], query: {input, output}}`, one task per file;
- bbh: BIG-Bench Hard task files in their published schema, `{"examples": [{"input", "target"}]}`: K demos drawn
  per task by seed, every other example is a query (the paper's BBH protocol).
The instances are the split 'test'; their first `ttt.instances` are kept."""

from __future__ import annotations

import json
import random
from pathlib import Path

from sdft.config import TTTConfig
from sdft.errors import UserError
from sdft.suggest import did_you_mean
from sdft.tasks.spec import Row, TaskSpec

FEWSHOT_VERSION = "1"


def load_fewshot_tasks(ttt: TTTConfig, seed: int) -> list[TaskSpec]:
    loaders = {"embedded": _embedded, "jsonl": _jsonl_tasks, "bbh": _bbh_tasks}
    tasks = loaders[ttt.source](ttt, seed)
    if not tasks:
        raise UserError(f"ttt: no few-shot task to run (ttt.source {ttt.source}, ttt.tasks {ttt.tasks})")
    return [_first(task, ttt.instances) for task in tasks]


def _first(task: TaskSpec, n: int | None) -> TaskSpec:
    rows = task.rows("test", n)
    return TaskSpec(task.name, task.version, task.source, task.scorer, {"test": rows}, task.system_prompt, task.kind,
                    task.description, task.extra)


def _embedded(ttt: TTTConfig, seed: int) -> list[TaskSpec]:
    from sdft.tasks import clinic, embedded

    known = (clinic.NAME, *embedded.TASKS)
    for name in ttt.tasks:
        if name not in known:
            raise UserError(f"ttt.tasks: no embedded few-shot task '{name}'{did_you_mean(name, known)}; known: "
                            f"{', '.join(known)}")
    return [clinic.load_clinic(ttt.shots) if name == clinic.NAME else kshot_view(embedded.load_embedded_task(name),
                                                                                 ttt.shots, seed)
            for name in ttt.tasks]


def kshot_view(task: TaskSpec, shots: int, seed: int) -> TaskSpec:
    """Every test row with K (prompt, demonstration) pairs of the train split, drawn by seed and row index."""
    train = task.split("train")
    if len(train) < shots:
        raise UserError(f"task '{task.name}': ttt.shots={shots} is larger than its {len(train)} train rows")
    rows = []
    for index, row in enumerate(task.split("test")):
        picked = random.Random(f"{seed}-{task.name}-{index}").sample(train, shots)
        rows.append(Row(row.prompt, row.demonstration, row.answer, row.unseen, row.question,
                        demos=tuple((d.prompt, d.demonstration) for d in picked), instruction=row.instruction))
    return TaskSpec(task.name, f"{task.version}-k{shots}s{seed}", task.source, task.scorer, {"test": rows},
                    task.system_prompt, task.kind, f"{shots}-shot view: {task.description}", task.extra)


def _task_files(ttt: TTTConfig, suffix: str) -> dict[str, Path]:
    """name -> file: `path` itself (a file), or the folder's *<suffix> files, filtered by ttt.tasks."""
    path = Path(ttt.path)
    if path.is_file():
        files = {path.stem: path}
    elif path.is_dir():
        files = {f.stem: f for f in sorted(path.glob(f"*{suffix}"))}
    else:
        raise UserError(f"ttt.path '{path}' not found")
    if not files:
        raise UserError(f"ttt.path '{path}' holds no {suffix} task files")
    for name in ttt.tasks:
        if name not in files:
            raise UserError(f"ttt.tasks: no file for task '{name}' in '{path}'{did_you_mean(name, files)}")
    return {name: files[name] for name in (ttt.tasks or files)}


def _jsonl_tasks(ttt: TTTConfig, seed: int) -> list[TaskSpec]:
    from sdft.files import read_jsonl_records

    tasks = []
    for name, path in _task_files(ttt, ".jsonl").items():
        rows = [_instance(record, ttt.shots, f"{path}, instance {n}")
                for n, record in enumerate(read_jsonl_records(path), start=1)]
        tasks.append(TaskSpec(name, FEWSHOT_VERSION, str(path), "normalized", {"test": rows}))
    return tasks


def _instance(record, shots: int, where: str) -> Row:
    if not isinstance(record, dict) or not isinstance(record.get("query"), dict):
        raise UserError(f"{where}: needs an object with 'query': {{input, output}}")
    demos = record.get("demos") or []
    if not demos:
        raise UserError(f"{where}: has no demos (a few-shot instance needs 'demos': [{{input, output}}, ...])")
    if len(demos) < shots:
        raise UserError(f"{where}: ttt.shots={shots} is larger than its {len(demos)} demos")
    try:
        pairs = tuple((str(d["input"]), str(d["output"])) for d in demos[:shots])
        query, output = str(record["query"]["input"]), str(record["query"]["output"])
    except (KeyError, TypeError) as err:
        raise UserError(f"{where}: every demo and the query need 'input' and 'output' (missing {err})") from None
    return Row(query, output, output, demos=pairs, instruction=record.get("instruction"))


def _bbh_tasks(ttt: TTTConfig, seed: int) -> list[TaskSpec]:
    tasks = []
    for name, path in _task_files(ttt, ".json").items():
        examples = _bbh_examples(path)
        if len(examples) <= ttt.shots:
            raise UserError(f"{path}: ttt.shots={ttt.shots} leaves no query among its {len(examples)} examples")
        order = random.Random(f"{seed}-{name}").sample(range(len(examples)), len(examples))
        demos = tuple(examples[i] for i in order[: ttt.shots])
        rows = [Row(x, y, y, demos=demos) for x, y in (examples[i] for i in sorted(order[ttt.shots :]))]
        tasks.append(TaskSpec(name, f"{FEWSHOT_VERSION}-k{ttt.shots}s{seed}", str(path), "normalized",
                              {"test": rows}, extra={"world": "paper"}))
    return tasks


def _bbh_examples(path: Path) -> list[tuple[str, str]]:
    try:
        examples = json.loads(path.read_text())["examples"]
        return [(str(e["input"]), str(e["target"])) for e in examples]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise UserError(f"{path}: not a BIG-Bench Hard task file ({{\"examples\": [{{input, target}}]}}): {err}") from None
