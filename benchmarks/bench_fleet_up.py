"""Benchmark: ``up`` on two hosts in parallel vs one after another (wall time until every server is ONLINE).

Runs against the test lab (two sshd hosts on 127.0.0.11/12 with their own Docker engines, a bootstrap DHT,
CPU servers of a tiny BLOOM in the test image); needs root, openssh-server and docker.io, like the tests.
Each mode starts from no containers (``down`` in between) and includes SSH, the Docker API, server start-up
and the DHT wait. Prints both wall times and the ratio sequential / parallel.

    .venv/bin/python benchmarks/bench_fleet_up.py [--repeats 1]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()

    from petals_ops.client import door as petals_door  # noqa: F401  (import once, so neither mode pays for it)
    from petals_ops.fleet.down import down
    from petals_ops.fleet.schema import Inventory
    from petals_ops.fleet.ssh import SSHOptions
    from petals_ops.fleet.up import up
    from petals_ops.lab.tiny_model import make_tiny_bloom
    from petals_ops.lab.fleet_lab import start_lab

    lab = start_lab()
    try:
        model = make_tiny_bloom(lab.root / "tiny-bloom")
        inv = Inventory.model_validate(lab.inventory(model, port=lab.server_port(), token_env=None))
        opts = SSHOptions.from_inventory(inv)

        def timed(batches: list[list[str]]) -> float:
            down(inv, opts=opts)
            started = time.monotonic()
            for hosts in batches:
                results = up(inv, hosts, opts=opts, timeout=args.timeout)
                if not all(r.ok for r in results):
                    raise SystemExit(f"up failed: {[r.error for r in results if not r.ok]}")
            return time.monotonic() - started

        par, seq = [], []
        for _ in range(args.repeats):
            par.append(timed([["a10-1", "a10-2"]]))
            seq.append(timed([["a10-1"], ["a10-2"]]))
            print(f"parallel {par[-1]:.1f} s, one after another {seq[-1]:.1f} s", flush=True)
        down(inv, opts=opts)
        p, s = min(par), min(seq)
        print(f"up on 2 hosts: parallel {p:.1f} s, sequential {s:.1f} s, "
              f"ratio sequential/parallel = {s / p:.2f}x "
              f"(best of {args.repeats}; {len(__import__('os').sched_getaffinity(0))} cores)")
    finally:
        lab.stop()


if __name__ == "__main__":
    main()
