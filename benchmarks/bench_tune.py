#!/usr/bin/env python
"""Prompt-tuning throughput: training tokens/s through a local swarm against in-process, same model.

A local swarm (2 CPU servers) serves the shipped arithmetic model; the same run (``--steps`` steps of
``--batch-size`` pairs of arith:train, ptune and deep_ptune) is trained through the swarm and in-process,
alternated (local, swarm, local, swarm: the machine's load drifts) after a warm-up that is not counted.
Prints per run the trainer's own timing (``tune.json``): real (unpadded) training tokens per second of step
time, and the step time split into forward (embeddings, prompts, every server's blocks, LM head on the
labelled positions, loss) and backward (the same route in reverse, ``rpc_backward`` on every server), then
the best and median of the repeats side by side.

Usage: .venv/bin/python benchmarks/bench_tune.py [--steps 20] [--batch-size 8] [--repeats 2]
       [--modes ptune,deep_ptune]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from petals_ops.lab import local_swarm
from petals_ops.lab.tiny_model import ARITH_MODEL_DIR
from petals_ops.tune.spec import TuneSpec
from petals_ops.client.options import ClientOptions
from petals_ops.tune.trainer import TuneParams, run_tune


def run(work: Path, swarm, name: str, backend: str, mode: str, steps: int, batch: int) -> dict:
    spec = TuneSpec(
        data="arith:train",
        mode=mode,
        pre_seq_len=16,
        steps=steps,
        batch_size=batch,
        lr=1e-2,
        eval_every=steps,
        eval_size=8,
        checkpoint_every=steps,
        max_length=128,
    )
    s = run_tune(
        TuneParams(spec=spec, run_dir=str(work / name),
                   client=ClientOptions(backend=backend, swarm_dir=swarm.run_dir))
    ).summary
    t = s.timing
    out = {
        "run": name,
        "backend": backend,
        "mode": mode,
        "steps": steps,
        "batch": batch,
        "tokens": t.tokens,
        "tokens_per_second": t.tokens_per_second,
        "forward_ms_per_step": round(1000 * t.forward_s / steps, 1),
        "backward_ms_per_step": round(1000 * t.backward_s / steps, 1),
        "step_ms": round(1000 * t.train_s / steps, 1),
        "servers": len(s.servers),
    }
    print(json.dumps(out), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--modes", default="ptune,deep_ptune")
    args = ap.parse_args()
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-tune-") as tmp:
        work = Path(tmp)
        swarm = local_swarm.up(work / "swarm", servers=2, model_dir=ARITH_MODEL_DIR)
        try:
            run(work, swarm, "warm-up", "petals", "ptune", 3, args.batch_size)
            for mode in [m for m in args.modes.split(",") if m]:
                for r in range(args.repeats):
                    for backend in ("local", "petals"):
                        results.append(
                            run(
                                work,
                                swarm,
                                f"{mode}-{backend}-{r}",
                                backend,
                                mode,
                                args.steps,
                                args.batch_size,
                            )
                        )
        finally:
            local_swarm.down(work / "swarm")
    # the machine is shared: the best repeat is the least disturbed one, the median shows the spread
    print("\nmode        backend  tokens/s (best, median)  step ms (best)  forward ms  backward ms")
    for mode in sorted({r["mode"] for r in results}):
        for backend in ("local", "petals"):
            rows = [r for r in results if r["mode"] == mode and r["backend"] == backend]
            best = min(rows, key=lambda r: r["step_ms"])
            median = statistics.median(r["tokens_per_second"] for r in rows)
            print(
                f"{mode:<11} {backend:<8} {best['tokens_per_second']:>8.0f} {median:>8.0f}       "
                f"{best['step_ms']:>14.1f} {best['forward_ms_per_step']:>11.1f} "
                f"{best['backward_ms_per_step']:>12.1f}"
            )


if __name__ == "__main__":
    main()
