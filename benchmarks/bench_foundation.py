#!/usr/bin/env python
"""Foundation figures, measured in one run (ratios are what to compare: the machines are shared and noisy).

1. ``petals-ops --help`` wall time against ``python -c pass`` (the CLI must not import torch & co).
2. ``swarm local up`` time until every block is served (2 CPU servers, tiny BLOOM).
3. Greedy tokens/s through the swarm against in-process transformers on the same checkpoint and prompt:
   the swarm's overhead ratio.

Usage: .venv/bin/python benchmarks/bench_foundation.py [--reps 5] [--new-tokens 64]
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def wall(cmd, reps):
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args()

    cli = str(Path(sys.executable).with_name("petals-ops"))
    baseline = wall([sys.executable, "-c", "pass"], args.reps)
    help_time = wall([cli, "--help"], args.reps)
    print(f"petals-ops --help: {help_time * 1000:.0f} ms median vs python -c pass {baseline * 1000:.0f} ms "
          f"(ratio {help_time / baseline:.1f}x)")

    from petals_ops.client import generation, loading
    from petals_ops.lab import local_swarm

    with tempfile.TemporaryDirectory() as tmp:
        from petals_ops.lab.tiny_model import make_tiny_bloom

        model_dir = make_tiny_bloom(Path(tmp) / "model")
        started = time.perf_counter()
        swarm = local_swarm.up(Path(tmp) / "swarm", servers=2, model_dir=model_dir)
        print(f"swarm local up (2 servers, 4 blocks) to fully served: {time.perf_counter() - started:.1f} s")
        try:
            prompt = "Q: A shirt costs $20 and is on sale for 15% off. What is the sale price?\nA:"
            rates = {}
            for name, load in (
                ("swarm", lambda: loading.load_swarm_model(swarm.model, swarm.initial_peers)),
                ("in-process", lambda: loading.load_local_model(swarm.model)),
            ):
                with load() as loaded:
                    generation.generate(loaded, prompt, max_new_tokens=4)  # warm-up
                    runs = [generation.generate(loaded, prompt, max_new_tokens=args.new_tokens)
                            for _ in range(args.reps)]
                rates[name] = statistics.median(r.new_tokens / r.seconds for r in runs)
                print(f"greedy {args.new_tokens} new tokens, {name}: {rates[name]:.1f} tokens/s "
                      f"(median of {args.reps})")
            print(f"swarm overhead: in-process is {rates['in-process'] / rates['swarm']:.1f}x faster "
                  f"than the swarm (tiny model: the cost is all network/RPC per token)")
        finally:
            local_swarm.down(Path(tmp) / "swarm")


if __name__ == "__main__":
    main()
