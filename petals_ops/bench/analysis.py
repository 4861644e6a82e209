"""Error analysis of scored paths: why was a path wrong? (repetition, out of tokens, no answer, a slip).

A failed path gets exactly one category, the first that applies in :data:`PRECEDENCE` (loops and the token
limit explain everything after them, so they come first; a slip is only blamed when an answer exists). A path
whose answer equals the gold is always ``correct``, even with a slip in its rationale; such slips are counted
separately (``correct_with_slip``) because they show lucky answers. Everything reads the scored ``text`` (the
completion cut at the stop string), never ``raw``: what came after the stop was not scored.

A slip is a false equation under exact arithmetic (:mod:`petals_ops.bench.arithmetic`); a loop is what
:func:`petals_ops.bench.loops.repeated_unit` finds.
"""

from __future__ import annotations

from collections.abc import Iterable

from petals_ops.bench.arithmetic import Equation, first_slip, format_fraction
from petals_ops.bench.extraction import answers_equal
from petals_ops.bench.loops import repeated_unit
from petals_ops.bench.records import QuestionRecord, ScoredPath

CATEGORIES: dict[str, str] = {
    "correct": "the extracted answer equals the gold (slips in the rationale are flagged separately)",
    "repetition": "the completion is stuck in a loop (see repeated_unit)",
    "out_of_tokens": "hit max_new_tokens (finish 'length') before any 'The answer is' sentence",
    "no_answer": "nothing could be extracted (no answer sentence, no number)",
    "arithmetic_slip": "the rationale has an equation that is false under exact arithmetic",
    "wrong_answer": "an answer was extracted and none of the above explains it",
}
# The order in which the categories of a failed path are tried; the first that applies wins.
PRECEDENCE: tuple[str, ...] = ("repetition", "out_of_tokens", "no_answer", "arithmetic_slip", "wrong_answer")

# --- categories --------------------------------------------------------------------------------------------

def _classify(path: ScoredPath, gold: str) -> tuple[str, Equation | None]:
    """(category, the first slip of the text; only computed where it matters)."""
    text = path.text
    if answers_equal(path.answer, gold):
        return "correct", first_slip(text)
    if repeated_unit(text) is not None:
        return "repetition", None
    if path.finish == "length" and path.how != "answer_is":
        return "out_of_tokens", None
    if path.answer is None:
        return "no_answer", None
    slip = first_slip(text)
    if slip is not None:
        return "arithmetic_slip", slip
    return "wrong_answer", None


def _category_and_slip(path: ScoredPath, gold: str) -> tuple[str, Equation | None]:
    """Like :func:`_classify`, but a path scored by the runner already carries its category: only the slip
    (for ``correct_with_slip`` and the examples) is looked up again, not the loop detection."""
    if path.category not in CATEGORIES:
        return _classify(path, gold)
    needs_slip = path.category in ("correct", "arithmetic_slip")
    return path.category, first_slip(path.text) if needs_slip else None


def categorize(path: ScoredPath, gold: str) -> str:
    """The category of one scored path; correctness is re-scored against ``gold`` as the runner does."""
    return _classify(path, gold)[0]


def _excerpt(text: str, limit: int = 160) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit].rstrip() + "…"


def summarize_categories(records: Iterable[QuestionRecord], examples: int = 3) -> dict:
    """Counts per category over every scored path of the records without an error, plus the first
    ``examples`` paths of each category in record order (deterministic). ``correct_with_slip`` counts correct
    paths whose rationale has a slip."""
    counts = {name: 0 for name in CATEGORIES}
    shown: dict[str, list[dict]] = {name: [] for name in CATEGORIES}
    questions = skipped = paths = with_slip = 0
    for record in records:
        if record.error:
            skipped += 1
            continue
        questions += 1
        for path in record.paths:
            category, slip = _category_and_slip(path, record.gold)
            paths += 1
            counts[category] += 1
            if category == "correct" and slip is not None:
                with_slip += 1
            if len(shown[category]) < examples:
                example = {"id": record.id, "path": path.i, "answer": path.answer, "gold": record.gold,
                           "excerpt": _excerpt(path.text)}
                if category == "arithmetic_slip" and slip is not None and slip.value is not None:
                    example["equation"] = slip.text
                    example["true_value"] = format_fraction(slip.value)
                if category == "repetition":
                    example["unit"] = repeated_unit(path.text)
                shown[category].append(example)
    return {"questions": questions, "skipped_errors": skipped, "paths": paths, "counts": counts,
            "correct_with_slip": with_slip, "examples": shown}
