"""``petals-ops bench``: GSM8K Chain-of-Thought / Self-Consistency runs through the swarm, and reports."""

import contextlib

import click

from petals_ops.bench.methods import METHODS, MethodConfig, get_method
from petals_ops.cli.options import DIR_PATH, SEED, client_options, retry_options
from petals_ops.cli.terminal import terminal
from petals_ops.util.output import OUTPUT_OPTION


GPU_HOUR_PRICE = click.option(
    "--gpu-hour-price", default=None, type=float, envvar="PETALS_OPS_GPU_HOUR_PRICE",
    help="Price of one GPU-hour (any currency): adds cost per question and per correct answer "
         "(GPU-hours = GPUs x wall time).")


@click.group()
def bench():
    """Experiments through the swarm: GSM8K with Chain-of-Thought and Self-Consistency."""


@bench.command("gsm8k")
@client_options
@retry_options(default_retries=2, unit="question")
@click.option("--data", default="demo", show_default=True,
              help="'demo' (the shipped demo set), gsm8k:test or gsm8k (the packaged GSM8K test split, "
                   "1319), gsm8k:train (7473), a GSM8K JSONL file (or the official checkout dir), or "
                   "hf:openai/gsm8k[:split].")
@click.option("--offset", default=0, show_default=True, type=int, help="Skip the first N problems.")
@click.option("--limit", default=None, type=int, help="Run at most N problems (after --offset/--sample).")
@click.option("--sample", default=None, type=int,
              help="A random subset of N problems (seeded by --sample-seed).")
@click.option("--sample-seed", default=0, show_default=True, type=SEED)
@click.option("--prompt-file", default=None, type=click.Path(dir_okay=False),
              help="Few-shot prompt set ('Q: ...\\nA: ... The answer is N.' blocks) [default: "
                   "the packaged 8-shot set, petals_ops/data/prompts/gsm8k_cot_8shot_petals_ops.txt].")
@click.option("--zero-shot", is_flag=True,
              help="No exemplars: 'Q: question\\nA:' alone (e.g. with --tuned-prompts).")
@click.option("--shots", default=None, type=click.IntRange(min=0),
              help="Use N of the prompt's exemplars (the first N, or a choice seeded by --shots-seed) "
                   "[default: all]. Part of the prompt's id.")
@click.option("--shots-seed", default=None, type=SEED, help="Choose the --shots exemplars by this seed.")
@click.option("--exemplar-order", default=None, type=SEED, metavar="SEED",
              help="Put the exemplars in an order seeded by SEED [default: as in the file]. Part of the "
                   "prompt's id.")
@click.option("--instruction", default="", help="A line of text before every 'Q:' (exemplars and question).")
@click.option("--answer-instruction", default="", help="A line of text before every question's first 'A:'.")
@click.option("--tuned-prompts", default=None, type=click.Path(),
              help="A 'petals-ops tune' run dir (or prompt file): the model prepends those prompts; their id "
                   "is part of the run's config and records.")
@click.option("--method", default="cot", show_default=True,
              help="; ".join(f"{m.name}: {m.help}" for m in METHODS.values()) + ".")
@click.option("--param", "method_params", multiple=True, metavar="NAME=VALUE",
              help="A setting of the method (repeatable); part of the run's config.")
@click.option("--paths", default=None, type=int,
              help="Paths per question, an adaptive method's maximum [default: the method's; "
                   + ", ".join(f"{m.name}: {m.default_paths}" for m in METHODS.values()) + "].")
@click.option("--temperature", default=0.7, show_default=True, type=float,
              help="Sampling temperature (methods that sample).")
@click.option("--top-k", default=40, show_default=True, type=int,
              help="Sampling top-k (0: no top-k).")
@click.option("--max-new-tokens", default=256, show_default=True, type=int,
              help="Per path; stops earlier at the next 'Q:'.")
@click.option("--seed", default=0, show_default=True, type=SEED, help="Seed of the sampled paths.")
@click.option("--calculator", is_flag=True,
              help="When a path writes an arithmetic expression and '=', force the exact result as its next "
                   "tokens (same session; one decoding step per forced token). Part of the run's config.")
@click.option("--run-dir", default=None, type=DIR_PATH,
              help="Where records.jsonl, summary.json and report.md go; the same command resumes [default: "
                   "bench-runs/gsm8k-METHOD, gsm8k-METHOD-calculator with --calculator].")
