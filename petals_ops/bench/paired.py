"""Paired comparison of two runs on the same questions: exact McNemar test and a paired interval.

Two runs on the same questions are not independent samples (an easy question is easy for both), so the
difference of their accuracies is judged from the discordant questions only.

The 2x2 table convention used everywhere here (per question, run A against run B)::

                  B right   B wrong
    A right          a         c
    A wrong          b         d

a = both right, b = only B right, c = only A right, d = both wrong; n = a + b + c + d.
p_A = (a + c) / n, p_B = (a + b) / n, and the difference is always p_B - p_A = (b - c) / n (positive when B
is better). With B as Newcombe's "first" classification this is exactly the table of Newcombe (1998).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from fractions import Fraction

from petals_ops.bench.stats import wilson_interval

Z95 = 1.959963984540054


def mcnemar_exact(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value: min(1, 2 * P[X <= min(b, c)]) for X ~ Binomial(b + c, 1/2).

    Summed in exact integers and divided once (a Fraction), so b + c in the thousands neither overflows nor
    loses the tail; 1.0 when there are no discordant questions.
    """
    if b < 0 or c < 0:
        raise ValueError(f"counts must be >= 0, got b={b}, c={c}")
    n, k = b + c, min(b, c)
    if n == 0:
        return 1.0
    term, tail = 1, 0
    for i in range(k + 1):  # term == comb(n, i)
        tail += term
        term = term * (n - i) // (i + 1)
    return float(min(Fraction(1), Fraction(2 * tail, 2 ** n)))


def _table_phi(a: int, b: int, c: int, d: int, continuity: bool) -> float:
    """The phi correlation of the table (0 when a margin is empty). With ``continuity`` (Newcombe's method 10
    as published), a positive a*d - b*c is first reduced by n/2, and to 0 if it does not exceed n/2."""
    margins = (a + b) * (c + d) * (a + c) * (b + d)
    if margins == 0:
        return 0.0
    cross = a * d - b * c
    if continuity and cross > 0:
        cross = max(cross - (a + b + c + d) / 2, 0)
    return cross / math.sqrt(margins)


def newcombe_paired_interval(a: int, b: int, c: int, d: int, z: float = Z95, *,
                             continuity_phi: bool = True) -> tuple[float, float]:
    """Newcombe's (1998) method 10 interval for p_B - p_A: the hybrid score ("square and add") interval from
    the Wilson interval of each marginal, corrected for their correlation phi.

    With p_B, p_A and their Wilson limits (lB, uB), (lA, uA)::

        low  = (p_B - p_A) - sqrt((p_B - lB)^2 - 2 phi (p_B - lB)(uA - p_A) + (uA - p_A)^2)
        high = (p_B - p_A) + sqrt((uB - p_B)^2 - 2 phi (uB - p_B)(p_A - lA) + (p_A - lA)^2)

    phi is (ad - bc) / sqrt((a+b)(c+d)(a+c)(b+d)), 0 when that is 0; as in the published method (and the
    implementations of Altman et al. 2000 and Fagerland et al. 2017) a positive ad - bc is reduced by n/2
    first; ``continuity_phi=False`` uses the plain phi. (-1, 1) when n is 0; clipped to [-1, 1].
    """
    if min(a, b, c, d) < 0:
        raise ValueError(f"counts must be >= 0, got {(a, b, c, d)}")
    n = a + b + c + d
    if n == 0:
        return -1.0, 1.0
    p_b, p_a = (a + b) / n, (a + c) / n
    low_b, high_b = wilson_interval(a + b, n, z)
    low_a, high_a = wilson_interval(a + c, n, z)
    phi = _table_phi(a, b, c, d, continuity_phi)
    diff = p_b - p_a
    down_b, up_a = p_b - low_b, high_a - p_a
    up_b, down_a = high_b - p_b, p_a - low_a
    delta = math.sqrt(max(0.0, down_b ** 2 - 2 * phi * down_b * up_a + up_a ** 2))
    epsilon = math.sqrt(max(0.0, up_b ** 2 - 2 * phi * up_b * down_a + down_a ** 2))
    return max(-1.0, diff - delta), min(1.0, diff + epsilon)


def wald_paired_interval(a: int, b: int, c: int, d: int, z: float = Z95) -> tuple[float, float]:
    """The simple Wald interval (Newcombe's method 1), for reference only: (b - c)/n +- z/n *
    sqrt(b + c - (b - c)^2 / n). It collapses to a point when b + c is 0; (-1, 1) when n is 0; clipped."""
    n = a + b + c + d
    if n == 0:
        return -1.0, 1.0
    diff = (b - c) / n
    half = z / n * math.sqrt(max(0.0, b + c - (b - c) ** 2 / n))
    return max(-1.0, diff - half), min(1.0, diff + half)


@dataclass(frozen=True)
class PairedComparison:
    """Run A against run B on the same n questions (table convention in the module docstring)."""

    n: int
    both_right: int  # a
    a_only: int  # c: A right, B wrong
    b_only: int  # b: A wrong, B right
    both_wrong: int  # d
    acc_a: float
    acc_b: float
    diff: float  # acc_b - acc_a
    diff_ci95: tuple[float, float]  # Newcombe method 10
    mcnemar_p: float

    def significant(self, alpha: float = 0.05) -> bool:
        """Whether the exact McNemar test rejects "A and B are equally accurate" at level ``alpha``."""
        return self.mcnemar_p < alpha

    def to_dict(self) -> dict:
        out = asdict(self)
        out["diff_ci95"] = list(self.diff_ci95)
        return out


def compare_paired(correct_a: Mapping[str, bool], correct_b: Mapping[str, bool]) -> PairedComparison:
    """Compare per-question correctness of two runs; both must cover exactly the same question ids."""
    keys_a, keys_b = set(correct_a), set(correct_b)
    if keys_a != keys_b:
        only_a, only_b = sorted(keys_a - keys_b, key=str), sorted(keys_b - keys_a, key=str)
        parts = []
        for label, ids in (("only in A", only_a), ("only in B", only_b)):
            if ids:
                shown = ", ".join(map(str, ids[:3])) + (", ..." if len(ids) > 3 else "")
                parts.append(f"{len(ids)} {label} ({shown})")
        raise ValueError(f"the runs cover different questions: {len(only_a) + len(only_b)} ids differ: "
                         + "; ".join(parts))
    if not keys_a:
        raise ValueError("no questions to compare")
    a = b = c = d = 0
    for key in keys_a:
        right_a, right_b = bool(correct_a[key]), bool(correct_b[key])
        if right_a and right_b:
            a += 1
        elif right_b:
            b += 1
        elif right_a:
            c += 1
        else:
            d += 1
    n = a + b + c + d
    return PairedComparison(n=n, both_right=a, a_only=c, b_only=b, both_wrong=d, acc_a=(a + c) / n,
                            acc_b=(a + b) / n, diff=(b - c) / n,
                            diff_ci95=newcombe_paired_interval(a, b, c, d), mcnemar_p=mcnemar_exact(b, c))
