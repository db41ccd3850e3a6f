"""Tasks: what a model is asked, what the expert showed, and how an answer is scored."""

from sdft.tasks.spec import Row, TaskSpec

__all__ = ["Row", "TaskSpec"]
