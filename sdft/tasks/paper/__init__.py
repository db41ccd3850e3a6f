"""The paper's world: science, tools, medical and knowledge, read from the hub or from local files in the
published schemas (each module's docstring says which source every schema fact came from).

`task_sources` in the config picks the source per task; the same task name then means the real data. A
task left out (or `source: embedded`) keeps the embedded miniature (knowledge's is sdft/tasks/knowledge_world.py).
"""

from __future__ import annotations

from functools import partial
from typing import Callable

from sdft.config import TaskSourceConfig
from sdft.errors import UserError
from sdft.suggest import did_you_mean
from sdft.tasks.spec import TaskSpec

PAPER_TASKS = ("science", "tools", "medical", "knowledge")


def _loader(name: str) -> Callable[..., TaskSpec]:
    # Imported on use: each module pulls in only what its task needs.
    from sdft.tasks.paper import knowledge, medical, science, tools

    return {"science": science.load_science, "tools": tools.load_tools, "medical": medical.load_medical,
            "knowledge": knowledge.load_knowledge}[name]


def paper_loaders(sources: dict[str, TaskSourceConfig]) -> dict[str, Callable[[], TaskSpec]]:
    """Loaders for the tasks whose source is not the embedded miniature (knowledge also gives
    knowledge_ood, knowledge_oracle and knowledge_oracle_ood). Unknown names and impossible sources fail here, before anything is read."""
    loaders: dict[str, Callable[[], TaskSpec]] = {}
    for name, src in sources.items():
        if name not in PAPER_TASKS:
            raise UserError(f"task_sources names '{name}'{did_you_mean(name, PAPER_TASKS)}; "
                            f"it configures the built-in tasks {', '.join(PAPER_TASKS)}")
        if src.source == "embedded":
            if name == "knowledge":  # the miniature honours the teacher context
                from sdft.tasks.knowledge_world import loaders as embedded_knowledge

                loaders.update(embedded_knowledge(src.teacher_context))
            continue
        if src.source == "local" and not src.path:
            raise UserError(f"task_sources.{name}: source 'local' needs 'path' (the folder with the task's files)")
        if name == "knowledge":
            from sdft.tasks.articles import knowledge_loaders

            loaders.update(knowledge_loaders(partial(_loader(name), src)))
        else:
            loaders[name] = partial(_loader(name), src)
    return loaders
