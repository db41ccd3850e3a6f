"""An in-process A/B of the SDFT hot path's switches: the lean decoding step (sdft/generation/lean_decode.py) on or off,
and the shared student prompt pass (Trainer.share_prompt_pass forced on or off), on one trainer, alternating the four
variants step after step so that a machine whose speed drifts weighs on all of them alike.

    python scripts/bench_ab.py                                        # embedded model, science, batch 16
    python scripts/bench_ab.py --model /tmp/sdft-bench/qwen2.5-0.5b --reps 2   # the shape scripts/bench.py builds

Prints, per variant, the median over --reps steps of the step time and its split. The weights change from step to
step (these are training steps), so the losses of the variants are not comparable; the tests show that the
switches change no number (tests/test_sdft.py).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (scripts/bench.py: the same stage and trainer as the benchmark)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="embedded", help="embedded or a local folder (a preset shape's cache)")
    parser.add_argument("--reps", type=int, default=5, help="measured steps per variant")
    args = parser.parse_args(argv)
    import torch

    from sdft.generation import native as sampler
    from sdft.methods import sdft

    spec = {"config": "sdft-ema-full", "model": args.model, "task": "science", "batch": 16, "max_completion": 160,
            "rows": 64, "warmup": 1, "steps": args.reps, "threads": 0, "device": "cpu", "dtype": "float32", "seed": 0}
    if args.model != "embedded":  # a folder: the 0.5B settings of BENCHMARKS.md
        spec.update(task="repeat", batch=2, max_completion=33, rows=8)
    trainer = sdft.build_trainer(bench.build_stage(spec, Path(tempfile.mkdtemp())))
    lean_decoder = sampler.lean_decoder
    sdft.train_step(trainer)  # warm-up
    variants = list(itertools.product((True, False), (True, False)))  # (lean decoding, shared prompt pass)
    records: dict[tuple[bool, bool], list[dict]] = {v: [] for v in variants}
    try:
        for rep in range(args.reps):
            for lean, share in variants:
                sampler.lean_decoder = lean_decoder if lean else (lambda model: None)
                trainer.share_prompt_pass = share
                trainer.stream.load_state_dict({"epoch": 0, "position": 0})  # the same prompts for every variant
                torch.manual_seed(rep)
                metrics, _ = sdft.train_step(trainer)
                records[(lean, share)].append(metrics)
    finally:
        sampler.lean_decoder = lean_decoder
    keys = ("step_seconds", "time_generation", "time_teacher_forward", "time_student_forward_backward", "time_optimizer")
    print(f"{'lean decoding':<14} {'shared prompt':<14} " + " ".join(f"{k.replace('time_', '')[:13]:>13}" for k in keys))
    for (lean, share), runs in records.items():
        medians = [statistics.median(m[k] for m in runs) for k in keys]
        print(f"{str(lean):<14} {str(share):<14} " + " ".join(f"{v:>13.3f}" for v in medians))


if __name__ == "__main__":
    main()
