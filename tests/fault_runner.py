"""Run the sdft CLI, optionally killed with SIGKILL at a chosen point: the fault suite's `kill -9` at each phase.

    python tests/fault_runner.py [--kill-at MODULE:FUNCTION[:N[:TEXT]]] -- SDFT_ARGS...

MODULE.FUNCTION (or MODULE.Class.method) is replaced, where callers look it up, by a wrapper that kills this process on its N-th call (1 by
default) whose arguments mention TEXT (any call when TEXT is empty): the process dies as a power cut or the OOM
killer would take it, with no chance to clean up. A test-only tool: sdft itself has no fault hooks.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys


def kill_at(spec: str) -> None:
    module_name, function, *rest = spec.split(":")
    nth = int(rest[0]) if rest and rest[0] else 1
    text = rest[1] if len(rest) > 1 else ""
    owner = importlib.import_module(module_name)
    *path, function = function.split(".")  # 'Trainer._save_rng_state': a method of a class in the module
    for name in path:
        owner = getattr(owner, name)
    real, calls = getattr(owner, function), {"n": 0}

    def wrapper(*args, **kwargs):
        if not text or text in repr((args, kwargs)):
            calls["n"] += 1
            if calls["n"] == nth:
                sys.stdout.flush()
                sys.stderr.flush()
                os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)

    setattr(owner, function, wrapper)


def main(argv: list[str]) -> None:
    split = argv.index("--")
    options, args = argv[:split], argv[split + 1:]
    from sdft.cli import app  # first, as `sdft` would: it sets the libraries' environment before they are imported

    if options[:1] == ["--kill-at"]:
        kill_at(options[1])

    app(args, prog_name="sdft")


if __name__ == "__main__":
    main(sys.argv[1:])
