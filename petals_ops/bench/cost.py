"""What a run cost: paths, tokens, server-steps, wall time, GPU-hours and, given a price, money.

- A **session step** is one request a decoding session sends through its route: a prefill chunk or one
  decoding step, for all b rows of the session at once.
- A **server-step** is a session step on one server of the route: a session of s steps through a route of
  n servers costs s·n server-steps, whatever its b (a server runs a step's b rows as one batch, so on a
  latency-bound swarm a step of 10 rows costs about what a step of one does). The local backend counts as
  one server. Only the attempts that produced the record are counted (a failed attempt's are not).
- **GPU-hours**: the GPUs serving the run (``--gpus``; default: the servers online in the swarm at the
  run's start, one GPU each as our fleet runs them, or 1 for the local backend) times the run's wall time
  over all its invocations. This charges the run for the whole fleet's time, as a private swarm is
  rented: an upper bound where others share it.
- **Cost**: GPU-hours times ``--gpu-hour-price``, per scored question and per correct answer.

Pure functions over typed records; :mod:`petals_ops.bench.report` renders them for every method alike.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from petals_ops.bench.records import QuestionRecord
from petals_ops.util.errors import InputError


def check_price(price: float | None) -> float | None:
    if price is not None and not 0 <= price < float("inf"):
        raise InputError(f"--gpu-hour-price {price} must be a number >= 0", fix="e.g. --gpu-hour-price 1.10")
    return price


def check_gpus(gpus: int | None) -> int | None:
    if gpus is not None and gpus < 1:
        raise InputError(f"--gpus {gpus} must be at least 1",
                         fix="omit it: the servers online in the swarm are counted")
    return gpus


def _ratio(x: float | None, y: float | None) -> float | None:
    return x / y if x is not None and y else None


def _steps(records: Sequence[QuestionRecord], key: str) -> int | None:
    """Summed over records; None when a record predates the count."""
    values = [getattr(r, key) for r in records]
    return None if any(v is None for v in values) else sum(values)


def run_cost(records: Sequence[QuestionRecord], *, wall_seconds: float, gpus: int,
             gpu_hour_price: float | None = None) -> dict[str, Any]:
    """A run's cost block (``summary.json``'s ``cost``) over its scored records."""
    n = len(records)
    correct = sum(bool(r.correct) for r in records)
    paths = [len(r.paths) for r in records]
    tokens = sum(r.tokens for r in records)
    server_steps = _steps(records, "server_steps")
    gpu_hours = gpus * wall_seconds / 3600
    out = {
        "questions": n, "correct": correct,
        "paths": sum(paths), "paths_per_question": _ratio(sum(paths), n),
        "paths_median": statistics.median(paths) if paths else None,
        "tokens": tokens, "tokens_per_question": _ratio(tokens, n),
        "session_steps": _steps(records, "session_steps"),
        "server_steps": server_steps, "server_steps_per_question": _ratio(server_steps, n),
        "wall_seconds": wall_seconds, "gpus": gpus, "gpu_hours": gpu_hours,
        "gpu_hours_per_question": _ratio(gpu_hours, n), "gpu_hours_per_correct": _ratio(gpu_hours, correct),
    }
    return priced(out, gpu_hour_price)


def priced(cost: Mapping[str, Any], gpu_hour_price: float | None) -> dict[str, Any]:
    """``cost`` with its money figures at ``gpu_hour_price`` (None: none)."""
    out = dict(cost)
    out["gpu_hour_price"] = gpu_hour_price
    for what in ("question", "correct"):
        hours = out.get(f"gpu_hours_per_{what}")
        out[f"cost_per_{what}"] = hours * gpu_hour_price if hours is not None and gpu_hour_price is not None \
            else None
    return out


def number(x: Any) -> str:
    """A cost figure for a reader: three significant digits, no exponent below 1e-4."""
    if not isinstance(x, (int, float)) or isinstance(x, bool):
        return "n/a"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 10 or x == 0:
        return f"{x:.1f}"
    return f"{x:.3g}" if abs(x) >= 1e-4 else f"{x:.2e}"


COLUMNS = ("paths/question", "server-steps/question", "GPU-h/correct", "cost/correct")


def cells(cost: Mapping[str, Any] | None) -> list[str]:
    """The runs table's cost cells (see :data:`COLUMNS`)."""
    cost = cost or {}
    return [number(cost.get("paths_per_question")), number(cost.get("server_steps_per_question")),
            number(cost.get("gpu_hours_per_correct")), number(cost.get("cost_per_correct"))]


