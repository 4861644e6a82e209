#!/usr/bin/env python
"""What ``--calculator`` costs and gives, through a local swarm serving the shipped arithmetic model.

The same runs (N held-out questions of arith:test, CoT and SC K=10) with and without the calculator,
alternated (off, on, off, on: the machine's load drifts) after a warm-up that is not counted. Prints, per
run, accuracy, tokens/s and questions per minute (the bench's own figures: its wall time without
connecting or loading), the interventions and how often the model's own number was wrong, then the mean
of the repeats side by side. Forced tokens count as tokens: each is one decoding step of its row.

Usage: .venv/bin/python benchmarks/bench_calculator.py [--questions 30] [--repeats 2] [--methods cot,sc]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from petals_ops.lab import local_swarm  # noqa: E402
from petals_ops.bench.demo_step import ARITH_SC_TEMPERATURE  # noqa: E402
from petals_ops.bench.methods import MethodConfig  # noqa: E402
from petals_ops.bench.runner import BenchParams, ExecOptions, run_bench  # noqa: E402
from petals_ops.client.options import ClientOptions  # noqa: E402
from petals_ops.lab.tiny_model import ARITH_MODEL_DIR  # noqa: E402

PATHS = {"cot": 1, "sc": 10}


def run(work: Path, swarm, name: str, method: str, questions: int, calculator: bool) -> dict:
    cfg = MethodConfig(method=method, paths=PATHS[method], temperature=ARITH_SC_TEMPERATURE,
                       max_new_tokens=48, calculator=calculator)
    params = BenchParams(data="arith:test", limit=questions, run_dir=str(work / name),
                         client=ClientOptions(swarm_dir=swarm.run_dir), method=cfg, exec=ExecOptions())
    s = run_bench(params).summary
    calc = s.calculator or {}
    out = {"run": name, "method": method, "calculator": calculator, "correct": s.correct,
           "scored": s.scored, "tokens": s.tokens, "tokens_per_second": s.tokens_per_second,
           "questions_per_minute": s.questions_per_minute, "bench_wall_s": s.wall_seconds,
           "interventions": calc.get("interventions"), "model_wrong": calc.get("model_wrong"),
           "errors": s.errors}
    print(json.dumps(out), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--questions", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--methods", default="cot,sc")
    args = ap.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-calculator-") as tmp:
        work = Path(tmp)
        swarm = local_swarm.up(work / "swarm", servers=2, model_dir=ARITH_MODEL_DIR)
        try:
            run(work, swarm, "warm-up", "cot", 2, True)
            for method in methods:
                for rep in range(args.repeats):
                    for calc in (False, True):
                        name = f"{method}-{'calc' if calc else 'plain'}-{rep}"
                        results.append(run(work, swarm, name, method, args.questions, calc))
        finally:
            local_swarm.down(work / "swarm")
    print(f"\n{args.questions} held-out questions through a local swarm (2 CPU servers), "
          f"mean of {args.repeats}:")
    print("| run | accuracy | tokens | tokens/s | questions/min | interventions | model's own number wrong |")
    print("|---|---|---|---|---|---|---|")
    for method in methods:
        for calc in (False, True):
            rows = [r for r in results if r["method"] == method and r["calculator"] == calc]
            tps = statistics.mean(r["tokens_per_second"] for r in rows)
            qpm = statistics.mean(r["questions_per_minute"] for r in rows)
            r = rows[0]  # decoding is deterministic: the repeats give the same paths
            label = f"{method}{' K=10' if method == 'sc' else ''} {'with' if calc else 'without'} calculator"
            print(f"| {label} | {r['correct']}/{r['scored']} | {r['tokens']} | {tps:.1f} | {qpm:.1f} | "
                  f"{r['interventions'] if calc else '-'} | {r['model_wrong'] if calc else '-'} |")


if __name__ == "__main__":
    main()
