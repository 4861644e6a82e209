"""Statistics of a run: Wilson intervals, the plurality vote and maj@k from the sampled paths.

maj@k is the probability that the plurality answer of k paths drawn (without replacement) from a
question's K sampled paths equals the gold; invalid answers (None) do not vote, and a tie among the
top answers counts as 1/(number tied) if the gold is one of them (a fair random tie-break, in
expectation). :func:`maj_at_k_exact` enumerates every subset; :func:`maj_at_k` uses it when there
are at most ``exact_limit`` subsets and otherwise averages over random subsets (not the first k paths).
"""

from __future__ import annotations

import itertools
import math
import random
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


def maj_at_k_sampled(answers: Sequence[str | None], gold: str, k: int, *, draws: int,
                     rng: random.Random) -> float:
    """Mean vote credit over ``draws`` random size-k subsets (without replacement within a subset)."""
    n = len(answers)
    return sum(vote_credit([answers[i] for i in rng.sample(range(n), k)], gold) for _ in range(draws)) / draws


def maj_at_k(answers: Sequence[str | None], gold: str, k: int, *, exact_limit: int = 5000, draws: int = 2000,
             rng: random.Random | None = None) -> float:
    if not 1 <= k <= len(answers):
        raise ValueError(f"k={k} must be in 1..{len(answers)}")
    if math.comb(len(answers), k) <= exact_limit:
        return maj_at_k_exact(answers, gold, k)
    return maj_at_k_sampled(answers, gold, k, draws=draws, rng=rng or random.Random(0))


def maj_curve(questions: Sequence[tuple[Sequence[str | None], str]], k_max: int, *,
              seed: int = 0) -> list[float]:
    """Accuracy against the number of paths: mean over questions of maj@k, for k = 1..k_max.

    A question with fewer than k paths (it should not happen) contributes its maj@(len).
    """
    rng = random.Random(seed)
    curve = []
    for k in range(1, k_max + 1):
        if not questions:
            curve.append(0.0)
            continue
        total = 0.0
        for answers, gold in questions:
            total += maj_at_k(answers, gold, min(k, len(answers)), rng=rng) if answers else 0.0
        curve.append(total / len(questions))
    return curve
