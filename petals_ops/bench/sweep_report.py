"""``bench sweep report``: each configuration's mean accuracy with its spread across replicates (seeds,
exemplar orders) and a CI, paired comparisons against a baseline with Holm's correction, and a plot.

Definitions (docs/bench.md, "Sweeps"):
- a configuration's *runs* are its distinct run dirs (a greedy method's seeds share one run); its
  questions are those scored in every one of its runs;
- *mean* is the mean of its runs' accuracies, *SD* their sample standard deviation (spread across seeds and
  orders), and the *95% CI* is over questions: mean +- t(n-1) * sd / sqrt(n) of the per-question accuracy
  averaged over its runs (the uncertainty from the sample of questions, replicates averaged out);
- a comparison with the baseline runs on the questions scored in every run of both; per question, the
  difference of the two averaged accuracies; its mean with a t-interval, and an exact paired *sign-flip
  (permutation) test*: under "no difference" each question's difference is as likely negated. With one
  run per configuration this is exactly the two-sided exact McNemar test. The p-values of all the
  comparisons against the baseline are adjusted by *Holm's step-down method* (family-wise error 5%).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path

from petals_ops.bench.figures import pct
from petals_ops.bench.report import load_records
from petals_ops.bench.store import CONFIG_FILE
from petals_ops.bench.sweep import RUNS_DIR, SWEEP_FILE
from petals_ops.util.errors import InputError
from petals_ops.util.fsutil import write_atomic

REPORT_FILE = "report.md"
PLOT_FILE = "sweep.png"
ALPHA = 0.05


# --- pure statistics -------------------------------------------------------------------------------------

def mean_sd(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (None where undefined: no values, or one for the SD)."""
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def t_interval(values: Sequence[float], level: float = 0.95, *,
               bounds: tuple[float, float] = (-1.0, 1.0)) -> tuple[float | None, float | None]:
    """mean +- t(n-1) * sd / sqrt(n): a CI of the mean of ``values``, clipped to ``bounds`` (accuracies
    and their differences cannot leave them); (None, None) with fewer than 2 values."""
    mean, sd = mean_sd(values)
    if sd is None:
        return None, None
    from scipy.stats import t

    half = float(t.ppf(0.5 + level / 2, len(values) - 1)) * sd / math.sqrt(len(values))
    return max(bounds[0], mean - half), min(bounds[1], mean + half)


def sign_flip_p(diffs: Sequence[Fraction | int]) -> float:
    """Exact two-sided p-value of the paired sign-flip test: P(|sum of +-|d_i|| >= |sum of d_i|) when each
    sign is a fair coin. ``diffs`` are exact (Fractions: differences of averaged correctness); the
    distribution is built by convolving, per magnitude, the binomial of how many of its questions flip."""
    nonzero = [Fraction(d) for d in diffs if d != 0]
    if not nonzero:
        return 1.0
    scale = math.lcm(*(d.denominator for d in nonzero))
    ints = [int(d * scale) for d in nonzero]
    observed = abs(sum(ints))
    by_size: dict[int, int] = {}
    for v in ints:
        by_size[abs(v)] = by_size.get(abs(v), 0) + 1
    import numpy as np
    from scipy.stats import binom

    # the sum's distribution on the integers -total..total (index = value + total), one magnitude at a time:
    # m questions of magnitude s add s * (2k - m), k ~ Binomial(m, 1/2) of them positive
    total = sum(abs(v) for v in ints)
    dist = np.ones(1)
    for size, m in sorted(by_size.items()):
        kernel = np.zeros(2 * size * m + 1)
        kernel[::2 * size] = binom.pmf(np.arange(m + 1), m, 0.5)
        dist = np.convolve(dist, kernel)
    values = np.arange(len(dist)) - total
    return float(min(1.0, dist[np.abs(values) >= observed].sum()))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment: the i-th smallest of m p-values times (m - i + 1), made monotone,
    capped at 1; returned in the input order."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


@dataclass(frozen=True)
class ConfigStats:
    label: str
    runs: int
    n: int  # questions scored in every run
    accuracies: tuple[float, ...]  # per run, on those questions
    mean: float | None
    sd: float | None
    ci95: tuple[float | None, float | None]
    steps_per_question: float | None = None  # measured session steps (bench.cost), mean over its runs


