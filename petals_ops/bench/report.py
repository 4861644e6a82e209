"""``summary.json`` and ``report.md`` (with a PNG plot) of a run, and the side-by-side comparison.

Accuracy counts the questions that got an answer record (errors are reported separately, not scored);
its 95% interval is Wilson's. For SC the curve is maj@k for k = 1..K (see :mod:`stats`); CoT runs are
drawn as horizontal lines on the same axes.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from petals_ops.bench.stats import maj_curve, wilson_interval
from petals_ops.bench.store import SUMMARY_FILE, latest_by_id, read_records
from petals_ops.errors import InputError
from petals_ops.fsutil import write_atomic, write_json_atomic

PLOT_FILE = "maj_at_k.png"
REPORT_FILE = "report.md"


def summarize(run_dir: Path, config: dict, problems, *, progress=None, backend: str | None = None, snapshot=None,
              run_info: dict | None = None, exec_options=None) -> dict[str, Any]:
    wanted = {p.id for p in problems}
    records = [r for rid, r in latest_by_id(read_records(run_dir)).items() if rid in wanted]
    ok = [r for r in records if not r.get("error")]
    errors = [r for r in records if r.get("error")]
    correct = sum(bool(r["correct"]) for r in ok)
    low, high = wilson_interval(correct, len(ok))
    paths = [p for r in ok for p in r["paths"]]
    previous = run_dir / SUMMARY_FILE
    prev: dict[str, Any] = {}
    if previous.is_file():
        try:
            prev = json.loads(previous.read_text())
        except (ValueError, OSError):
            prev = {}
    wall_before = float(prev.get("wall_seconds_total") or 0.0)
    wall = progress.elapsed if progress is not None else 0.0
    generated_now = progress is not None and progress.tokens > 0
    if not generated_now and prev:  # a resume with nothing left to do keeps the figures of the runs that did the work
        backend = prev.get("backend", backend)
    served = Counter(peer for r in ok for peer in r.get("servers", []))
    method = config["method"]
    summary: dict[str, Any] = {
        "run_dir": str(run_dir),
        "method": method["method"],
        "paths": method["paths"],
        "backend": backend,
        "n": len(problems),
        "done": len(records),
        "missing": len(problems) - len(records),
        "scored": len(ok),
        "errors": len(errors),
        "error_ids": [r["id"] for r in errors][:50],
        "correct": correct,
        "accuracy": correct / len(ok) if ok else None,
        "accuracy_wilson95": [low, high],
        "invalid_path_rate": (sum(p["answer"] is None for p in paths) / len(paths)) if paths else None,
        "finish_reasons": dict(Counter(p["finish"] for p in paths)),
        "extraction": dict(Counter(p["how"] for p in paths)),
        "tokens": sum(r["tokens"] for r in ok),
        "prompt_tokens_mean": (sum(r["prompt_tokens"] for r in ok) / len(ok)) if ok else None,
        "wall_seconds": round(wall, 3),
        "wall_seconds_total": round(wall_before + wall, 3),
        "tokens_this_invocation": progress.tokens if progress is not None else 0,
        "tokens_per_second": (prev.get("tokens_per_second") if not generated_now and prev.get("tokens_per_second")
                              else round(progress.tokens_per_second, 3) if progress is not None else None),
        "run": run_info or {},
        "exec": vars(exec_options) if exec_options is not None else {},
        "config": config,
        "servers_served": dict(served),
        "swarm": [
            {"peer_id": s.peer_id, "blocks": f"{s.start_block}:{s.end_block}", "state": s.state,
             "torch_dtype": s.torch_dtype, "quant_type": s.quant_type, "version": s.version,
             "cache_tokens_left": s.cache_tokens_left}
            for s in (snapshot.servers if snapshot is not None else [])
        ],
        "written_at": time.time(),
    }
    if method["method"] == "sc":
        votes = [([p["answer"] for p in r["paths"]], r["gold"]) for r in ok if r["paths"]]
        k_max = max((len(a) for a, _ in votes), default=method["paths"])
        curve = maj_curve(votes, k_max, seed=method.get("seed") or 0)
        summary["maj_at_k"] = {str(k): v for k, v in enumerate(curve, start=1)}
        summary["pass_at_k"] = (sum(any(p["correct"] for p in r["paths"]) for r in ok) / len(ok)) if ok else None
        agreement = [sum(p["answer"] == r["vote"] for p in r["paths"]) / len(r["paths"]) for r in ok
                     if r["paths"] and r["vote"] is not None]
        summary["agreement"] = sum(agreement) / len(agreement) if agreement else None
    write_json_atomic(run_dir / SUMMARY_FILE, summary)
    return summary


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _label(summary: dict) -> str:
    name = Path(summary["run_dir"]).name
    return f"{name} ({summary['method']}{'' if summary['method'] == 'cot' else ' K=' + str(summary['paths'])})"


def plot(summaries: Sequence[dict], path: Path) -> Path:
    """maj@k curves of the SC runs and horizontal lines for the CoT runs (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    k_max = max([len(s.get("maj_at_k") or {}) for s in summaries] + [1])
    for s in summaries:
        if s["method"] == "sc" and s.get("maj_at_k"):
            ks = [int(k) for k in s["maj_at_k"]]
            ax.plot(ks, [100 * v for v in s["maj_at_k"].values()], marker="o", label=f"SC maj@k: {_label(s)}")
        elif s.get("accuracy") is not None:
            ax.axhline(100 * s["accuracy"], linestyle="--", color="gray", label=f"CoT greedy: {_label(s)}")
    ax.set_xlim(0.5, k_max + 0.5)
    ax.set_xlabel("sampled paths k (majority vote)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("GSM8K accuracy against the number of paths")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def table_rows(summaries: Sequence[dict]) -> list[list[str]]:
    rows = []
    for s in summaries:
        maj = s.get("maj_at_k") or {}
        rows.append([
            _label(s), str(s["n"]), str(s["scored"]), str(s["errors"]), _pct(s["accuracy"]),
            f"[{_pct(s['accuracy_wilson95'][0])}, {_pct(s['accuracy_wilson95'][1])}]",
            _pct(maj.get("1")) if maj else "", _pct(maj.get(str(len(maj)))) if maj else "",
            str(s["tokens"]), f"{s['wall_seconds_total']:.1f}", f"{s['tokens_per_second'] or 0:.1f}",
        ])
    return rows


HEADERS = ["run", "n", "scored", "errors", "accuracy", "Wilson 95%", "maj@1", "maj@K", "tokens", "wall s", "tokens/s"]


def _markdown(summaries: Sequence[dict], plot_name: str, title: str) -> str:
    lines = [f"# {title}", "",
             "Accuracy = correct / scored questions (error records are counted apart); interval: Wilson 95%.",
             "maj@k: expected plurality-vote accuracy over random k-subsets of each question's sampled paths.", "",
             "| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(summaries)]
    lines += ["", f"![accuracy against paths]({plot_name})", ""]
    for s in summaries:
        cfg = s["config"]
        lines += [f"## {_label(s)}", "",
                  f"- model `{cfg['model']['name']}` (DHT prefix `{cfg['model']['dht_prefix']}`), backend {s['backend']}",
                  f"- prompt `{cfg['prompt']['id']}` ({cfg['prompt']['exemplars']} exemplars)",
                  (f"- data `{cfg['data']['source']}` (sha256 {cfg['data']['sha256'][:12]}…), "
                   f"offset {cfg['data']['offset']}, limit {cfg['data']['limit']}, sample {cfg['data']['sample']}"),
                  f"- method {json.dumps(cfg['method'])}",
                  (f"- invalid paths {_pct(s['invalid_path_rate'])}, finish reasons {s['finish_reasons']}, "
                   f"extraction {s['extraction']}")]
        if s["method"] == "sc":
            curve = ", ".join(f"maj@{k} {_pct(v)}" for k, v in s["maj_at_k"].items())
            lines += [f"- {curve}", f"- pass@K {_pct(s.get('pass_at_k'))}, agreement with the vote {_pct(s.get('agreement'))}"]
        if s["servers_served"]:
            lines += [f"- servers that served: {', '.join(f'{p[:12]}… ({n})' for p, n in s['servers_served'].items())}"]
        lines.append("")
    return "\n".join(lines)


def write_run_report(run_dir: Path, summary: dict) -> Path:
    plot([summary], run_dir / PLOT_FILE)
    path = run_dir / REPORT_FILE
    write_atomic(path, _markdown([summary], PLOT_FILE, f"GSM8K bench: {_label(summary)}"))
    return path


def load_summary(run_dir: str | Path) -> dict:
    path = Path(run_dir) / SUMMARY_FILE
    if not path.is_file():
        raise InputError(f"{run_dir} has no {SUMMARY_FILE}", fix="pass run dirs made by 'petals-ops bench gsm8k'")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{path} is not valid JSON ({e.msg})", fix="re-run the bench to rewrite it") from e


def compare(run_dirs: Sequence[str | Path], out_dir: str | Path) -> tuple[Path, list[dict]]:
    summaries = [load_summary(d) for d in run_dirs]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot(summaries, out / PLOT_FILE)
    path = out / REPORT_FILE
    write_atomic(path, _markdown(summaries, PLOT_FILE, "GSM8K bench: runs side by side"))
    return path, summaries
