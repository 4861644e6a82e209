#!/usr/bin/env python
"""What Self-Consistency costs, and how much adaptive stopping saves: the shipped arithmetic model on the
held-out set (arith:test, fixed seeds), one table.

Runs CoT, SC with K=10 and K=40, and the adaptive methods (Adaptive-Consistency's Beta rule and ESC's
windows) at the settings docs/bench.md discusses, each paired with SC@10 on the same questions, and checks
issue 21's targets:
1. an adaptive method reaches SC@10's accuracy (paired difference >= -1 point, McNemar p > 0.05) with at
   most half of SC@10's sampled paths;
2. at SC@10's sampled-token budget, an adaptive method with a larger maximum K is at least as accurate.

Local backend by default (the same checkpoint in-process: the paths, tokens and server-steps per session
are those of a swarm run; tested); ``--swarm`` runs everything through a local swarm of 2 CPU servers
instead (server-steps then count both servers). Run dirs go to ``--work`` and resume there: a second
invocation with the same ``--work`` only reports.

Usage: .venv/bin/python benchmarks/bench_adaptive.py [--questions 400] [--work DIR] [--swarm]
       [--only NAME...] [--replay SC40_RUN_DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from petals_ops.bench import report  # noqa: E402
from petals_ops.bench.demo_step import ARITH_SC_TEMPERATURE  # noqa: E402
from petals_ops.bench.methods import MethodConfig  # noqa: E402
from petals_ops.bench.paired import compare_paired  # noqa: E402
from petals_ops.bench.runner import BenchParams, ExecOptions, run_bench  # noqa: E402
from petals_ops.client.options import ClientOptions  # noqa: E402
from petals_ops.lab.tiny_model import ARITH_MODEL_DIR  # noqa: E402

TOKENS = 48
# name: (method, max K, its parameters)
RUNS = {
    "cot": ("cot", 1, {}),
    "sc@10": ("sc", 10, {}),
    "adaptive K=10 t=0.8": ("adaptive", 10, {"threshold": 0.8}),
    "esc K=10 w=2": ("esc", 10, {"window": 2}),
    "adaptive K=10 t=0.95": ("adaptive", 10, {"threshold": 0.95}),
    "adaptive K=40 t=0.8": ("adaptive", 40, {"threshold": 0.8}),
    "adaptive K=40 t=0.95": ("adaptive", 40, {"threshold": 0.95}),  # the paper's settings
    "esc K=40 w=5": ("esc", 40, {"window": 5}),  # the paper's settings
    "sc@40": ("sc", 40, {}),
}


def run(work: Path, name: str, questions: int, swarm) -> tuple:
    method, paths, params = RUNS[name]
    client = ClientOptions(swarm_dir=swarm.run_dir) if swarm else \
        ClientOptions(backend="local", model=str(ARITH_MODEL_DIR))
    cfg = MethodConfig(method=method, paths=paths, temperature=ARITH_SC_TEMPERATURE, max_new_tokens=TOKENS,
                       params=tuple(params.items()))
    run_dir = work / name.replace(" ", "_").replace("@", "").replace("=", "")
    result = run_bench(BenchParams(data="arith:test", limit=questions, run_dir=str(run_dir), client=client,
                                   method=cfg, exec=ExecOptions(concurrency=1)))
    return report.load_run(result.run_dir)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--questions", type=int, default=400)
    ap.add_argument("--work", type=Path, default=None, help="run dirs here (resumed) [default: a temp dir]")
    ap.add_argument("--swarm", action="store_true", help="through a local swarm (2 CPU servers)")
    ap.add_argument("--only", nargs="*", default=None, help=f"a subset of: {', '.join(RUNS)}")
    ap.add_argument("--replay", type=Path, default=None,
                    help="replay the adaptive grid from this SC run dir's paths (K >= 40; default: sc@40's)")
    args = ap.parse_args()
    names = [n for n in RUNS if args.only is None or n in args.only or n in ("sc@10",)]
    with tempfile.TemporaryDirectory(prefix="bench-adaptive-") as tmp:
        work = args.work or Path(tmp)
        swarm = None
        if args.swarm:
            from petals_ops.lab import local_swarm

            swarm = local_swarm.up(work / "swarm", servers=2, model_dir=ARITH_MODEL_DIR)
        try:
            runs = {}
            for name in names:
                runs[name] = run(work, name, args.questions, swarm)
                s = runs[name][0]
                print(json.dumps({"run": name, "accuracy": s.accuracy, **{k: s.cost[k] for k in (
                    "paths", "tokens", "server_steps", "wall_seconds")}}), flush=True)
        finally:
            if swarm:
                from petals_ops.lab import local_swarm

                local_swarm.down(work / "swarm")
    base_summary, base_records = runs["sc@10"]
    base = {r.id: bool(r.correct) for r in base_records if not r.error}
    where = "2-server local swarm" if swarm else "local backend"
    print(f"\narith:test, {args.questions} questions, {where}, "
          f"T={ARITH_SC_TEMPERATURE}, top-k 40, --max-new-tokens {TOKENS}; paired with SC@10")
    head = ("run", "accuracy", "paths/q (median)", "paths", "tokens", "server-steps", "questions/min",
            "vs SC@10", "McNemar p")
    rows = []
    verdict = {}
    for name, (s, records) in runs.items():
        c = compare_paired(base, {r.id: bool(r.correct) for r in records if not r.error})
        k = s.cost
        verdict[name] = (s, c)
        rows.append((name, f"{s.correct}/{s.scored} = {100 * s.accuracy:.1f}%",
                     f"{k['paths_per_question']:.2f} ({k['paths_median']:g})", f"{k['paths']:,}",
                     f"{k['tokens']:,}", f"{k['server_steps']:,}", f"{s.questions_per_minute or 0:.1f}",
                     f"{100 * c.diff:+.2f} pts", f"{c.mcnemar_p:.3g}"))
    widths = [max(len(str(r[i])) for r in (head, *rows)) for i in range(len(head))]
    for r in (head, *rows):
        print("  ".join(str(v).ljust(w) for v, w in zip(r, widths)))
    b = base_summary.cost
    # (name, method, max K, paths, tokens, correct, comparison with SC@10): the runs, then the replays
    found = [(n, *RUNS[n][:2], s.cost["paths"], s.cost["tokens"], s.correct, c)
             for n, (s, c) in verdict.items()]
    source = runs["sc@40"][1] if "sc@40" in runs else \
        (report.load_records(args.replay) if args.replay else None)
    if source is not None:
        found += [(f"{n} (replayed)", *rest) for n, *rest in replay(source, base)]
    adaptive = [f for f in found if f[1] in ("adaptive", "esc")]
    half = [n for n, _, _, paths, _, _, c in adaptive
            if paths <= b["paths"] / 2 and c.diff >= -0.01 and c.mcnemar_p > 0.05]
    budget = [n for n, _, k, _, tokens, correct, _ in adaptive
              if k > 10 and tokens <= b["tokens"] and correct >= base_summary.correct]
    print(f"\ntarget 1 (SC@10's accuracy with at most half its {b['paths']:,} paths): "
          f"{'met by ' + ', '.join(half) if half else 'NOT met'}")
    print(f"target 2 (at SC@10's {b['tokens']:,} tokens, a larger max K at least as accurate): "
          f"{'met by ' + ', '.join(budget) if budget else 'NOT met'}")


# the grid replayed from SC@40's paths: (method, max K, parameter name, values)
GRID = (("adaptive", (10, 20, 40), "threshold", (0.8, 0.9, 0.95)), ("esc", (10, 20, 40), "window", (2, 3, 5)))


def replay(records, base: dict[str, bool]) -> list[tuple]:
    """Every setting of GRID from SC@40's records, asking the method itself (``next_paths``) round by
    round. Path i is the same path whatever the method (its own seed; tested), so accuracy, paths and
    tokens are exactly those of a run; server-steps are a session's longest path (one prefill step plus
    one step per further token, local backend), summed over the rounds. No time: nothing is decoded."""
    from petals_ops.bench.extraction import answers_equal

    print("\nreplayed from SC@40's paths (exact but for time; paired with SC@10):")
    widths = (28, 16, 8, 9, 12, 10, 9)
    heads = ("setting", "accuracy", "paths/q", "tokens", "server-steps", "vs SC@10", "McNemar p")
    print("  ".join(h.ljust(w) for h, w in zip(heads, widths)))
    ok = [r for r in records if not r.error and r.id in base]
    found = []
    for method, ks, name, values in GRID:
        for k, value in ((k, v) for k in ks for v in values):
            cfg = MethodConfig(method=method, paths=k, temperature=ARITH_SC_TEMPERATURE,
                               max_new_tokens=TOKENS, params=((name, value),)).validate()
            correct, paths, tokens, steps = {}, 0, 0, 0
            for r in ok:
                n = 0
                while more := min(cfg.impl.next_paths(cfg, tuple(r.paths[:n])), k - n):
                    steps += max(p.tokens for p in r.paths[n:n + more])
                    n += more
                vote = cfg.impl.aggregate(r.paths[:n])
                correct[r.id] = answers_equal(vote, r.gold)
                paths += n
                tokens += sum(p.tokens for p in r.paths[:n])
            c = compare_paired(base, correct)
            right = sum(correct.values())
            cells = (f"{method} K={k} {name}={value}", f"{right}/{len(ok)} = {100 * c.acc_b:.1f}%",
                     f"{paths / len(ok):.2f}", f"{tokens:,}", f"{steps:,}", f"{100 * c.diff:+.2f}",
                     f"{c.mcnemar_p:.3g}")
            print("  ".join(v.ljust(w) for v, w in zip(cells, widths)))
            found.append((cells[0], method, k, paths, tokens, right, c))
    return found


if __name__ == "__main__":
    main()
