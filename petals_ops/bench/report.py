"""``summary.json`` and ``report.md`` (with a PNG plot) of a run, and the side-by-side comparison.

Accuracy counts the questions that got an answer record (errors are reported separately, not scored);
its 95% interval is Wilson's. What a method adds (SC's maj@k curve, pass@K, agreement...) are its
figures (:mod:`petals_ops.bench.figures`), rendered here by their descriptions: this module never names a
method. The plot draws each run's curves against the number of paths, and the accuracy of a run without
a curve as a horizontal line.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from collections.abc import Sequence
from pathlib import Path

from petals_ops.bench import cost
from petals_ops.bench.analysis import CATEGORIES, summarize_categories
from petals_ops.bench.arithmetic import first_slip, format_fraction
from petals_ops.bench.calculator import summarize_interventions
from petals_ops.bench.figures import Figure, FigureSpec, pct
from petals_ops.bench.methods import MethodConfig
from petals_ops.bench.paired import PairedComparison, compare_paired
from petals_ops.bench.records import QuestionRecord, RunSummary, parse_record
from petals_ops.bench.stats import wilson_interval
from petals_ops.bench.store import CONFIG_FILE, RECORDS_FILE, SUMMARY_FILE, latest_by_id, read_records
from petals_ops.util.errors import InputError
from petals_ops.util.fsutil import write_atomic, write_json_atomic

PLOT_FILE = "maj_at_k.png"
REPORT_FILE = "report.md"


def load_records(run_dir: Path, problems=None) -> list[QuestionRecord]:
    """The latest record of each question (of ``problems`` if given), typed. A line that is not a whole
    record (hand-edited, another version) is left out: its question counts as not done."""
    lines = read_records(run_dir)
    typed = {id(line): parse_record(line) for line in lines}  # each line typed once
    latest = latest_by_id([line for line in lines if typed[id(line)] is not None])
    if problems is not None:
        wanted = {p.id for p in problems}
        latest = {rid: r for rid, r in latest.items() if rid in wanted}
    return [typed[id(r)] for r in latest.values()]


def _previous(run_dir: Path, config: dict) -> RunSummary | None:
    """The summary an earlier invocation of this config wrote here (None when there is none it can read,
    or it was another config's)."""
    try:
        prev = RunSummary.from_dict(json.loads((run_dir / SUMMARY_FILE).read_text()))
    except (OSError, ValueError, TypeError, RecursionError):
        return None
    return prev if prev.config == config else None


def summarize(run_dir: Path, config: dict, problems, *, progress=None, backend: str | None = None,
              snapshot=None, run_info: dict | None = None, exec_options=None, gpus: int | None = None,
              gpu_hour_price: float | None = None) -> RunSummary:
    records = load_records(run_dir, problems)
    ok = [r for r in records if not r.error]
    errors = [r for r in records if r.error]
    correct = sum(bool(r.correct) for r in ok)
    low, high = wilson_interval(correct, len(ok))
    paths = [p for r in ok for p in r.paths]
    prev = _previous(run_dir, config)
    wall_before = prev.wall_seconds_total if prev is not None else 0.0
    wall = progress.elapsed if progress is not None else 0.0
    generated_now = progress is not None and progress.tokens > 0
    # a resume with nothing left to do keeps the figures of the runs that did the work
    if not generated_now and prev is not None:
        backend = prev.backend
    served = Counter(peer for r in ok for peer in r.servers)
    cfg = MethodConfig.from_dict(config["method"])
    # a resume with nothing to do keeps the working runs' figures
    if not generated_now and prev is not None and prev.tokens_per_second:
        tps, qpm = prev.tokens_per_second, prev.questions_per_minute
    elif progress is not None:
        tps, qpm = round(progress.tokens_per_second, 3), round(60 * progress.done / max(wall, 1e-9), 3)
    else:
        tps = qpm = None
    method = cfg.impl
    values = method.summary_figures(ok, cfg)
    before = (prev.cost if prev is not None else None) or {}
    online = len({s.peer_id for s in snapshot.servers if s.state == "ONLINE"}) if snapshot is not None else 0
    gpus = gpus or online or before.get("gpus") or 1
    price = gpu_hour_price if gpu_hour_price is not None else before.get("gpu_hour_price")
    summary = RunSummary(
        run_dir=str(run_dir),
        method=cfg.method,
        paths=cfg.paths,
        backend=backend,
        n=len(problems),
        done=len(records),
        missing=len(problems) - len(records),
        scored=len(ok),
        errors=len(errors),
        error_ids=[r.id for r in errors][:50],
        correct=correct,
        accuracy=correct / len(ok) if ok else None,
        accuracy_wilson95=[low, high],
        invalid_path_rate=(sum(p.answer is None for p in paths) / len(paths)) if paths else None,
        finish_reasons=dict(Counter(p.finish for p in paths)),
        extraction=dict(Counter(p.how for p in paths)),
        categories=summarize_categories(ok),
        tokens=sum(r.tokens for r in ok),
        prompt_tokens_mean=(sum(r.prompt_tokens for r in ok) / len(ok)) if ok else None,
        wall_seconds=round(wall, 3),
        wall_seconds_total=round(wall_before + wall, 3),
        tokens_this_invocation=progress.tokens if progress is not None else 0,
        tokens_per_second=tps,
        questions_per_minute=qpm,
        run=run_info or {},
        exec=vars(exec_options) if exec_options is not None else {},
        config=config,
        servers_served=dict(served),
        swarm=[
            {"peer_id": s.peer_id, "blocks": f"{s.start_block}:{s.end_block}", "state": s.state,
             "torch_dtype": s.torch_dtype, "quant_type": s.quant_type, "version": s.version,
             "cache_tokens_left": s.cache_tokens_left}
            for s in (snapshot.servers if snapshot is not None else [])
        ],
        written_at=time.time(),
        calculator=summarize_interventions(ok) if cfg.calculator else None,
        cost=cost.run_cost(ok, wall_seconds=round(wall_before + wall, 3), gpus=gpus, gpu_hour_price=price),
        figures=tuple(Figure(spec, values.get(spec.key)) for spec in method.figures),
    )
    write_json_atomic(run_dir / SUMMARY_FILE, summary.to_dict())
    return summary


def _label(summary: RunSummary) -> str:
    name = Path(summary.run_dir).name
    calc = " +calculator" if summary.calculator is not None else ""
    return f"{name} ({summary.method}{'' if summary.paths == 1 else ' K=' + str(summary.paths)}{calc})"


def data_name(summaries: Sequence[RunSummary]) -> str:
    """What the runs were measured on, for titles: ``arith:test``, ``gsm8k:test``, a file's name."""
    names = []
    for s in summaries:
        source = s.identity.data.source
        names.append(source if source.startswith("hf:") or "/" not in source else Path(source).name)
    return " / ".join(dict.fromkeys(names)) or "bench"


def figure(summaries: Sequence[RunSummary]):
    """The plot as a matplotlib figure (Agg): each run's curve figures (maj@k...) against the number of
    paths, and the accuracy of a run without a curve as a horizontal line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    x_max = 1
    for s in summaries:
        curves = [(f.spec, f.spec.points(f.value)) for f in s.figures if f.spec.kind == "curve"]
        curves = [(spec, points) for spec, points in curves if points]
        for spec, points in curves:
            x_max = max(x_max, points[-1][0])
            ax.plot([x for x, _ in points], [100 * v for _, v in points], marker="o",
                    label=f"{spec.label}: {_label(s)}")
        if not curves and s.accuracy is not None:
            ax.axhline(100 * s.accuracy, linestyle="--", color="gray", label=f"accuracy: {_label(s)}")
    ax.set_xlim(0.5, x_max + 0.5)
    ax.set_xlabel("paths k")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{data_name(summaries)}: accuracy against the number of paths")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best")
    else:  # every record is an error: nothing to draw (an empty legend makes matplotlib warn on stderr)
        ax.text(0.5, 0.5, "no scored questions", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    return fig


def plot(summaries: Sequence[RunSummary], path: Path) -> Path:
    """Save :func:`figure` as a PNG."""
    import matplotlib.pyplot as plt

    fig = figure(summaries)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path


def _columns(summaries: Sequence[RunSummary]) -> list[FigureSpec]:
    """The figures that are table columns, over all runs, in the order they first appear."""
    specs: dict[str, FigureSpec] = {}
    for s in summaries:
        for f in s.figures:
            if f.spec.column:
                specs.setdefault(f.key, f.spec)
    return list(specs.values())


def headers(summaries: Sequence[RunSummary]) -> list[str]:
    """The runs table's headers: the common columns, then those of each figure that is a column."""
    return ["run", "n", "scored", "errors", "accuracy", "Wilson 95%",
            *(h for spec in _columns(summaries) for h in spec.headers()), "tokens", "wall s", "tokens/s",
            *cost.COLUMNS]


def table_rows(summaries: Sequence[RunSummary]) -> list[list[str]]:
    """The runs table's rows (see :func:`headers`; a figure a run does not report is left empty)."""
    columns = _columns(summaries)
    rows = []
    for s in summaries:
        own = {f.key: f for f in s.figures}
        cells = [cell for c in columns for cell in
                 (own[c.key].spec.cells(own[c.key].value) if c.key in own else [""] * len(c.headers()))]
        rows.append([
            _label(s), str(s.n), str(s.scored), str(s.errors), pct(s.accuracy),
            f"[{pct(s.accuracy_wilson95[0])}, {pct(s.accuracy_wilson95[1])}]", *cells,
            str(s.tokens), f"{s.wall_seconds_total:.1f}", f"{s.tokens_per_second or 0:.1f}",
            *cost.cells(s.cost),
        ])
    return rows


def brief(summary: RunSummary) -> str:
    """The run's result in one line (``bench gsm8k``)."""
    low, high = summary.accuracy_wilson95
    line = (f"{summary.method}: {summary.correct}/{summary.scored} correct ({pct(summary.accuracy)}, "
            f"Wilson 95% [{pct(low)}, {pct(high)}]), {summary.errors} errors, {summary.tokens} tokens, "
            f"{summary.tokens_per_second or 0:.1f} tokens/s")
    line += "".join(f", {f.spec.short(f.value)}" for f in summary.figures if f.spec.brief)
    calc = summary.calculator
    if calc is not None:
        line += (f", calculator: {calc['interventions']} interventions, the model's own number wrong in "
                 f"{calc['model_wrong']}")
    return line


def _markdown(summaries: Sequence[RunSummary], plot_name: str, title: str, pairs: Sequence[Pair] = ()) -> str:
    heads = headers(summaries)
    notes = {f.key: f"{f.spec.label}: {f.spec.note}." for s in summaries for f in s.figures if f.spec.note}
    lines = [f"# {title}", "",
             "Accuracy = correct / scored questions (error records are counted apart); interval: Wilson 95%.",
             *notes.values(), cost.NOTE, "",
             "| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(summaries)]
    lines += ["", f"![accuracy against paths]({plot_name})", ""]
    for s in summaries:
        run = s.identity
        lines += [f"## {_label(s)}", "",
                  f"- model `{run.model.name}` (DHT prefix `{run.model.dht_prefix}`), backend {s.backend}",
                  f"- prompt `{run.prompt.id}` ({run.prompt.exemplars} exemplars)",
                  (f"- data `{run.data.source}` (sha256 {run.data.sha256[:12]}…), offset {run.data.offset}, "
                   f"limit {run.data.limit}, sample {run.data.sample}"),
                  f"- method {json.dumps(run.method)}",
                  (f"- invalid paths {pct(s.invalid_path_rate)}, finish reasons {s.finish_reasons}, "
                   f"extraction {s.extraction}")]
        lines += [f"- {f.spec.label}: {f.spec.text(f.value)}" for f in s.figures]
        lines.append(f"- {cost.describe(s.cost)}")
        calc = s.calculator
        if calc is not None:
            per_q = "n/a" if calc.get("per_question") is None else f"{calc['per_question']:.2f}"
            lines.append(f"- calculator: {calc.get('interventions')} interventions ({per_q} per question, in "
                         f"{calc.get('paths_with_interventions')} paths); "
                         "the model's own number was wrong in "
                         f"{calc.get('model_wrong')} of {calc.get('model_wrong_known')} "
                         f"({pct(calc.get('model_wrong_rate'))})")
        if s.servers_served:
            lines += ["- servers that served: "
                      f"{', '.join(f'{p[:12]}… ({n})' for p, n in s.servers_served.items())}"]
        lines += ["", *_categories_markdown(s.categories or {})]
    if pairs:
        lines += ["## Paired comparisons (same questions)", "",
                  "diff = accuracy of B minus A on the questions both runs scored; 95% interval: "
                  "Newcombe's hybrid score for paired data; p: exact McNemar test on the discordant "
                  "questions.", "",
                  "| " + " | ".join(PAIR_HEADERS) + " |", "|" + "---|" * len(PAIR_HEADERS)]
        lines += ["| " + " | ".join(row) + " |" for row in pair_rows(pairs)]
        lines += ["", "What B's answers cost against A's on the same questions (ratios of sums over them; "
                  "per extra correct: B's extra cost over its extra correct answers, when it has any).", "",
                  "| " + " | ".join(cost.PAIR_HEADERS) + " |", "|" + "---|" * len(cost.PAIR_HEADERS)]
        lines += ["| " + " | ".join(row) + " |" for row in pair_cost_rows(pairs)]
        lines.append("")
    return "\n".join(lines)


def _category_rank(name: str) -> int:
    """The categories in their documented order (summary.json sorts its keys by name)."""
    order = list(CATEGORIES)
    return order.index(name) if name in order else len(order)


def _categories_markdown(categories: dict) -> list[str]:
    counts = categories.get("counts") or {}
    total = sum(counts.values())
    if not total:
        return []
    lines = [f"### Error analysis ({total} scored paths)", "", "| category | paths | share | meaning |",
             "|---|---|---|---|"]
    lines += [f"| {name} | {n} | {pct(n / total)} | {CATEGORIES.get(name, '')} |"
              for name, n in sorted(counts.items(), key=lambda item: _category_rank(item[0]))]
    if categories.get("correct_with_slip"):
        lines.append(f"\n{categories['correct_with_slip']} correct paths have an arithmetic slip "
                     "in their rationale.")
    for name, examples in (categories.get("examples") or {}).items():
        if name == "correct" or not examples:
            continue
        lines += ["", f"{name}:"]
        for ex in examples:
            detail = f"; `{ex['equation']}` is {ex['true_value']}" if ex.get("equation") else ""
            lines.append(f"- {ex['id']} path {ex['path']}: answer {ex['answer']}, gold {ex['gold']}{detail}: "
                         f"`{' '.join(str(ex['excerpt']).split())}`")
    lines.append("")
    return lines


def write_run_report(run_dir: Path, summary: RunSummary) -> Path:
    plot([summary], run_dir / PLOT_FILE)
    path = run_dir / REPORT_FILE
    write_atomic(path, _markdown([summary], PLOT_FILE, f"{data_name([summary])} bench: {_label(summary)}"))
    return path


def load_summary(run_dir: str | Path) -> RunSummary:
    path = Path(run_dir) / SUMMARY_FILE
    if not path.is_file():
        raise InputError(f"{run_dir} has no {SUMMARY_FILE}",
                         fix="pass run dirs made by 'petals-ops bench gsm8k'")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise InputError(f"{path} is not valid JSON ({e})", fix="re-run the bench to rewrite it") from e
    try:
        summary = RunSummary.from_dict(data)  # ValueError for anything but a summary, a non-object too
    except (ValueError, TypeError) as e:
        raise InputError(f"{path} is not a bench summary ({e})", fix="re-run the bench to rewrite it") from e
    return replace(summary, run_dir=str(run_dir))  # where the run is now: run dirs are copied and moved


def load_run(run_dir: str | Path) -> tuple[RunSummary, list[QuestionRecord]]:
    """A run dir's summary and records, both read from ``run_dir`` itself (never from the path the summary
    stores: an archived or moved run dir would otherwise be paired with whatever now lives there). A
    summary that does not belong to the config and records beside it is refused: it would describe
    another run."""
    summary = load_summary(run_dir)
    run = Path(run_dir)
    for name in (CONFIG_FILE, RECORDS_FILE):
        if not (run / name).is_file():
            raise InputError(f"{run_dir} has {SUMMARY_FILE} but no {name}",
                             fix="pass the whole run dir (copy every file of it), or re-run the bench there")
    try:
        config = json.loads((run / CONFIG_FILE).read_text())
    except (ValueError, OSError, RecursionError):
        config = None
    if config != summary.config:
        raise InputError(f"{run_dir}: {SUMMARY_FILE} was written for another config than its {CONFIG_FILE}",
                         fix="run the same bench command on that run dir again to rewrite the summary")
    records = load_records(run)
    ok = [r for r in records if not r.error]
    seen = {"scored": len(ok), "correct": sum(bool(r.correct) for r in ok), "errors": len(records) - len(ok)}
    stated = {k: getattr(summary, k) for k in seen}
    if seen != stated:
        says = ", ".join(f"{k} {v}" for k, v in stated.items())
        found = ", ".join(f"{k} {v}" for k, v in seen.items())
        raise InputError(f"{run_dir}: {SUMMARY_FILE} disagrees with its {RECORDS_FILE} (summary: {says}; "
                         f"records: {found})",
                         fix="run the same bench command on that run dir again to rewrite the summary")
    return summary, records


@dataclass(frozen=True)
class Pair:
    a: RunSummary
    b: RunSummary
    comparison: PairedComparison
    excluded: int  # questions of the set not scored in both runs (error records)
    cost: dict = field(default_factory=dict)  # B's cost against A's on the paired questions (bench.cost)


def pair_runs(a: RunSummary, b: RunSummary) -> Pair:
    """Pair two runs question by question; refuse runs of different models or question sets."""
    la, lb = _label(a), _label(b)
    ma, mb = a.identity.model, b.identity.model
    if (ma.name, ma.dht_prefix) != (mb.name, mb.dht_prefix):
        raise InputError(f"cannot pair {la} and {lb}: they ran different models ({ma.name} and {mb.name})",
                         fix="compare runs of the same model, or report them without pairing (--no-pairs)")
    ra, rb = load_run(a.run_dir)[1], load_run(b.run_dir)[1]  # checked against their summaries
    ids_a, ids_b = {r.id for r in ra}, {r.id for r in rb}
    da, db = a.identity.data, b.identity.data
    if da.sha256 != db.sha256 or ids_a != ids_b:
        differ = len(ids_a ^ ids_b)
        raise InputError(f"cannot pair {la} and {lb}: they ran different question sets "
                         f"({da.source} vs {db.source}; {differ} question ids differ)",
                         fix="run both with the same --data and selection, "
                             "or report them without pairing (--no-pairs)")
    ca = {r.id: bool(r.correct) for r in ra if not r.error}
    cb = {r.id: bool(r.correct) for r in rb if not r.error}
    both = sorted(set(ca) & set(cb))
    if not both:
        raise InputError(f"cannot pair {la} and {lb}: no question was scored in both",
                         fix="resume the runs until they have scored questions")
    comparison = compare_paired({i: ca[i] for i in both}, {i: cb[i] for i in both})
    by_id_a, by_id_b = {r.id: r for r in ra}, {r.id: r for r in rb}
    return Pair(a, b, comparison, len(ids_a) - len(both),
                cost.pair_cost(by_id_a, by_id_b, both, a.cost, b.cost))


PAIR_HEADERS = ["A", "B", "n", "acc A", "acc B", "diff B-A", "95% paired", "both right", "A only", "B only",
                "both wrong", "McNemar p"]


def pair_rows(pairs: Sequence[Pair]) -> list[list[str]]:
    rows = []
    for p in pairs:
        c = p.comparison
        rows.append([_label(p.a), _label(p.b), str(c.n) + (f" ({p.excluded} excluded)" if p.excluded else ""),
                     pct(c.acc_a), pct(c.acc_b), f"{100 * c.diff:+.1f} pts",
                     f"[{100 * c.diff_ci95[0]:+.1f}, {100 * c.diff_ci95[1]:+.1f}]", str(c.both_right),
                     str(c.a_only), str(c.b_only), str(c.both_wrong), f"{c.mcnemar_p:.3g}"])
    return rows


def pair_cost_rows(pairs: Sequence[Pair]) -> list[list[str]]:
    return [[_label(p.a), _label(p.b), *cost.pair_cells(p.cost)] for p in pairs]


def compare(run_dirs: Sequence[str | Path], out_dir: str | Path, *, pairs: bool = True,
            gpu_hour_price: float | None = None) -> tuple[Path, list[RunSummary], list[Pair]]:
    """The side-by-side report of runs; with ``pairs``, each pair (A, B) in the order given is compared
    question by question (all pairs must share the model and the question set)."""
    out = Path(out_dir)
    if any((out / name).exists() for name in (SUMMARY_FILE, RECORDS_FILE, CONFIG_FILE)):
        raise InputError(f"--out {out_dir} is a bench run dir: the comparison would overwrite its own "
                         f"{REPORT_FILE} and plot", fix="pass another --out (default: bench-report)")
    summaries = [load_run(d)[0] for d in run_dirs]
    if cost.check_price(gpu_hour_price) is not None:  # every run at this price
        summaries = [replace(s, cost=cost.priced(s.cost, gpu_hour_price)) if s.cost else s for s in summaries]
    paired = [pair_runs(a, b) for i, a in enumerate(summaries) for b in summaries[i + 1:]] if pairs else []
    out.mkdir(parents=True, exist_ok=True)
    plot(summaries, out / PLOT_FILE)
    path = out / REPORT_FILE
    title = f"{data_name(summaries)} bench: runs side by side"
    write_atomic(path, _markdown(summaries, PLOT_FILE, title, paired))
    return path, summaries, paired


def errors_of(run_dir: str | Path, category: str | None = None) -> list[dict]:
    """Every scored path of a run with its category (``bench errors``), optionally only one category."""
    if category is not None and category not in CATEGORIES:
        raise InputError(f"--category {category} is unknown", fix=f"use one of: {', '.join(CATEGORIES)}")
    _, records = load_run(run_dir)  # a run dir made by the bench, or a one-line error
    rows = []
    for r in records:
        for p in r.paths:
            if category is None or p.category == category:
                slip = first_slip(p.text) if p.category == "arithmetic_slip" else None
                rows.append({"id": r.id, "path": p.i, "category": p.category, "answer": p.answer,
                             "gold": r.gold, "finish": p.finish, "slip": slip.text if slip else None,
                             "slip_true_value": (format_fraction(slip.value)
                                                 if slip and slip.value is not None else None),
                             "text": p.text})
    return rows
