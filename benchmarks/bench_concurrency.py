#!/usr/bin/env python
"""Questions/min against --concurrency where a step's time is mostly network, measured in one run.

The shipped arithmetic model on a local swarm of 2 CPU servers behind lab.netem's delaying proxy (the same
round trip on both servers, changed at run time). Every figure comes from real ``bench gsm8k`` runs (the
library call) on ``arith:test``:

1. CoT (greedy) at --concurrency 1, 2, 4, 8, 16 for each --delays value, ``--waves`` x concurrency
   questions per run. Each run is set against the latency-bound limit
   ``concurrency x 60 / (steps per question x per-step time)``: steps per question from the run (decode
   steps + the prefill), the per-step time from concurrency 1 at that delay (one question alone). Also
   our client's share of a step: our token loop (wall time outside the session's network calls) and the
   whole client process's CPU (ours + petals client + hivemind + torch), per step, against the step.
2. SC (K paths as rows of one session) against the same K paths in K sessions one after the other.
3. A cache-bound swarm (servers with a small --attn-cache-tokens: ``--cache-rows`` rows of prompt +
   new tokens): SC@K at the concurrency its K rows allow, and at twice it (two sessions of K/2 rows per
   question), against adaptive SC (``--method adaptive``, threshold 0.8: 2 paths first) at the concurrency
   its first round allows, and CoT; how many questions actually ran at once.

Run times are the bench's own (from the backend being ready to the last record), not connecting.

    .venv/bin/python benchmarks/bench_concurrency.py [--delays 0,100] [--concurrency 1,2,4,8,16]
        [--waves 4] [--sc-paths 10] [--sc-questions 2] [--cache-rows 20] [--parts sweep,sc,cache]
        [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MAX_NEW_TOKENS = 48
ADAPTIVE_THRESHOLD = 0.8  # docs/bench.md: adaptive K=10 T=0.8 matches SC@10 with 37% of its paths
HOPS = 2  # servers on the route


class Meter:
    """Wall time inside the session's network calls (forward/prefill) and outside them, per thread."""

    def __init__(self):
        from petals_ops.bench import runner
        from petals_ops.client import backends

        self.network = self.loop = 0.0
        self.steps = self.sessions = 0
        self._backends, self._runner = backends, runner
        self._forward = backends.DecodeSession.forward
        self._decode = runner.decode_batch

    def __enter__(self):
        meter, forward, decode = self, self._forward, self._decode

        def timed_forward(session, ids):
            t = time.perf_counter()
            try:
                return forward(session, ids)
            finally:
                meter.network += time.perf_counter() - t

        def timed_decode(*args, **kwargs):
            t = time.perf_counter()
            out = decode(*args, **kwargs)
            meter.loop += time.perf_counter() - t
            meter.steps += out.steps
            meter.sessions += 1
            return out

        self._backends.DecodeSession.forward = timed_forward
        self._runner.decode_batch = timed_decode
        return self

    def __exit__(self, *exc):
        self._backends.DecodeSession.forward = self._forward
        self._runner.decode_batch = self._decode


def cpu_seconds(pgids) -> float:
    """CPU time (user + system) of every live process in these process groups."""
    from petals_ops.util import procs

    ticks = 0
    for pgid in pgids:
        for pid in procs.group_members(pgid):
            fields = procs._proc_fields(pid)
            if fields is not None:
                ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def bench(work: Path, swarm, name: str, *, method: str = "cot", paths: int = 1, questions: int,
          concurrency: int = 1, offset: int = 0, params: tuple = (), **exec_kw) -> dict:
    from petals_ops.bench.demo_step import ARITH_SC_TEMPERATURE
    from petals_ops.bench.methods import MethodConfig
    from petals_ops.bench.runner import BenchParams, ExecOptions, run_bench
    from petals_ops.bench.store import read_records
    from petals_ops.client.options import ClientOptions

    cfg = MethodConfig(method=method, paths=paths, max_new_tokens=MAX_NEW_TOKENS,
                       temperature=ARITH_SC_TEMPERATURE, params=params)
    params = BenchParams(data="arith:test", offset=offset, limit=questions, run_dir=str(work / name),
                         client=ClientOptions(swarm_dir=swarm.run_dir), method=cfg,
                         exec=ExecOptions(concurrency=concurrency, **exec_kw))
    marks: dict = {}
    servers = [p.pgid for p in swarm.processes if p.role == "server"]

    def on_start(_progress, info):
        marks.update(start=time.monotonic(), cpu=time.process_time(), servers_cpu=cpu_seconds(servers),
                     batch=info["batch_size"])

    def on_record(_record, _progress):
        marks["end"] = time.monotonic()

    with Meter() as meter:
        result = run_bench(params, on_start=on_start, on_record=on_record)
    wall = marks["end"] - marks["start"]
    client_cpu = time.process_time() - marks["cpu"]
    servers_cpu = cpu_seconds(servers) - marks["servers_cpu"]
    records = read_records(result.run_dir)
    spans = [(r["finished_at"] - r["seconds"], r["finished_at"]) for r in records]
    s = result.summary
    out = {"run": name, "concurrency": concurrency, "paths": paths, "batch": marks["batch"],
           "paths_per_question": round(sum(len(r["paths"]) for r in records) / len(records), 2),
           "questions": len(records), "errors": s.errors, "retried": sum(r["attempts"] > 1 for r in records),
           "accuracy": s.accuracy, "wall_s": round(wall, 2), "qpm": round(60 * len(records) / wall, 2),
           "steps_per_question": round((meter.steps + meter.sessions) / len(records), 2),
           "sessions_per_question": round(meter.sessions / len(records), 2),
           "step_ms": round(1000 * meter.network / (meter.steps + meter.sessions), 1),
           "loop_ms_per_step": round(1000 * (meter.loop - meter.network) / (meter.steps + meter.sessions), 2),
           "client_cpu_ms_per_step": round(1000 * client_cpu / (meter.steps + meter.sessions), 2),
           "servers_cpu_ms_per_step": round(1000 * servers_cpu / (meter.steps + meter.sessions), 2),
           "at_once_max": max_overlap(spans), "load": round(os.getloadavg()[0], 1)}
    print(json.dumps(out), flush=True)
    return out


