"""What the early-stopping methods (esc, adaptive) share: the figures of a run whose questions used
different numbers of paths.

A question that stopped early has fewer paths than another, so SC's maj@k (random k-subsets of K paths)
does not apply. Instead: **accuracy at max K = k** votes on each question's first min(k, n) paths, n the
paths it used. Path i is the same path whatever the method or batching (its own seed), and these methods
decide from the paths so far only, so this is exactly the accuracy the same method would have had with
``--paths k``: a question that stopped before k kept its answer (it was decided), one that went on is cut
at k. The point at the run's own ``--paths`` is the run's accuracy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from petals_ops.bench.extraction import answers_equal
from petals_ops.bench.figures import FigureSpec
from petals_ops.bench.stats import plurality

FIGURES = (
    FigureSpec("accuracy_at_max_k", "accuracy at max K = k", kind="curve", column="acc@max k", brief=True,
               point="acc@max{x}",
               note="the plurality vote of each question's first min(k, n) paths, n the paths it used: the "
                    "accuracy this method would have had with --paths k (a question that stopped before k "
                    "was decided and keeps its answer)"),
    FigureSpec("decided", "questions decided before the maximum",
               note="share of scored questions the stopping rule ended before --paths"),
)


def capped_curve(questions: Sequence[tuple[Sequence[str | None], str]], k_max: int) -> list[float]:
    """Accuracy at max K = k for k = 1..k_max: per question (answers in path order, gold), the plurality
    (ties: first seen, as the method's vote) of its first min(k, n) answers, right or wrong."""
    if not questions:
        return []
    return [sum(answers_equal(plurality(list(answers[:k])), gold) for answers, gold in questions)
            / len(questions) for k in range(1, k_max + 1)]


def summary_figures(records, cfg, is_decided: Callable[[list[str | None]], bool]) -> dict:
    """The values of :data:`FIGURES` over the scored records; ``is_decided(answers)``: whether the
    stopping rule ended a question with these answers (in path order) before the maximum."""
    questions = [([p.answer for p in r.paths], r.gold) for r in records if r.paths]
    curve = capped_curve(questions, cfg.paths)
    decided = [len(a) < cfg.paths or is_decided(list(a)) for a, _ in questions]
    return {"accuracy_at_max_k": {str(k): v for k, v in enumerate(curve, start=1)} or None,
            "decided": sum(decided) / len(decided) if decided else None}
