"""One place for terminal output: tables go to stdout, progress bars and errors to stderr.

Progress: rich's live bar on a terminal. Where stderr is not a terminal (a CI log, `nohup`, `| tee`) a live bar
draws nothing, and a sequence would print nothing for minutes; there `progress_bar` gives plain lines instead: one
when a bar starts, one every PLAIN_PROGRESS_SECONDS (what it does, e.g. "sdft on tools loss 0.0312", the step, time
spent and time left) and, for a bar that ran longer than that, one when it ends. SDFT_PROGRESS_SECONDS sets the
interval.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console()
err_console = Console(stderr=True)

PLAIN_PROGRESS_SECONDS = 30.0
"""Seconds between plain progress lines (the default of SDFT_PROGRESS_SECONDS)."""


def progress_bar(disable: bool = False) -> Progress | PlainProgress:
    """A progress display for long loops: `add_task`, `update`, `advance`, as rich's Progress."""
    if not disable and not err_console.is_terminal:
        return PlainProgress(float(os.environ.get("SDFT_PROGRESS_SECONDS", PLAIN_PROGRESS_SECONDS)))
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
        disable=disable,
    )


@dataclass
class _Bar:
    description: str
    total: float | None
    completed: float
    started: float
    start_completed: float
    printed: float


class PlainProgress:
    """Rich Progress's interface (the part sdft uses), printing a plain line at most every `interval_s`."""

    def __init__(self, interval_s: float, clock=time.monotonic, out: Console | None = None):
        self.interval_s, self.clock, self.out = interval_s, clock, out or err_console
        self._bars: list[_Bar] = []

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc) -> None:
        for bar in self._bars:  # a bar shorter than the interval said all there was to say when it started
            if self.clock() - bar.started >= self.interval_s:
                self._print(bar, done=True)
        self._bars.clear()

    def add_task(self, description: str, total: float | None = None, completed: float = 0, **_) -> int:
        now = self.clock()
        self._bars.append(_Bar(description, total, completed, now, completed, now))
        self._print(self._bars[-1])
        return len(self._bars) - 1

    def update(self, task_id: int, *, total: float | None = None, completed: float | None = None,
               advance: float | None = None, description: str | None = None, **_) -> None:
        bar = self._bars[task_id]
        bar.total = bar.total if total is None else total
        bar.completed = bar.completed if completed is None else completed
        bar.completed += advance or 0
        bar.description = bar.description if description is None else description
        if self.clock() - bar.printed >= self.interval_s:
            self._print(bar)

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def _print(self, bar: _Bar, done: bool = False) -> None:
        bar.printed = now = self.clock()
        elapsed, count = now - bar.started, f"{bar.completed:g}" + (f"/{bar.total:g}" if bar.total else "")
        line = f"{bar.description}: {count}, {_duration(elapsed)} elapsed"
        rate = (bar.completed - bar.start_completed) / elapsed if elapsed > 0 else 0
        if done:
            line += ", done" if bar.total and bar.completed >= bar.total else ", stopped"
        elif bar.total and rate > 0:
            line += f", about {_duration((bar.total - bar.completed) / rate)} left"
        self.out.print(line, highlight=False, markup=False, soft_wrap=True)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"