@click.option("--concurrency", default=1, show_default=True, type=int, help="Questions in flight at once.")
@click.option("--batch-size", default=None, type=int,
              help="Paths per inference session [default: all K, fewer if the servers' free cache is short].")
@click.option("--timeout", default=600.0, show_default=True, type=float, help="Seconds per question attempt.")
@click.option("--gpus", default=None, type=int,
              help="GPUs serving the run, for its GPU-hours [default: the servers online at start; "
                   "1 for the local backend].")
@GPU_HOUR_PRICE
@OUTPUT_OPTION
def gsm8k(client, retry, data, offset, limit, sample, sample_seed, prompt_file, zero_shot, shots, shots_seed,
          exemplar_order, instruction, answer_instruction, tuned_prompts, method, method_params, paths,
          temperature, top_k, max_new_tokens, seed, calculator, run_dir, concurrency, batch_size, timeout,
          gpus, gpu_hour_price, output):
    """Run GSM8K with 8-shot CoT (greedy) or Self-Consistency; records go to RUN_DIR as they finish.

    Interrupted (Ctrl-C, crash, kill)? Run the same command again: it skips the questions already done.
    With the tiny local-swarm model (random weights) accuracy is near zero by design.
    """
    from petals_ops.bench import report
    from petals_ops.bench.prompts import Template
    from petals_ops.bench.runner import BenchParams, ExecOptions, run_bench

    if shots_seed is not None and shots is None:
        from petals_ops.util.errors import InputError

        raise InputError("--shots-seed needs --shots N (how many exemplars to choose)", fix="add --shots N")
    template = Template(shots=shots, shots_seed=shots_seed, order=exemplar_order, instruction=instruction,
                        answer_instruction=answer_instruction).validate()
    impl = get_method(method)
    cfg = MethodConfig(method=method, paths=paths if paths is not None else impl.default_paths,
                       temperature=temperature, top_k=top_k or None, max_new_tokens=max_new_tokens, seed=seed,
                       calculator=calculator, params=impl.parse_params(method_params))
    default_run_dir = f"bench-runs/gsm8k-{method}" + ("-calculator" if calculator else "")
    params = BenchParams(
        data=data, offset=offset, limit=limit, sample=sample, sample_seed=sample_seed,
        prompt_file=prompt_file, zero_shot=zero_shot, template=template, tuned_prompts=tuned_prompts,
        method=cfg,
        run_dir=run_dir or default_run_dir, client=client,
        exec=ExecOptions(concurrency=concurrency, retries=retry.retries, timeout=timeout,
                         backoff=retry.backoff, batch_size=batch_size),
        gpus=gpus, gpu_hour_price=gpu_hour_price,
    )
    with contextlib.ExitStack() as stack:
        shown = _BenchProgress(stack)
        result = run_bench(params, on_start=shown.start, on_record=shown.record)
    s = result.summary
    if output == "json":
        terminal.json(s.to_dict())
    else:
        terminal.echo(report.brief(s))
        terminal.echo(f"report: {result.report_path}")
    if s.errors:
        from petals_ops.util.errors import PartialFailure

        raise PartialFailure(f"{s.errors} of {s.n} questions ended in an error record "
                             f"(see {result.run_dir}/records.jsonl)",
                             fix="run the same command again to retry them")


RUN_JSON_FIELDS = ("run_dir", "method", "paths", "n", "scored", "errors", "accuracy", "accuracy_wilson95",
                   "tokens", "tokens_per_second")  # then each figure of the run, by its key


@bench.command("report")
@click.argument("run_dirs", nargs=-1, required=True, type=DIR_PATH)
@click.option("--out", default="bench-report", show_default=True, type=DIR_PATH,
              help="Where the comparison report.md and plot go.")
@click.option("--pairs/--no-pairs", default=True, show_default=True,
              help="Compare each pair of runs question by question (paired 95% interval, exact McNemar "
                   "test); needs runs of the same model on the same questions.")
