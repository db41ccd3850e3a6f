"""Progress where stderr is not a terminal (CI logs, nohup, | tee): plain lines, not a live bar that draws nothing."""

from __future__ import annotations

import io

from rich.console import Console

from sdft.console import PlainProgress, progress_bar


def test_progress_outside_a_terminal_is_plain_lines(capsys, monkeypatch):
    monkeypatch.setenv("SDFT_PROGRESS_SECONDS", "0")
    with progress_bar() as progress:  # pytest's stderr is not a terminal
        bar = progress.add_task("sdft on tools", total=4)
        for step in range(4):
            progress.update(bar, advance=1, description=f"sdft on tools loss {0.5 / (step + 1):.4f}")
    err = capsys.readouterr().err
    assert "sdft on tools: 0/4, 0m00s elapsed" in err
    assert "sdft on tools loss 0.2500: 2/4" in err and "left" in err and "sdft on tools loss 0.1250: 4/4" in err


def test_a_line_every_interval_with_the_step_the_loss_and_the_time_left():
    now, out = [0.0], Console(file=io.StringIO(), width=300)
    with PlainProgress(30, clock=lambda: now[0], out=out) as progress:
        bar = progress.add_task("sdft on tools", total=100)
        for step in range(1, 101):
            now[0] += 1.0
            progress.update(bar, advance=1, description=f"sdft on tools loss {1 / step:.4f}")
    assert out.file.getvalue().splitlines() == [
        "sdft on tools: 0/100, 0m00s elapsed",
        "sdft on tools loss 0.0333: 30/100, 0m30s elapsed, about 1m10s left",
        "sdft on tools loss 0.0167: 60/100, 1m00s elapsed, about 0m40s left",
        "sdft on tools loss 0.0111: 90/100, 1m30s elapsed, about 0m10s left",
        "sdft on tools loss 0.0100: 100/100, 1m40s elapsed, done",
    ]


def test_a_resumed_bar_counts_time_left_from_its_own_pace():
    now, out = [0.0], Console(file=io.StringIO(), width=300)
    with PlainProgress(10, clock=lambda: now[0], out=out) as progress:
        bar = progress.add_task("sdft", total=100, completed=50)  # resumed at step 50
        now[0] = 10.0
        progress.update(bar, completed=60)
        now[0] = 12.0
    assert out.file.getvalue().splitlines()[1] == "sdft: 60/100, 0m10s elapsed, about 0m40s left"
