"""The bench step of ``petals-ops demo``: CoT and SC through the local swarm on the trained arithmetic
model's held-out problems, then their paired comparison and error analysis."""

from __future__ import annotations

import shutil
from pathlib import Path

DEMO_METHODS = ("cot", "sc")  # each with its default number of paths; compared in this order
DEMO_QUESTIONS = 40
DEMO_CONCURRENCY = 4
DEMO_MAX_NEW_TOKENS = 48
# SC's sampling temperature on the arithmetic model: its reasoning orders are about equally likely, so a
# moderate temperature already spreads the paths over orders while keeping the digits sharp (measured on
# 400 held-out problems: 0.5 beat 0.7; hotter sampling adds digit noise faster than the vote removes it).
ARITH_SC_TEMPERATURE = 0.5


def run(ctx, *, questions: int = DEMO_QUESTIONS) -> None:
    from petals_ops.bench import report
    from petals_ops.bench.methods import MethodConfig, get_method
    from petals_ops.bench.runner import BenchParams, ExecOptions, run_bench
    from petals_ops.client.options import ClientOptions
    from petals_ops.util.output import render_table

    out = Path(ctx.work_dir) / "bench"
    # a demo measures afresh; resuming a finished run would measure nothing
    shutil.rmtree(out, ignore_errors=True)
    dirs = []
    for method in DEMO_METHODS:
        params = BenchParams(data="arith:test", limit=questions, run_dir=str(out / f"arith-{method}"),
                             client=ClientOptions(swarm_dir=ctx.swarm.run_dir),
                             method=MethodConfig(method=method, paths=get_method(method).default_paths,
                                                 temperature=ARITH_SC_TEMPERATURE,
                                                 max_new_tokens=DEMO_MAX_NEW_TOKENS),
                             exec=ExecOptions(concurrency=DEMO_CONCURRENCY))
        result = run_bench(params)
        s = result.summary
        print(f"{method}: {s.correct}/{s.scored} correct ({100 * (s.accuracy or 0):.1f}%), "
              f"{s.errors} errors, {s.questions_per_minute or 0:.0f} questions/min, "
              f"{s.tokens_per_second or 0:.1f} tokens/s")
        dirs.append(result.run_dir)
    path, summaries, pairs = report.compare(dirs, out / "report")
    names = " and ".join(DEMO_METHODS)
    render_table(report.headers(summaries), report.table_rows(summaries),
                 title=f"{names} through the swarm (arith:test)")
    render_table(report.PAIR_HEADERS, report.pair_rows(pairs),
                 title="Paired on the same questions (B minus A)")
    render_table(["category", *[Path(s.run_dir).name for s in summaries]], category_rows(summaries),
                 title="Error analysis: paths per category")
    print(f"report: {path}")


def category_rows(summaries) -> list[list[str]]:
    from petals_ops.bench.analysis import CATEGORIES

    rows = []
    for name in CATEGORIES:
        counts = [int((s.categories or {}).get("counts", {}).get(name, 0)) for s in summaries]
        rows.append([name, *map(str, counts)])
    return rows