@GPU_HOUR_PRICE
@OUTPUT_OPTION
def report_cmd(run_dirs, out, pairs, gpu_hour_price, output):
    """Compare bench runs: side by side, and each pair A B on the same questions.

    For a pair, the accuracy difference B - A comes with a paired 95% interval and an exact McNemar
    p-value, from the questions one run got right and the other wrong.
    """
    from petals_ops.bench import cost, report

    path, summaries, paired = report.compare(run_dirs, out, pairs=pairs, gpu_hour_price=gpu_hour_price)
    if output == "json":
        terminal.json({"report": str(path),
                       "runs": [{**{k: getattr(s, k) for k in RUN_JSON_FIELDS},
                                 **{f.key: f.value for f in s.figures}, "cost": s.cost} for s in summaries],
                       "pairs": [{"a": p.a.run_dir, "b": p.b.run_dir, "excluded": p.excluded,
                                  **p.comparison.to_dict(), "cost": p.cost}
                                 for p in paired]})
        return
    terminal.table(report.headers(summaries), report.table_rows(summaries),
                   title=f"{report.data_name(summaries)} bench runs")
    if paired:
        terminal.table(report.PAIR_HEADERS, report.pair_rows(paired), title="Paired comparisons (B - A)")
        terminal.table(cost.PAIR_HEADERS, report.pair_cost_rows(paired),
                       title="What B's answers cost against A's (same questions)")
    terminal.echo(f"report: {path}")


@bench.command("errors")
@click.argument("run_dir", type=DIR_PATH)
@click.option("--category", default=None,
              help="Only this category (correct, repetition, out_of_tokens, no_answer, "
                   "arithmetic_slip, wrong_answer).")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1),
              help="Rows to show in the table.")
@OUTPUT_OPTION
def errors_cmd(run_dir, category, limit, output):
    """Every scored path of a run with its failure category: why the wrong ones were wrong.

    Categories: repetition (a loop), out_of_tokens, no_answer, arithmetic_slip (a false 'a op b = c'
    in the rationale, checked exactly), wrong_answer, and correct.
    """
    from collections import Counter

    from petals_ops.bench import report

    rows = report.errors_of(run_dir, category)
    if output == "json":
        terminal.json(rows)
        return
    counts = Counter(r["category"] for r in rows)
    shown = [r for r in rows if category is not None or r["category"] != "correct"][:limit]
    terminal.table(["question", "path", "category", "answer", "gold", "slip", "text"],
                 [[r["id"], r["path"], r["category"], r["answer"], r["gold"],
                   f"{r['slip']} (is {r['slip_true_value']})" if r["slip"] else "",
                   " ".join(r["text"].split())[:90]] for r in shown],
                 title=f"{len(shown)} of {len(rows)} paths "
                       f"({', '.join(f'{k} {v}' for k, v in counts.most_common())})")


class _BenchProgress:
    """done/total, accuracy so far, tokens/s and ETA: a terminal progress bar opened on ``stack`` once the
    run says how many questions are left."""

    def __init__(self, stack: contextlib.ExitStack):
        self.stack = stack
        self.bar = None

    def start(self, progress, run_info):
        terminal.info(
            f"{run_info['done_before']} of {run_info['n']} questions already done; {run_info['todo']} to run"
            + (f"; {run_info['batch_size']} paths per batch ({run_info['batch_note']})"
               if run_info["todo"] else ""))
        if run_info["todo"]:
            self.bar = self.stack.enter_context(terminal.progress(
                "gsm8k", fields=("acc", "tok/s"), total=progress.total, completed=progress.done))

    def record(self, record, progress):
        acc = "-" if progress.accuracy is None else f"{100 * progress.accuracy:.1f}%"
        tps = f"{progress.tokens_per_second:.1f}"
        left = progress.total - progress.done
        eta = progress.elapsed / progress.done * left if progress.done else 0.0
        state = f"error: {record.error[:80]}" if record.error else ("correct" if record.correct else "wrong")
        self.bar.update(progress.done, acc=acc, **{"tok/s": tps},
                        line=f"[{progress.done}/{progress.total}] {record.id} {state}; acc {acc}, {tps} "
                             f"tokens/s, ETA {eta:.0f} s")


