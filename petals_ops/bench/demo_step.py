"""The bench step of ``petals-ops demo``: a short CoT and SC run on the local swarm, then their report."""

from __future__ import annotations

import shutil
from pathlib import Path


def run(ctx) -> None:
    from petals_ops.bench import report
    from petals_ops.bench.methods import MethodConfig
    from petals_ops.bench.runner import BenchParams, run_bench

    out = Path(ctx.work_dir) / "bench"
    shutil.rmtree(out, ignore_errors=True)  # a demo measures afresh; resuming a finished run would measure nothing
    dirs = []
    for method, paths in (("cot", 1), ("sc", 4)):
        params = BenchParams(data="demo", limit=3, run_dir=str(out / f"gsm8k-{method}"), swarm_dir=ctx.swarm.run_dir,
                             method=MethodConfig(method=method, paths=paths, max_new_tokens=16))
        result = run_bench(params)
        s = result.summary
        print(f"{method}: {s['correct']}/{s['scored']} correct, {s['errors']} errors, {s['tokens']} tokens, "
              f"{s['tokens_per_second']:.1f} tokens/s; report {result.report_path}")
        dirs.append(result.run_dir)
    path, _ = report.compare(dirs, out / "report")
    print("the tiny model has random weights: its accuracy is near zero by design (this checks the machinery)")
    print(f"side-by-side report: {path}")
    print(path.read_text().split("\n\n")[2])  # the table
