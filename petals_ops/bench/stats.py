"""Statistics of a run: Wilson intervals, the plurality vote and maj@k from the sampled paths.

maj@k is the probability that the plurality answer of k paths drawn (without replacement) from a
question's K sampled paths equals the gold; invalid answers (None) do not vote, and a tie among the
top answers counts as 1/(number tied) if the gold is one of them (a fair random tie-break, in
expectation). :func:`maj_at_k_all` computes it exactly for every k at once from the answers' counts
(a hypergeometric sum, polynomial in K); :func:`maj_at_k_exact` enumerates every subset and is kept as
the reference the tests check it against. SC@40 used to average 2,000 random subsets per k instead:
minutes of CPU per summary, and not exact.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Sequence


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The Wilson score interval (95% by default) of a binomial proportion; (0, 1) when n is 0."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def plurality(answers: Sequence[str | None]) -> str | None:
    """The most frequent valid answer; ties go to the answer that appeared first. None if none is valid."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None
    top = max(counts.values())
    return next(a for a in answers if a is not None and counts[a] == top)


def vote_credit(answers: Sequence[str | None], gold: str) -> float:
    """1 if the gold is the unique plurality, 1/m if it ties with m-1 others, else 0."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return 0.0
    top = max(counts.values())
    tied = [a for a, c in counts.items() if c == top]
    return 1.0 / len(tied) if gold in tied else 0.0


def maj_at_k_exact(answers: Sequence[str | None], gold: str, k: int) -> float:
    """Mean vote credit over every size-k subset of the paths (exact; exponential in K)."""
    subsets = list(itertools.combinations(range(len(answers)), k))
    return sum(vote_credit([answers[i] for i in s], gold) for s in subsets) / len(subsets)


def maj_at_k_all(answers: Sequence[str | None], gold: str) -> list[float]:
    """maj@k for k = 1..len(answers), exact, from the answers' counts.

    A k-subset draws g gold votes and c_i votes for each other answer i; the gold wins a share 1/(j+1)
    when g >= 1, every c_i <= g and j of them equal g. For each g the subsets are counted with a
    generating polynomial in x (paths drawn) and y (answers tied with the gold), one factor per answer.
    """
    import numpy as np

    n = len(answers)
    counts = Counter(answers)
    n_gold = counts.pop(gold, 0)
    n_none = counts.pop(None, 0)
    others = list(counts.values())
    ties = len(others) + 1
    won = np.zeros(n + 1)  # won[k]: subsets of size k weighted by the gold's share of the vote
    for g in range(1, n_gold + 1):
        poly = np.zeros((n + 1, ties))  # poly[size, tied]
        poly[g, 0] = math.comb(n_gold, g)
        for count, caps_tie in [(n_none, False)] + [(c, True) for c in others]:
            top = min(count, g) if caps_tie else count
            grown = np.zeros_like(poly)
            for c in range(top + 1):
                weight = math.comb(count, c)
                if caps_tie and c == g:
                    grown[c:, 1:] += weight * poly[:n + 1 - c, :-1]
                else:
                    grown[c:, :] += weight * poly[:n + 1 - c, :]
            poly = grown
        won += poly @ (1.0 / np.arange(1, ties + 1))
    return [float(won[k]) / math.comb(n, k) for k in range(1, n + 1)]


def maj_at_k(answers: Sequence[str | None], gold: str, k: int) -> float:
    if not 1 <= k <= len(answers):
        raise ValueError(f"k={k} must be in 1..{len(answers)}")
    return maj_at_k_all(answers, gold)[k - 1]


def maj_curve(questions: Sequence[tuple[Sequence[str | None], str]], k_max: int) -> list[float]:
    """Accuracy against the number of paths: mean over questions of maj@k, for k = 1..k_max.

    A question with fewer than k paths (an adaptive method stopped early) contributes its maj@(len).
    """
    if not questions:
        return [0.0] * k_max
    per_question = [maj_at_k_all(answers, gold) if answers else [0.0] for answers, gold in questions]
    return [sum(row[min(k, len(row)) - 1] for row in per_question) / len(questions)
            for k in range(1, k_max + 1)]