class _SweepGroup(click.Group):
    """``bench sweep SPEC`` runs a sweep (the ``run`` subcommand, named or not); ``bench sweep report``."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


@bench.group("sweep", cls=_SweepGroup)
def sweep():
    """A grid of bench runs (seeds x shots x exemplar order x prompt set x method x temperature), and its
    report: `bench sweep SPEC` runs or resumes it, `bench sweep report SWEEP_DIR` reports it."""


def _list_option(name, help_text):
    return click.option(f"--{name.replace('_', '-')}", name, default=None, metavar="A,B,...", help=help_text)


@sweep.command("run")
@click.argument("spec", required=False, type=click.Path(dir_okay=False))
@client_options
@retry_options(default_retries=2, unit="question")
@click.option("--sweep-dir", default=None, type=DIR_PATH,
              help="Where the sweep's run dirs (runs/NAME), sweep.json and report.md go; the same command "
                   "resumes [default: bench-sweeps/SPEC's stem, or bench-sweeps/sweep].")
@click.option("--data", default=None, help="As bench gsm8k --data (spec key data).")
@click.option("--limit", default=None, type=click.IntRange(min=1), help="Spec key limit.")
@_list_option("seeds", "Sampling seeds, the replicates (spec key seeds).")
@_list_option("shots", "Numbers of exemplars, 'all' for all (spec key shots).")
@_list_option("orders", "Exemplar orders: seeds, 'file' for as written (spec key orders).")
@_list_option("temperatures", "Sampling temperatures (spec key temperatures).")
@click.option("--methods", default=None, metavar="M,M@K,...",
              help="Methods, '@K' for K paths, e.g. cot,sc@10 (spec key methods).")
@click.option("--prompts", default=None, metavar="default,FILE,...",
              help="Prompt files, 'default' for the data's own (spec key prompts; instructions: in a spec).")
@click.option("--max-new-tokens", default=None, type=click.IntRange(min=1), help="Spec key max_new_tokens.")
@click.option("--baseline", default=None, help="The configuration the report compares the others with.")
@click.option("--concurrency", default=1, show_default=True, type=int, help="Questions in flight at once.")
@click.option("--batch-size", default=None, type=int,
              help="Paths per inference session [default: all K, fewer if the servers' free cache is short].")
@click.option("--timeout", default=600.0, show_default=True, type=float, help="Seconds per question attempt.")
@click.option("--dry-run", is_flag=True,
              help="Print the runs and an upper bound of their decoding steps and time; run nothing.")
@click.option("--steps-per-second", default=0.83, show_default=True,
              type=click.FloatRange(min=0, min_open=True),
              help="For --dry-run's time: one session's steps/s (0.83: the Petals paper's 14-server "
                   "BLOOM-176B swarm).")
@click.option("--gpus", default=None, type=click.IntRange(min=1),
              help="GPUs serving the runs, for their GPU-hours (and --dry-run's) [default: the servers "
                   "online at each run's start; 1 for the local backend].")
@GPU_HOUR_PRICE
@OUTPUT_OPTION
def sweep_run(spec, client, retry, sweep_dir, data, limit, seeds, shots, orders, temperatures, methods,
              prompts, max_new_tokens, baseline, concurrency, batch_size, timeout, dry_run, steps_per_second,
              gpus, gpu_hour_price, output):
    """Run (or resume) the grid SPEC (YAML; options override its keys): every run an ordinary run dir.

    Interrupted? The same command resumes the whole sweep. At the end, the report is written to the sweep
    dir (see `bench sweep report`).
    """
    from pathlib import Path

    from petals_ops.bench import report, sweep_report
    from petals_ops.bench import sweep as sweeps
    from petals_ops.bench.runner import ExecOptions

    overrides = {k: v for k, v in (("data", data), ("limit", limit), ("max_new_tokens", max_new_tokens),
                                   ("baseline", baseline)) if v is not None}
    for key, text in (("seeds", seeds), ("shots", shots), ("orders", orders), ("temperatures", temperatures)):
        if text is not None:
            overrides[key] = sweeps.option_list(key, text)
    if methods is not None:
        overrides["methods"] = sweeps.methods_option(methods)
    if prompts is not None:
        overrides["prompts"] = sweeps.prompts_option(prompts)
    parsed = sweeps.load_spec(spec, overrides)
    sweep_dir = sweep_dir or f"bench-sweeps/{Path(spec).stem if spec else 'sweep'}"
    opts = ExecOptions(concurrency=concurrency, retries=retry.retries, timeout=timeout, backoff=retry.backoff,
                       batch_size=batch_size)

    if dry_run:
        _show_plan(parsed, batch_size, concurrency, steps_per_second, gpus, gpu_hour_price, output)
        return

    shown = {}  # the current run's progress bar (closed when the run ends)

    def on_run(i, total, run):
        terminal.info(f"[run {i + 1}/{total}] {run.name}")
        shown["stack"] = contextlib.ExitStack()
        shown["bar"] = _BenchProgress(shown["stack"])

    def on_result(result):
        shown.pop("stack").close()
        terminal.info(f"  {report.brief(result.summary)}")

    try:
        result = sweeps.run_sweep(parsed, sweep_dir, client, opts, gpus=gpus, gpu_hour_price=gpu_hour_price,
                                  on_run=on_run, on_result=on_result,
                                  on_start=lambda *a: shown["bar"].start(*a),
                                  on_record=lambda *a: shown["bar"].record(*a))
    finally:
        if "stack" in shown:
            shown.pop("stack").close()
    built = sweep_report.build(result.sweep_dir)
    _show_sweep_report(built, output)
    if result.errors:
        from petals_ops.util.errors import PartialFailure

        raise PartialFailure(f"{result.errors} questions of the sweep ended in an error record",
                             fix="run the same command again to retry them")


@sweep.command("report")
@click.argument("sweep_dir", type=DIR_PATH)
@click.option("--out", default=None, type=DIR_PATH,
              help="Where report.md and sweep.png go [default: SWEEP_DIR].")
@click.option("--baseline", default=None,
              help="The configuration the others are compared with [default: the spec's baseline, else the "
                   "first configuration].")
@OUTPUT_OPTION
def sweep_report_cmd(sweep_dir, out, baseline, output):
    """Per configuration: mean accuracy, SD across seeds/orders, 95% CI; each configuration against the
    baseline on the same questions (exact paired sign-flip test, Holm-corrected); a plot by shots, by
    order, by method. Works on an unfinished sweep (what has records)."""
    from petals_ops.bench import sweep_report

    _show_sweep_report(sweep_report.build(sweep_dir, out, baseline), output)


def _show_plan(spec, batch_size, concurrency, steps_per_second, gpus, price, output):
    from petals_ops.bench import sweep as sweeps

    plan = sweeps.plan_sweep(spec)
    est = sweeps.estimate(spec, plan, batch_size)
    days = est.steps / steps_per_second / concurrency / 86400
    gpu_hours = gpus * days * 24 if gpus else None  # bench.cost's definition: GPUs x wall time
    cost = gpu_hours * price if gpu_hours is not None and price is not None else None
    if output == "json":
        terminal.json({"configs": list(plan.configs), "cells": len(plan.cells),
                       "run_names": [r.name for r in plan.runs], **vars(est),
                       "steps_per_second": steps_per_second, "concurrency": concurrency,
                       "days_at_most": days, "gpu_hours_at_most": gpu_hours, "cost_at_most": cost})
        return
    terminal.table(["configuration", "runs"],
                   [[label, str(len({c.run for c in cells}))] for label, cells in plan.configs.items()],
                   title=f"{len(plan.cells)} grid points, {est.runs} distinct runs of {est.questions} "
                         "questions")
    terminal.echo(f"at most {est.steps:,} decoding steps in {est.sessions:,} sessions; at "
                  f"{steps_per_second:g} steps/s and {concurrency} in flight: at most {days:.1f} days"
                  + (f", {gpu_hours:,.0f} GPU-hours on {gpus} GPUs" if gpu_hours is not None else "")
                  + (f", {cost:,.0f} at {price:g} per GPU-hour" if cost is not None else ""))


def _show_sweep_report(built, output):
    from petals_ops.bench import sweep_report

    if output == "json":
        terminal.json(built.to_dict())
        return
    terminal.table(sweep_report.STATS_HEADERS, sweep_report.stats_rows(built.stats),
                   title="Configurations (mean over runs; SD across seeds/orders)")
    if built.comparisons:
        terminal.table(sweep_report.PAIR_HEADERS, sweep_report.pair_rows(built.comparisons),
                       title=f"Against {built.baseline} (exact sign-flip test, Holm-corrected)")
    if built.missing:
        terminal.info(f"{len(built.missing)} runs have no records yet: resume the sweep to complete them")
    terminal.echo(f"report: {built.path}")