def max_overlap(spans: list[tuple[float, float]]) -> int:
    """The most questions in flight at one time (from each record's start and finish)."""
    events = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
    most = now = 0
    for _, change in events:
        now += change
        most = max(most, now)
    return most


def set_delay(swarm, delay_ms: float) -> None:
    from petals_ops.lab import netem

    for server in swarm.servers:
        netem.apply_fault(swarm, server.name, "delay", f"{delay_ms:g}ms")
    time.sleep(0.5)  # the proxy polls its control file every 50 ms


def sweep(work: Path, swarm, delays, levels, waves: int) -> list[dict]:
    rows = []
    for delay in delays:
        set_delay(swarm, delay)
        bench(work, swarm, f"warm-{delay:g}", questions=1)  # the first session after a change
        base = None
        for c in levels:
            row = bench(work, swarm, f"cot-{delay:g}ms-c{c}", questions=max(waves * c, 4), concurrency=c)
            row["delay_ms"] = delay
            base = base or row
            step_s = base["step_ms"] / 1000  # one question alone: the per-step time
            row["limit_qpm"] = round(c * 60 / (row["steps_per_question"] * step_s), 2)
            row["of_limit"] = round(row["qpm"] / row["limit_qpm"], 2)
            row["speedup"] = round(row["qpm"] / base["qpm"], 2)
            rows.append(row)
    return rows


def sc_batching(work: Path, swarm, delay: float, paths: int, questions: int) -> dict:
    set_delay(swarm, delay)
    batched = bench(work, swarm, f"sc{paths}-batched", method="sc", paths=paths, questions=questions)
    sequential = bench(work, swarm, f"sc{paths}-sequential", method="sc", paths=paths, questions=questions,
                       batch_size=1)
    return {"delay_ms": delay, "batched": batched, "sequential": sequential,
            "ratio": round(batched["qpm"] / sequential["qpm"], 2)}


