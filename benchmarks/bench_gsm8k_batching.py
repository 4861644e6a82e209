"""Benchmark: SC paths batched in one inference session vs K sequential generations; concurrency 4 vs 1.

Starts its own local swarm (tiny BLOOM, CPU) and stops it at the end. Each variant is a real
``petals-ops bench gsm8k`` run (the library call, no subprocess) in a fresh run dir:

  batched:     --method sc --paths K                 (one session of K rows per question)
  sequential:  --method sc --paths K --batch-size 1  (K sessions of one row per question)
  conc1/conc4: --method sc --paths K, --concurrency 1 and 4

Usage: .venv/bin/python benchmarks/bench_gsm8k_batching.py [--questions 4] [--paths 8] [--max-new-tokens 24]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from petals_ops.lab import local_swarm
from petals_ops.bench.methods import MethodConfig
from petals_ops.bench.runner import BenchParams, ExecOptions, run_bench
from petals_ops.client.options import ClientOptions


def run(work: Path, swarm, name: str, args, **exec_kw) -> dict:
    params = BenchParams(
        data="demo", limit=args.questions, run_dir=str(work / name),
        client=ClientOptions(swarm_dir=swarm.run_dir),
        method=MethodConfig(method="sc", paths=args.paths, max_new_tokens=args.max_new_tokens,
                            stops=() if args.no_stop else MethodConfig().stops),
        exec=ExecOptions(**exec_kw),
    )
    started = time.monotonic()
    result = run_bench(params)
    wall = time.monotonic() - started
    s = result.summary
    out = {"variant": name, "wall_s": round(wall, 2), "bench_wall_s": s.wall_seconds,
           "tokens": s.tokens, "tokens_per_s": s.tokens_per_second, "errors": s.errors,
           "batch_size": s.run["batch_size"]}
    print(json.dumps(out), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--questions", type=int, default=4)
    ap.add_argument("--paths", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--no-stop", action="store_true",
                    help="Generate all max-new-tokens (no stop strings): equal work.")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-gsm8k-") as tmp:
        work = Path(tmp)
        t0 = time.monotonic()
        swarm = local_swarm.up(work / "swarm", servers=2)
        print(f"local swarm up in {time.monotonic() - t0:.1f} s", flush=True)
        try:
            warm = argparse.Namespace(**{**vars(args), "questions": 1})
            run(work, swarm, "warm-up (not counted)", warm)  # first-run costs (torch, servers' caches)
            batched = run(work, swarm, "batched", args)
            sequential = run(work, swarm, "sequential", args, batch_size=1)
            conc1 = run(work, swarm, "concurrency1", args, concurrency=1)
            conc4 = run(work, swarm, "concurrency4", args, concurrency=4)
        finally:
            local_swarm.down(work / "swarm")
    # the bench's own wall time (excludes connecting to the swarm and loading the client)
    ratio = sequential["bench_wall_s"] / batched["bench_wall_s"]
    print(f"SC K={args.paths} on {args.questions} questions, {args.max_new_tokens} new tokens max:")
    print(f"  batched {batched['bench_wall_s']:.1f} s vs sequential {sequential['bench_wall_s']:.1f} s: "
          f"batched is {ratio:.2f}x faster (goal >= 4x)")
    print(f"  concurrency 4: {conc4['tokens_per_s']:.1f} tokens/s ({conc4['bench_wall_s']:.1f} s) "
          f"vs concurrency 1: {conc1['tokens_per_s']:.1f} tokens/s ({conc1['bench_wall_s']:.1f} s): "
          f"{conc4['tokens_per_s'] / conc1['tokens_per_s']:.2f}x")


if __name__ == "__main__":
    main()