def config_stats(label: str, runs: Sequence[Mapping[str, bool]]) -> ConfigStats:
    """``runs``: each run's question id -> correct (scored questions only)."""
    common = sorted(set.intersection(*(set(r) for r in runs))) if runs else []
    accs = tuple(sum(r[q] for q in common) / len(common) for r in runs) if common else ()
    mean, sd = mean_sd(accs)
    per_question = [sum(r[q] for r in runs) / len(runs) for q in common]
    return ConfigStats(label, len(runs), len(common), accs, mean, sd, t_interval(per_question, bounds=(0, 1)))


@dataclass(frozen=True)
class Comparison:
    label: str
    baseline: str
    n: int
    diff: float  # mean accuracy of the configuration minus the baseline's, on the shared questions
    ci95: tuple[float | None, float | None]
    p: float  # exact sign-flip test
    p_holm: float = 1.0

    @property
    def significant(self) -> bool:
        return self.p_holm < ALPHA


def compare(label: str, runs: Sequence[Mapping[str, bool]], baseline: str,
            base_runs: Sequence[Mapping[str, bool]]) -> Comparison:
    """The configuration against the baseline on the questions scored in every run of both (unadjusted)."""
    common = set.intersection(*(set(r) for r in [*runs, *base_runs]))
    if not common:
        raise InputError(f"sweep report: {label} and the baseline {baseline} share no scored question",
                         fix="resume the sweep until both have records")
    diffs = [Fraction(sum(r[q] for r in runs), len(runs)) - Fraction(sum(r[q] for r in base_runs),
                                                                        len(base_runs))
             for q in sorted(common)]
    return Comparison(label, baseline, len(common), float(sum(diffs) / len(diffs)),
                      t_interval([float(d) for d in diffs]), sign_flip_p(diffs))


def compare_all(configs: Mapping[str, Sequence[Mapping[str, bool]]], baseline: str) -> list[Comparison]:
    """Every configuration but the baseline against it, p-values Holm-adjusted over the family."""
    raw = [compare(label, runs, baseline, configs[baseline])
           for label, runs in configs.items() if label != baseline]
    return [Comparison(**{**vars(c), "p_holm": p}) for c, p in zip(raw, holm([c.p for c in raw]))]


# --- a sweep dir ---------------------------------------------------------------------------------------

@dataclass
class SweepData:
    sweep_dir: Path
    plan: dict
    cells: list[dict]
    runs: dict[str, dict[str, bool]]  # run name -> question id -> correct (scored questions)
    exemplars: dict[str, int]  # run name -> exemplars in its prompt
    steps: dict[str, float | None]  # run name -> session steps per scored question (None: not counted)
    missing: list[str]  # runs of the plan with no record yet

    def config_runs(self) -> dict[str, list[str]]:
        """Configuration label -> its distinct run names that have records (in plan order)."""
        out: dict[str, list[str]] = {}
        for cell in self.cells:
            names = out.setdefault(cell["config"], [])
            if cell["run"] in self.runs and cell["run"] not in names:
                names.append(cell["run"])
        return out


