"""Early-Stopping Self-Consistency (Li et al., ICLR 2024, arXiv 2401.10480): sample a window of w paths
at a time (one batched session), stop at the first window whose answers all agree, up to --paths.

The question's answer is the plurality of every path decoded (SC's vote over those paths); it is the
agreeing window's answer unless earlier windows outvote it. A window agrees when all its w paths give the
same answer; paths without an answer never agree. A last window cut short by --paths is not judged. The
record keeps its paths and its windows (``rounds``: the paths of each window).
"""

from __future__ import annotations

from collections.abc import Sequence

from petals_ops.bench.figures import FigureSpec
from petals_ops.bench.methods import stopping
from petals_ops.bench.methods.base import Method, Parameter, register
from petals_ops.util.errors import InputError


def window_agrees(answers: Sequence[str | None]) -> bool:
    """Whether a window's answers are all the same answer (an empty window or a missing answer: no)."""
    return bool(answers) and answers[0] is not None and all(a == answers[0] for a in answers)


def last_window_agrees(answers: Sequence[str | None], window: int) -> bool:
    """Whether the answers so far end with a whole window that agrees."""
    n = len(answers)
    return n >= window and n % window == 0 and window_agrees(answers[n - window:])


def esc_next(answers: Sequence[str | None], window: int, max_paths: int) -> int:
    """Paths to decode next given the answers so far (in path order): 0 once the last whole window
    agreed or ``max_paths`` are in, else the next window (cut at ``max_paths``)."""
    n = len(answers)
    if n >= max_paths or last_window_agrees(answers, window):
        return 0
    return min(window, max_paths - n)


class EarlyStoppingSC(Method):
    name = "esc"
    help = "Early-Stopping SC: windows of --param window paths until one agrees, up to --paths"
    samples = True
    default_paths = 40
    parameters = (Parameter("window", int, 5, "paths per window (one batched session)"),)
    figures = (*stopping.FIGURES,
               FigureSpec("windows_mean", "windows per question", kind="number",
                          note="mean number of windows (sessions of up to w paths) per scored question"))

    def validate(self, cfg) -> None:
        window = cfg.param("window")
        if not 1 <= window <= cfg.paths:
            raise InputError(f"--param window={window} must be between 1 and --paths {cfg.paths}",
                             fix="use --param window=5 (and --paths 40)")

    def next_paths(self, cfg, paths):
        return esc_next([p.answer for p in paths], cfg.param("window"), cfg.paths)

    def summary_figures(self, records, cfg):
        window = cfg.param("window")
        windows = [len(r.rounds) for r in records if r.rounds]
        return {**stopping.summary_figures(records, cfg, lambda a: last_window_agrees(a, window)),
                "windows_mean": sum(windows) / len(windows) if windows else None}


register(EarlyStoppingSC())
