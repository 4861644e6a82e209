#!/usr/bin/env python
"""Dress rehearsal at BLOOM-176B's shape, the pre-flight check before renting GPUs (issue 13; docs/fleet.md).

One command: five loopback hosts (127.0.0.11-15, each a real sshd and Docker engine), a tiny BLOOM with
70 blocks, ``hosts check``, ``plan --as-model bigscience/bloom --quant nf4`` (0:14 ... 56:70, a real nf4
fleet's ranges), ``up`` until fully served, ``swarm status``, the exporter scraped by a real Prometheus with
the project's alert rules (short ``for:``), greedy per-token latency through 1..5 hops, a ``bench gsm8k``
run in flight, the outage of one host (its container stopped), the uncovered range, the alert firing, the
repair (``restart``), coverage back, the alert resolved, the bench resumed to the end with each question
exactly once; then everything torn down. With --watch, no human step: ``petals-ops watch`` detects and repairs
a stopped container, a frozen server and a lost host (its range on a spare), and the timeline gives each fault
kind's detection and repair times. Prints the timeline and the figures. Needs root, openssh-server,
docker.io and prometheus (``./install.sh --system``), like the fleet tests.

    .venv/bin/python benchmarks/rehearsal.py [--hosts 5] [--quant nf4] [--watch] [--json figures.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=5, help="Loopback hosts, 1 to 5 [default: 5].")
    parser.add_argument("--quant", default="nf4", choices=["none", "int8", "nf4"],
                        help="What the real servers would use; sizes the ranges (five A10s cover 70 blocks "
                             "only in nf4).")
    parser.add_argument("--gpu-memory-bytes", type=int, default=None,
                        help="GPU memory per host [default: an A10's].")
    parser.add_argument("--outage-host", default=None,
                        help="Host whose server container is stopped [default: the middle one].")
    parser.add_argument("--questions", type=int, default=10, help="Bench questions (arith:test).")
    parser.add_argument("--max-new-tokens", type=int, default=12)
    parser.add_argument("--alert-for", default="5s", help="The rules' for: in the rehearsal's Prometheus.")
    parser.add_argument("--no-hops", action="store_true", help="Skip the per-hop latency measurement.")
    parser.add_argument("--watch", action="store_true",
                        help="No human step: `petals-ops watch` repairs three faults (a container stopped, "
                             "a server frozen, a host's sshd and engine stopped: its range goes to a spare "
                             "host, one more lab host) and gives the spare back when the host returns.")
    parser.add_argument("--json", default=None, help="Also write the figures and timeline here.")
    args = parser.parse_args()
    if args.watch and args.hosts > 4:
        parser.error("--watch takes one more lab host as the spare (the lab has five): --hosts 4 at most")

    from petals_ops.lab.rehearsal import Rehearsal

    root = Path(tempfile.mkdtemp(prefix="petals-ops-rehearsal-", dir="/tmp"))
    rh = Rehearsal(root, hosts=args.hosts, gpu_memory_bytes=args.gpu_memory_bytes, quant=args.quant,
                   outage_host=args.outage_host, questions=args.questions, max_new_tokens=args.max_new_tokens,
                   alert_for=args.alert_for, measure_hops=not args.no_hops, watch=args.watch,
                   log=lambda line: print(line, flush=True))
    failure = None
    try:
        rh.run()
    except Exception as e:  # noqa: BLE001 (print what was measured, then the failure)
        failure = f"{type(e).__name__}: {e}"
    f = rh.figures
    table = root / "swarm-status.txt"
    if table.is_file():
        print("\n--- swarm status at full coverage ---\n" + table.read_text())
    print("\n=== rehearsal figures ===")
    rows = [
        ("hosts", args.hosts),
        (f"plan (as if BLOOM-176B, {args.quant})",
         " ".join(f"{h}={r[0]}" for h, r in f.get("plan_assignment", {}).items())),
        ("up: start -> every server ONLINE", _s(f.get("up_seconds"))),
        ("up: start -> swarm status 70/70 covered", _s(f.get("full_coverage_seconds"))),
        ("up: start -> Prometheus fully_served = 1", _s(f.get("prometheus_fully_served_seconds"))),
        ("server processes / their PSS", f"{f.get('server_processes')} / {f.get('servers_pss_mib')} MiB"),
        *([] if args.watch else [
            ("outage", f"{f.get('outage_host')} (blocks {f.get('outage_blocks')})"),
            ("outage -> swarm status shows it uncovered", _s(f.get("outage_to_uncovered_seconds"))),
            (f"outage -> PetalsModelNotFullyServed firing (for: {args.alert_for})",
             _s(f.get("outage_to_alert_seconds"))),
            ("repair (restart) -> 70/70 covered", _s(f.get("repair_to_full_coverage_seconds"))),
            ("repair -> alert resolved", _s(f.get("repair_to_alert_resolved_seconds"))),
        ]),
        ("bench: error records / retried attempts",
         f"{f.get('bench_error_records')} / {f.get('bench_retried_attempts')}"),
        ("bench: runs to finish, each question exactly once",
         f"{f.get('bench_runs')}, {f.get('bench_each_question_once')}"),
        *[(f"watch: {kind} ({v['host']}) -> {v['action']} / 70/70 covered",
           f"{v['detect_seconds']} s / {v['repair_seconds']} s")
          for kind, v in f.get("watch_faults", {}).items()],
        *([("watch: lost host back -> its spare given back", _s(f.get("watch_give_back_seconds"))),
           ("watch: actions (outcomes)", f"{len(f.get('watch_actions', []))} ({f.get('watch_outcomes')})")]
          if args.watch else []),
        ("greedy ms/token by hops (servers on the route)",
         " ".join(f"{k}:{v}" for k, v in f.get("per_token_ms_by_hops", {}).items())),
        ("peak PSS of the rehearsal's processes", f"{f.get('peak_pss_mib')} MiB"),
        ("left running after teardown", f.get("left_running") or "nothing"),
        ("total", _s(f.get("total_seconds"))),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    if args.json:
        Path(args.json).write_text(json.dumps({"figures": f, "timeline": rh.timeline}, indent=1))
    if failure:
        print(f"\nREHEARSAL FAILED: {failure}\nlogs (bench, exporter, Prometheus, swarm status): {root}",
              file=sys.stderr)
        return 1
    shutil.rmtree(root, ignore_errors=True)
    return 0


def _s(value) -> str:
    return "-" if value is None else f"{value} s"


if __name__ == "__main__":
    sys.exit(main())