def load_sweep(sweep_dir: str | Path) -> SweepData:
    sweep_dir = Path(sweep_dir)
    try:
        plan = json.loads((sweep_dir / SWEEP_FILE).read_text())
        cells = plan["cells"]
        if not isinstance(cells, list) or not all(isinstance(c, dict) and "config" in c and "run" in c
                                                  for c in cells):
            raise ValueError("its cells are not a list of grid points")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"{sweep_dir} is not a sweep dir ({SWEEP_FILE}: {' '.join(str(e).split())[:100]})",
                         fix="pass the --sweep-dir of a 'bench sweep' run") from None
    runs, exemplars, steps, missing, data_shas = {}, {}, {}, [], set()
    for name in dict.fromkeys(c["run"] for c in cells):
        run_dir = sweep_dir / RUNS_DIR / name
        records = [r for r in load_records(run_dir) if not r.error] if run_dir.is_dir() else []
        if not records:
            missing.append(name)
            continue
        try:
            config = json.loads((run_dir / CONFIG_FILE).read_text())
            data_shas.add(config["data"]["sha256"])
            exemplars[name] = int(config["prompt"]["exemplars"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise InputError(f"run {run_dir} has no readable {CONFIG_FILE} ({e})",
                             fix="rerun the sweep to rewrite it") from None
        runs[name] = {r.id: bool(r.correct) for r in records}
        counted = [getattr(r, "session_steps", None) for r in records]
        steps[name] = None if None in counted else sum(counted) / len(counted)
    if len(data_shas) > 1:
        raise InputError(f"the runs of {sweep_dir} ran different data files",
                         fix="rerun the sweep in a new dir")
    return SweepData(sweep_dir, plan, cells, runs, exemplars, steps, missing)


@dataclass
class SweepReport:
    path: Path
    plot: Path
    baseline: str
    stats: list[ConfigStats]
    comparisons: list[Comparison]
    missing: list[str]

    def to_dict(self) -> dict:
        return {"report": str(self.path), "plot": str(self.plot), "baseline": self.baseline,
                "correction": "holm", "missing_runs": self.missing,
                "configs": [{**vars(s), "accuracies": list(s.accuracies), "ci95": list(s.ci95)}
                            for s in self.stats],
                "comparisons": [{**vars(c), "ci95": list(c.ci95), "significant": c.significant}
                                for c in self.comparisons]}


STATS_HEADERS = ["configuration", "runs", "n", "mean acc", "SD across runs", "min-max", "95% CI (questions)",
                 "steps/q"]
PAIR_HEADERS = ["configuration", "baseline", "n", "diff", "95% CI", "p (sign-flip)", "p Holm", "significant"]


def _mean_or_none(values: Sequence[float | None]) -> float | None:
    return None if not values or None in values else sum(values) / len(values)


def _pts(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:+.1f}"


def stats_rows(stats: Sequence[ConfigStats]) -> list[list[str]]:
    return [[s.label, str(s.runs), str(s.n), pct(s.mean),
             "n/a" if s.sd is None else f"{100 * s.sd:.1f} pts",
             f"{pct(min(s.accuracies))}-{pct(max(s.accuracies))}" if s.accuracies else "n/a",
             f"[{pct(s.ci95[0])}, {pct(s.ci95[1])}]" if s.ci95[0] is not None else "n/a",
             "n/a" if s.steps_per_question is None else f"{s.steps_per_question:.1f}"] for s in stats]


def pair_rows(comparisons: Sequence[Comparison]) -> list[list[str]]:
    return [[c.label, c.baseline, str(c.n), f"{_pts(c.diff)} pts",
             f"[{_pts(c.ci95[0])}, {_pts(c.ci95[1])}]" if c.ci95[0] is not None else "n/a",
             f"{c.p:.3g}", f"{c.p_holm:.3g}", "yes" if c.significant else "no"] for c in comparisons]


def build(sweep_dir: str | Path, out: str | Path | None = None, baseline: str | None = None) -> SweepReport:
    """Read the sweep dir, compute, and write report.md and the plot (into ``out``, default the sweep dir)."""
    data = load_sweep(sweep_dir)
    by_config = data.config_runs()
    present = {label: names for label, names in by_config.items() if names}
    if not present:
        raise InputError(f"sweep {data.sweep_dir} has no scored question yet", fix="run the sweep first")
    baseline = baseline or data.plan.get("baseline") or next(iter(by_config))
    if baseline not in by_config:
        raise InputError(f"--baseline {baseline} is not a configuration of {data.sweep_dir}",
                         fix=f"use one of: {', '.join(list(by_config)[:6])}")
    stats = [replace(config_stats(label, [data.runs[n] for n in names]),
                     steps_per_question=_mean_or_none([data.steps[n] for n in names]))
             for label, names in present.items()]
    comparisons = []
    if baseline in present:
        comparisons = compare_all({label: [data.runs[n] for n in names] for label, names in present.items()},
                                  baseline)
    out_dir = Path(out) if out is not None else data.sweep_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_path = plot(data, present, out_dir / PLOT_FILE)
    path = out_dir / REPORT_FILE
    write_atomic(path, markdown(data, stats, comparisons, baseline, plot_path.name))
    return SweepReport(path, plot_path, baseline, stats, comparisons, data.missing)


def markdown(data: SweepData, stats, comparisons, baseline: str, plot_name: str) -> str:
    spec = data.plan.get("spec", {})
    distinct = len(dict.fromkeys(c["run"] for c in data.cells))
    unfinished = f" ({len(data.missing)} without records yet: not finished)" if data.missing else ""
    lines = [f"# Sweep {data.sweep_dir.name}: {spec.get('data', 'demo')}", "",
             f"{len(data.cells)} grid points, {distinct} distinct runs{unfinished}.", "",
             "A configuration is a prompt set, method, number of shots and temperature; its runs are its "
             "seeds and exemplar orders (a greedy method's seeds share one run). Mean: of its runs' "
             "accuracies; SD: across its runs; 95% CI: over questions, of the per-question accuracy averaged "
             "over its runs; steps/q: session steps per question (prefill chunks and decoding steps, "
             "bench.cost), mean over its runs.",
             "", "| " + " | ".join(STATS_HEADERS) + " |", "|" + "---|" * len(STATS_HEADERS)]
    lines += ["| " + " | ".join(row) + " |" for row in stats_rows(stats)]
    lines += ["", f"![accuracy by shots, by order, by method]({plot_name})", ""]
    if comparisons:
        lines += [f"## Against the baseline {baseline} (same questions)", "",
                  "diff: accuracy minus the baseline's on the questions every run of both scored; 95% CI: "
                  "t-interval over questions; p: exact paired sign-flip test (with one run each: the exact "
                  f"McNemar test); p Holm: Holm's step-down correction over the {len(comparisons)} "
                  f"comparisons; significant: p Holm < {ALPHA}.", "",
                  "| " + " | ".join(PAIR_HEADERS) + " |", "|" + "---|" * len(PAIR_HEADERS)]
        lines += ["| " + " | ".join(row) + " |" for row in pair_rows(comparisons)]
        lines.append("")
    lines += ["## Runs", "", "| configuration | seed | order | run dir | accuracy |", "|---|---|---|---|---|"]
    for cell in data.cells:
        run = data.runs.get(cell["run"])
        acc = pct(sum(run.values()) / len(run)) if run else "not run"
        order = "file" if cell["order"] is None else cell["order"]
        lines.append(f"| {cell['config']} | {cell['seed']} | {order} | {RUNS_DIR}/{cell['run']} | {acc} |")
    lines.append("")
    return "\n".join(lines)


def plot(data: SweepData, present: Mapping[str, list[str]], path: Path) -> Path:
    """Three panels (matplotlib, Agg): accuracy against shots (a line per prompt/method/temperature, error
    bars: SD across runs), by exemplar order (a line per configuration), by method (a bar per method and
    prompt set: the mean of its runs, each run a dot)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    acc = {name: sum(r.values()) / len(r) for name, r in data.runs.items()}
    fig, (by_shots, by_order, by_method) = plt.subplots(1, 3, figsize=(15, 4.4), dpi=100)
    try:
        lines: dict[str, dict[int, list[float]]] = {}
        for label, names in present.items():
            first = next(c for c in data.cells if c["config"] == label)
            key = "/".join([first["prompt"], first["method"]]
                           + ([f"T={first['temperature']:g}"] if first["temperature"] is not None else []))
            for name in names:
                lines.setdefault(key, {}).setdefault(data.exemplars[name], []).append(acc[name])
        for key, points in lines.items():
            xs = sorted(points)
            stats = [mean_sd(points[x]) for x in xs]
            by_shots.errorbar(xs, [100 * m for m, _ in stats], yerr=[100 * (sd or 0) for _, sd in stats],
                              marker="o", capsize=3, label=key)
        by_shots.xaxis.set_major_locator(MaxNLocator(integer=True))
        by_shots.set_xlabel("exemplars in the prompt (shots)")
        by_shots.set_title("accuracy by shots")

        orders = list(dict.fromkeys("file" if c["order"] is None else str(c["order"]) for c in data.cells))
        for label, names in present.items():
            per_order: dict[str, list[float]] = {}
            for c in data.cells:
                if c["config"] == label and c["run"] in acc:
                    per_order.setdefault("file" if c["order"] is None else str(c["order"]), []).append(
                        acc[c["run"]])
            xs = [o for o in orders if o in per_order]
            by_order.plot([orders.index(o) for o in xs], [100 * mean_sd(per_order[o])[0] for o in xs],
                          marker="o", label=label)
        by_order.set_xticks(range(len(orders)), orders)
        by_order.set_xlabel("exemplar order (seed; file: as written)")
        by_order.set_title("accuracy by exemplar order")

        groups: dict[str, list[float]] = {}
        for label, names in present.items():
            c = next(c for c in data.cells if c["config"] == label)
            groups.setdefault(f"{c['method']}\n{c['prompt']}", []).extend(acc[n] for n in names)
        for i, (key, values) in enumerate(groups.items()):
            by_method.bar(i, 100 * mean_sd(values)[0], color="lightsteelblue")
            by_method.scatter([i] * len(values), [100 * v for v in values], color="navy", s=12, zorder=3)
        by_method.set_xticks(range(len(groups)), list(groups), fontsize=7)
        by_method.set_title("accuracy by method (bar: mean; dots: runs)")
        for ax in (by_shots, by_order, by_method):
            ax.set_ylabel("accuracy (%)")
            ax.grid(alpha=0.3)
        for ax in (by_shots, by_order):
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=6, loc="best")
        fig.suptitle(f"sweep {data.sweep_dir.name}: {data.plan.get('spec', {}).get('data', 'demo')}")
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path
