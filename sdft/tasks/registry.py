"""The task registry: a plain dict from name to a loader. Built-in tasks come from the embedded world, or,
for the tasks the config's `task_sources` points elsewhere, from the paper's data (sdft/tasks/paper/);
custom tasks come from YAML files named in the config's `custom_tasks`."""

from __future__ import annotations

from functools import partial
from typing import Callable, Iterable

from sdft.errors import UserError
from sdft.suggest import did_you_mean
from sdft.tasks.articles import ARTICLE_SEPARATOR, article_view
from sdft.tasks.custom import load_custom_task, read_custom_task_file
from sdft.tasks.spec import TaskSpec

TaskLoader = Callable[[], TaskSpec]


def builtin_tasks() -> dict[str, TaskLoader]:
    from sdft.tasks import embedded, knowledge_world

    names = (*embedded.TASKS, *embedded.PRIOR_SKILLS)
    registry = {name: partial(embedded.load_embedded_task, name) for name in names}
    registry.update(knowledge_world.loaders())
    return registry


def task_registry(custom_files: Iterable[str] = (), sources: dict | None = None) -> dict[str, TaskLoader]:
    """Every task name this config can use: `sources` (the config's task_sources) replaces embedded tasks
    by the paper's data. A custom task may not shadow a built-in one."""
    from sdft.tasks.paper import paper_loaders

    registry = builtin_tasks()
    registry.update(paper_loaders(sources or {}))
    for path in custom_files:
        name = read_custom_task_file(path).name
        if name in registry:
            raise UserError(f"{path}: task name '{name}' is already taken; rename the custom task")
        registry[name] = partial(load_custom_task, path)
    return registry


def loader_of(name: str, registry: dict[str, TaskLoader]) -> TaskLoader:
    """The loader of `name`: a registered task, or `<task>@N`, the N-th article of a knowledge task
    (sdft/tasks/articles.py article_view; whether the task has that article is checked when it loads)."""
    if name in registry:
        return registry[name]
    base, separator, index = name.rpartition(ARTICLE_SEPARATOR)
    if separator and base in registry and index.isdigit():
        return partial(article_view, registry[base], int(index))
    hint = f" (<knowledge task>{ARTICLE_SEPARATOR}N names its N-th article)" if separator else ""
    raise UserError(f"unknown task '{name}'{did_you_mean(name, registry)}; `sdft tasks` lists the known ones{hint}")


def require_known(names: Iterable[str], registry: dict[str, TaskLoader]) -> None:
    """Fail on the first unknown name, with a did-you-mean, before anything is loaded."""
    for name in names:
        loader_of(name, registry)


def load_tasks(names: Iterable[str], registry: dict[str, TaskLoader]) -> list[TaskSpec]:
    """Load several tasks, checking every name before loading any."""
    names = list(names)
    require_known(names, registry)
    return [loader_of(name, registry)() for name in names]
