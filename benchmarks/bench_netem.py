#!/usr/bin/env python
"""Greedy steps/s through three servers against an emulated round trip per hop (lab.netem's proxy),
side by side with the Petals paper's BLOOM-176B figures, as ratios to the zero-delay run.

The paper (Borzunov et al. 2023, inference table) measured 1.71 steps/s on three A100 servers at < 5 ms
round trip and 1.23 at 100 ms: a ratio of 0.72. It gives no points in between: the paper column at 25 and
50 ms is a straight line in seconds per step between its two points (marked ~). Ratios depend on how much
of a step is compute (585 ms for BLOOM-176B, tens of ms for the lab's tiny BLOOM), so the column to
compare is "round trips per step": the step time added per millisecond of injected round trip.

Then (unless --no-trace) what ``swarm trace`` sees (petals_ops.client.canary, pushes off, the same swarm):
- "all delayed": every server at each delay: per hop, the client-side seconds of its part of a step and
  its rpc_info round trip, i.e. where the curve's step time goes;
- "one delayed": server-1 alone at each delay: how much of the step time the delay added the trace puts at
  server-1's hop (attribution accuracy = added at that hop / added to the step), and how much its rpc_info
  round trip grew against the injected delay.

    .venv/bin/python benchmarks/bench_netem.py [--delays 0,25,50,100] [--tokens 24] [--reps 4] [--no-push]
        [--no-trace] [--json OUT]
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


def trace_hops(swarm, delays: list[float], tokens: int, reps: int) -> dict:
    """The swarm-trace measurements (pushes off) with every server delayed, then with server-1 alone:
    per scenario and delay, the median step and per hop (server name) the median seconds and rpc_info."""
    from petals_ops.client import canary, loading
    from petals_ops.lab import netem
    from petals_ops.monitoring.refresher import local_identities
    from petals_ops.swarm.trace import summarize
    from petals_ops.client import door

    names = {door.peer_id_of_identity(path.read_bytes()): host.split("/")[-1]
             for host, path in local_identities(swarm.run_dir).items()}
    runs: dict = {"all": {d: [] for d in delays}, "one": {d: [] for d in delays}}
    with loading.load_swarm_model(swarm.model, swarm.initial_peers, use_server_to_server=False) as loaded:
        for rep in range(reps):
            for scenario in ("all", "one"):
                for delay in delays:
                    for server in swarm.servers:
                        on = scenario == "all" or server.name == "server-1"
                        netem.apply_fault(swarm, server.name, "delay", f"{delay if on else 0}ms")
                    time.sleep(0.5)
                    canary.run_canary(loaded, steps=2, round_trip_samples=1)  # the first steps after it
                    result = summarize([], canary.run_canary(loaded, steps=tokens, timeout=300))
                    runs[scenario][delay].append(result)
                    hops = " ".join(f"{names[h.peer_id]} {h.seconds * 1000:.0f}/"
                                    f"{h.network_seconds * 1000:.0f}" for h in result.hops)
                    print(f"  trace round {rep + 1}, {scenario} delayed, {delay:g} ms: step "
                          f"{result.step_seconds * 1000:.0f} ms, hops (ms/step / rpc_info ms) {hops}",
                          flush=True)
    out: dict = {}
    for scenario, by_delay in runs.items():
        out[scenario] = {}
        for delay, results in by_delay.items():
            hops: dict = {}
            for r in results:
                for h in r.hops:
                    hops.setdefault(names[h.peer_id], {"seconds": [], "network": []})
                    hops[names[h.peer_id]]["seconds"].append(h.seconds)
                    hops[names[h.peer_id]]["network"].append(h.network_seconds)
            out[scenario][str(delay)] = {
                "step": statistics.median(r.step_seconds for r in results),
                "client": statistics.median(r.client_seconds for r in results),
                "hops": {n: {"seconds": statistics.median(v["seconds"]),
                             "network": statistics.median(v["network"])} for n, v in sorted(hops.items())}}
    return out


def print_traced(traced: dict, delays: list[float]) -> None:
    """The two trace tables (medians over the rounds, ms)."""
    base = str(delays[0])
    print("\nswarm trace, every server delayed (pushes off): ms per step at each hop (rpc_info round trip)")
    print(f"{'round trip/hop':>14} {'step':>6} {'client':>7} | " + " | ".join(
        f"{n:>20}" for n in traced["all"][base]["hops"]) + " | hop time above its rpc_info, summed")
    for d in delays:
        row = traced["all"][str(d)]
        cells = " | ".join(f"{h['seconds'] * 1000:>10.0f} ({h['network'] * 1000:>5.0f} )"
                           for h in row["hops"].values())
        server = sum(h["seconds"] - h["network"] for h in row["hops"].values())
        print(f"{d:>11g} ms {row['step'] * 1000:>6.0f} {row['client'] * 1000:>7.0f} | {cells} | "
              f"{server * 1000:.0f}")
    print("\nswarm trace, server-1 alone delayed: attribution of the added step time")
    print(f"{'round trip':>10} {'step':>6} {'added/step':>11} {'added at server-1':>18} {'accuracy':>9} "
          f"{'server-1 rpc_info':>18} {'its growth / injected':>22}")
    zero = traced["one"][base]
    for d in delays:
        row = traced["one"][str(d)]
        added = row["step"] - zero["step"]
        at = row["hops"]["server-1"]["seconds"] - zero["hops"]["server-1"]["seconds"]
        rtt = row["hops"]["server-1"]["network"]
        grew = rtt - zero["hops"]["server-1"]["network"]
        accuracy = f"{at / added:.0%}" if d and added > 0 else "-"
        ratio = f"{grew * 1000 / d:.2f}" if d else "-"
        print(f"{d:>7g} ms {row['step'] * 1000:>6.0f} {added * 1000:>11.0f} {at * 1000:>18.0f} {accuracy:>9} "
              f"{rtt * 1000:>18.0f} {ratio:>22}")
        row.update(added=added, added_at_delayed=at, accuracy=at / added if d and added > 0 else None)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--delays", default="0,25,50,100", help="round trip per hop, ms")
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--reps", type=int, default=4)
    parser.add_argument("--no-push", action="store_true",
                        help="client without petals' server-to-server pushes (each step waits for every hop)")
    parser.add_argument("--no-trace", action="store_true", help="skip the per-hop (swarm trace) part")
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
            traced = None if args.no_trace else trace_hops(swarm, delays, args.tokens, args.reps)
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
    if traced is not None:
        print_traced(traced, delays)
    if args.json:
        Path(args.json).write_text(json.dumps({"tokens": args.tokens, "reps": args.reps, "rows": rows,
                                               "traced": traced}, indent=2) + "\n")


if __name__ == "__main__":
    from petals_ops.util import tmpclean

    main()
    tmpclean.exit_now(0)