def describe(cost: Mapping[str, Any] | None) -> str:
    """The cost block in one line, for report.md."""
    if not cost:
        return "cost: not recorded (a run made before costs were counted)"
    line = (f"cost: {number(cost.get('paths_per_question'))} paths per question (median "
            f"{number(cost.get('paths_median'))}), {number(cost.get('tokens_per_question'))} tokens and "
            f"{number(cost.get('server_steps_per_question'))} server-steps per question; "
            f"{number(cost.get('wall_seconds'))} s wall on {cost.get('gpus')} GPU(s) = "
            f"{number(cost.get('gpu_hours'))} GPU-hours ({number(cost.get('gpu_hours_per_question'))} per "
            f"question, {number(cost.get('gpu_hours_per_correct'))} per correct answer)")
    if cost.get("gpu_hour_price") is not None:
        line += (f"; at {number(cost['gpu_hour_price'])} per GPU-hour: "
                 f"{number(cost.get('cost_per_question'))} per question, "
                 f"{number(cost.get('cost_per_correct'))} per correct answer")
    return line


NOTE = ("Cost: a server-step is one request of a session (a prefill chunk or a decoding step, all its rows "
        "at once) on one server of its route (the local backend counts as one server); GPU-hours = the "
        "GPUs serving the run x its wall time (the whole fleet charged to the run); cost = GPU-hours x the "
        "price per GPU-hour.")


def pair_cost(a: Mapping[str, QuestionRecord], b: Mapping[str, QuestionRecord], ids: Sequence[str],
              cost_a: Mapping[str, Any] | None, cost_b: Mapping[str, Any] | None) -> dict[str, Any]:
    """Run B against run A on the paired questions ``ids``: B's paths, tokens and server-steps over A's
    (summed over those questions), its GPU-hours per question over A's, and what each extra correct
    answer of B cost in server-steps and GPU-hours (None when B has no extra correct answer)."""
    ra, rb = [a[i] for i in ids], [b[i] for i in ids]
    extra = sum(bool(r.correct) for r in rb) - sum(bool(r.correct) for r in ra)

    def total(records, key):
        return _steps(records, key) if key.endswith("steps") else sum(
            len(r.paths) if key == "paths" else r.tokens for r in records)

    out: dict[str, Any] = {"extra_correct": extra}
    for key in ("paths", "tokens", "server_steps"):
        ta, tb = total(ra, key), total(rb, key)
        out[f"{key}_ratio"] = _ratio(tb, ta)
        out[f"{key}_per_extra_correct"] = (tb - ta) / extra if extra > 0 and None not in (ta, tb) else None
    ha, hb = ((c or {}).get("gpu_hours_per_question") for c in (cost_a, cost_b))
    out["gpu_hours_ratio"] = _ratio(hb, ha)
    out["gpu_hours_per_extra_correct"] = (hb - ha) * len(ids) / extra if extra > 0 and None not in (ha, hb) \
        else None
    price = (cost_b or {}).get("gpu_hour_price")
    out["cost_per_extra_correct"] = out["gpu_hours_per_extra_correct"] * price \
        if out["gpu_hours_per_extra_correct"] is not None and price is not None else None
    return out


PAIR_HEADERS = ["A", "B", "extra correct", "paths B/A", "tokens B/A", "server-steps B/A", "GPU-h B/A",
                "server-steps per extra correct", "GPU-h per extra correct", "cost per extra correct"]


def pair_cells(c: Mapping[str, Any]) -> list[str]:
    """A pair's cost cells (see :data:`PAIR_HEADERS`, after A and B)."""
    ratio = [f"{c[k]:.2f}x" if c.get(k) is not None else "n/a"
             for k in ("paths_ratio", "tokens_ratio", "server_steps_ratio", "gpu_hours_ratio")]
    return [f"{c.get('extra_correct', 0):+d}", *ratio, number(c.get("server_steps_per_extra_correct")),
            number(c.get("gpu_hours_per_extra_correct")), number(c.get("cost_per_extra_correct"))]