def cache_bound(work: Path, delay: float, rows: int, paths: int, waves: int) -> dict:
    """A swarm whose servers' attention cache holds ``rows`` rows of the longest prompt + new tokens."""
    from petals_ops.bench.data import default_prompt_for, load_dataset, select
    from petals_ops.bench.prompts import load_prompt_file
    from petals_ops.client.loading import load_tokenizer
    from petals_ops.lab import local_swarm
    from petals_ops.lab.tiny_model import ARITH_MODEL_DIR
    from petals_ops.client.models import resolve_model

    most = max(waves * rows // 2, 8)
    tok = load_tokenizer(resolve_model(str(ARITH_MODEL_DIR)))
    prompt = load_prompt_file(default_prompt_for("arith:test"))
    longest = max(len(tok(prompt.render(p.question))["input_ids"])
                  for p in select(load_dataset("arith:test").problems, limit=most))
    tokens = rows * (longest + MAX_NEW_TOKENS)
    swarm = local_swarm.up(work / "swarm-cache", servers=HOPS, model_dir=ARITH_MODEL_DIR,
                           delays_ms=[delay] * HOPS, server_settings={"attn_cache_tokens": tokens})
    runs = []
    try:
        # (name, method, K, its settings, concurrency): SC@K's K rows at the concurrency they fit, then
        # at twice it (half the rows per session, two sessions per question); the adaptive method
        # (issue 21 items 1-2: its first round is 2 paths) at the concurrency its first round fits; CoT
        adaptive = (("threshold", ADAPTIVE_THRESHOLD),)
        plan = [(f"sc{paths}", "sc", paths, (), max(1, rows // paths)),
                (f"sc{paths}", "sc", paths, (), max(1, 2 * rows // paths)),
                (f"adaptive{paths}", "adaptive", paths, adaptive, max(1, rows // 2)),
                ("cot", "cot", 1, (), rows)]
        bench(work, swarm, "cache-warm", questions=1)
        for label, method, k, settings, c in plan:  # rows per session as the automatic rule picks them
            row = bench(work, swarm, f"cache-{label}-c{c}", method=method, paths=k, params=settings,
                        questions=max(waves * c, 4), concurrency=c, batch_size=max(1, min(k, rows // c)))
            row["rows_per_session"] = row["batch"]
            runs.append(row)
    finally:
        local_swarm.down(work / "swarm-cache")
    return {"delay_ms": delay, "rows": rows, "attn_cache_tokens": tokens, "longest_prompt": longest,
            "runs": runs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--delays", default="0,100", help="round trip per hop, ms")
    ap.add_argument("--concurrency", default="1,2,4,8,16")
    ap.add_argument("--waves", type=int, default=4, help="questions per run = waves x concurrency")
    ap.add_argument("--sc-paths", type=int, default=10)
    ap.add_argument("--sc-questions", type=int, default=2)
    ap.add_argument("--cache-rows", type=int, default=20)
    ap.add_argument("--parts", default="sweep,sc,cache")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    delays = [float(d) for d in args.delays.split(",")]
    levels = [int(c) for c in args.concurrency.split(",")]
    parts = set(args.parts.split(","))

    from petals_ops.lab import local_swarm
    from petals_ops.lab.tiny_model import ARITH_MODEL_DIR

    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench-concurrency-") as tmp:
        work = Path(tmp)
        if parts & {"sweep", "sc"}:
            swarm = local_swarm.up(work / "swarm", servers=HOPS, model_dir=ARITH_MODEL_DIR,
                                   delays_ms=[0.0] * HOPS)
            try:
                if "sweep" in parts:
                    out["sweep"] = sweep(work, swarm, delays, levels, args.waves)
                if "sc" in parts:
                    out["sc"] = sc_batching(work, swarm, max(delays), args.sc_paths, args.sc_questions)
            finally:
                local_swarm.down(work / "swarm")
        if "cache" in parts:
            out["cache"] = cache_bound(work, max(delays), args.cache_rows, args.sc_paths, args.waves)
    report(out)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


def report(out: dict) -> None:
    if "sweep" in out:
        print("\nCoT through 2 servers, questions/min against concurrency (one run; limit = concurrency x 60"
              " / (steps/question x per-step time alone))")
        print(f"{'rtt/hop':>7} {'conc':>4} {'q':>3} {'q/min':>7} {'x c=1':>6} {'limit':>7} {'of limit':>8} "
              f"{'step ms':>7} {'steps/q':>7} {'our loop':>8} {'client cpu':>10} {'servers cpu':>11} "
              f"{'load':>5}")
        for r in out["sweep"]:
            step = r["step_ms"]
            print(f"{r['delay_ms']:>5g}ms {r['concurrency']:>4} {r['questions']:>3} {r['qpm']:>7.1f} "
                  f"{r['speedup']:>6.2f} {r['limit_qpm']:>7.1f} {r['of_limit']:>8.2f} {step:>7.0f} "
                  f"{r['steps_per_question']:>7.1f} {100 * r['loop_ms_per_step'] / step:>7.2f}% "
                  f"{100 * r['client_cpu_ms_per_step'] / step:>9.1f}% "
                  f"{r['servers_cpu_ms_per_step']:>8.1f} ms {r['load']:>5}")
        print("our loop: wall time in decode_batch outside the session's calls, per step, as % of the step; "
              "client cpu: the client process's CPU per step (all threads) as % of the step; servers cpu: "
              "both servers' CPU per step")
    if "sc" in out:
        sc = out["sc"]
        b, s = sc["batched"], sc["sequential"]
        print(f"\nSC@{b['paths']} at {sc['delay_ms']:g} ms/hop, {b['questions']} questions: batched "
              f"{b['qpm']:.2f} q/min ({b['steps_per_question']:.0f} steps/q) vs sequential "
              f"{s['qpm']:.2f} q/min ({s['steps_per_question']:.0f} steps/q): {sc['ratio']:.2f}x")
    if "cache" in out:
        c = out["cache"]
        print(f"\ncache-bound swarm: --attn-cache-tokens {c['attn_cache_tokens']} = {c['rows']} rows of "
              f"{c['longest_prompt']} + {MAX_NEW_TOKENS} tokens, {c['delay_ms']:g} ms/hop")
        print(f"{'run':>22} {'conc':>4} {'rows/session':>12} {'at once':>7} {'q/min':>7} {'accuracy':>8} "
              f"{'paths/q':>7} {'sessions/q':>10} {'retried':>7} {'errors':>6}")
        for r in c["runs"]:
            acc = f"{100 * r['accuracy']:.0f}%" if r["accuracy"] is not None else "-"
            print(f"{r['run']:>22} {r['concurrency']:>4} {r['rows_per_session']:>12} {r['at_once_max']:>7} "
                  f"{r['qpm']:>7.1f} {acc:>8} {r['paths_per_question']:>7.1f} "
                  f"{r['sessions_per_question']:>10.1f} {r['retried']:>7} {r['errors']:>6}")


if __name__ == "__main__":
    from petals_ops.util import tmpclean

    main()
    tmpclean.exit_now(0)
