#!/usr/bin/env python
"""Greedy steps/s through three servers against an emulated round trip per hop (lab.netem's proxy),
side by side with the Petals paper's BLOOM-176B figures, as ratios to the zero-delay run.

The paper (Borzunov et al. 2023, inference table) measured 1.71 steps/s on three A100 servers at < 5 ms
round trip and 1.23 at 100 ms: a ratio of 0.72. It gives no points in between: the paper column at 25 and
50 ms is a straight line in seconds per step between its two points (marked ~). Ratios depend on how much
of a step is compute (585 ms for BLOOM-176B, tens of ms for the lab's tiny BLOOM), so the column to
compare is "round trips per step": the step time added per millisecond of injected round trip.

    .venv/bin/python benchmarks/bench_netem.py [--delays 0,25,50,100] [--tokens 24] [--reps 4] [--no-push]
        [--json OUT]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PAPER = {0: 1.71, 100: 1.23}  # steps/s, BLOOM-176B on three A100 servers (< 5 ms and 100 ms round trip)
PROMPT = "Q: A baker has 12 trays of 24 muffins. How many muffins are there?\nA:"


def paper_steps_per_s(delay_ms: float) -> float:
    """The paper's two points joined by a straight line in seconds per step."""
    t0, t100 = 1 / PAPER[0], 1 / PAPER[100]
    return 1 / (t0 + (t100 - t0) * delay_ms / 100)


def step_times(loaded, tokens: int) -> list[float]:
    """Seconds of each decoding step after the prompt's (one forward step through the three servers)."""
    from petals_ops.client import generation

    clock = generation.StepClock()
    generation.generate(loaded, PROMPT, max_new_tokens=tokens, streamer=clock)
    gc.collect()
    return clock.gaps()


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--delays", default="0,25,50,100", help="round trip per hop, ms")
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--reps", type=int, default=4)
    parser.add_argument("--no-push", action="store_true",
                        help="client without petals' server-to-server pushes (each step waits for every hop)")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()
    delays = [float(d) for d in args.delays.split(",")]

    from petals_ops.client import loading
    from petals_ops.lab import local_swarm, netem

    gc.disable()  # the client's sessions are collected between steps, not on its event loop (STACK.md)
    steps: dict[float, list[float]] = {d: [] for d in delays}
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "swarm"
        swarm = local_swarm.up(run_dir, servers=3, delays_ms=[0.0] * 3)
        try:
            with loading.load_swarm_model(swarm.model, swarm.initial_peers,
                                          use_server_to_server=not args.no_push) as loaded:
                for rep in range(args.reps):  # rounds over every delay: the machine's load drifts
                    for delay in delays:
                        for server in swarm.servers:
                            netem.apply_fault(swarm, server.name, "delay", f"{delay}ms")
                        time.sleep(0.5)  # the proxy polls its control file
                        step_times(loaded, 2)  # the first step after the change
                        steps[delay] += step_times(loaded, args.tokens)
                        print(f"  round {rep + 1}, {delay:g} ms: median step "
                              f"{statistics.median(steps[delay]) * 1000:.0f} ms", flush=True)
        finally:
            local_swarm.down(run_dir)
    rows = [{"delay_ms": d, "steps_per_s": 1 / statistics.median(t), "steps": len(t),
             "step_ms_p10": sorted(t)[len(t) // 10] * 1000} for d, t in steps.items()]

    base = rows[0]["steps_per_s"] if rows and rows[0]["delay_ms"] == 0 else None
    print(f"\ngreedy decoding through 3 CPU servers of a tiny BLOOM: 1 / median step time of "
          f"{args.reps} x {args.tokens - 1} steps per delay")
    print(f"{'round trip/hop':>14} {'steps/s':>8} {'ratio':>6} {'added ms/step':>14} {'round trips/step':>17}"
          f" | {'paper steps/s':>13} {'paper ratio':>11} {'paper round trips/step':>22}")
    for row in rows:
        d, rate = row["delay_ms"], row["steps_per_s"]
        added = (1 / rate - 1 / base) * 1000 if base else float("nan")
        paper = paper_steps_per_s(d)
        paper_added = (1 / paper - 1 / PAPER[0]) * 1000
        approx = "" if d in PAPER else "~"
        row.update(ratio=rate / base if base else None, added_ms_per_step=added,
                   round_trips_per_step=added / d if d else None,
                   paper_steps_per_s=paper, paper_ratio=paper / PAPER[0], paper_interpolated=bool(approx))
        trips = f"{added / d:.2f}" if d else "-"
        paper_trips = f"{paper_added / d:.2f}" if d else "-"
        print(f"{d:>11g} ms {rate:>8.2f} {rate / base if base else float('nan'):>6.2f} {added:>14.0f} "
              f"{trips:>17} | {approx + f'{paper:.2f}':>13} {approx + f'{paper / PAPER[0]:.2f}':>11} "
              f"{approx + paper_trips:>22}")
    if args.json:
        Path(args.json).write_text(json.dumps({"tokens": args.tokens, "reps": args.reps, "rows": rows},
                                              indent=2) + "\n")


if __name__ == "__main__":
    from petals_ops.util import tmpclean

    main()
    tmpclean.exit_now(0)
