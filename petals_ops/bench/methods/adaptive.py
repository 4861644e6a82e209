"""Adaptive-Consistency (Aggarwal et al., EMNLP 2023, arXiv 2305.11860), its Beta stopping rule: with v1
paths for the leading answer and v2 for the runner-up, the leader's share p of the two has the posterior
Beta(v1 + 1, v2 + 1) (a uniform prior); stop once P(p > 1/2) exceeds ``--param threshold`` (the paper's
0.95), up to --paths. Paths without an answer do not vote.

The paper samples one path at a time. Here each round is the fewest paths that could end the question
(all of them joining the leader): no fewer paths could, so the rule stops after exactly the paths it would
have stopped after one at a time, in fewer sessions (fewer server-steps). With threshold 0.95 that is 4
paths first (P = 1 - 2^-(v1+1) with no runner-up), then as many as the votes so far need.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from fractions import Fraction

from petals_ops.bench.methods import stopping
from petals_ops.bench.methods.base import Method, Parameter, register
from petals_ops.util.errors import InputError


def leader_confidence(leader: int, runner_up: int) -> float:
    """P(p > 1/2) for p ~ Beta(leader + 1, runner_up + 1), exact: for integer shapes a, b the Beta CDF
    is a binomial tail, P(p > 1/2) = P(Binomial(a + b - 1, 1/2) <= a - 1) = sum_{j <= leader}
    C(leader + runner_up + 1, j) / 2^(leader + runner_up + 1). (No scipy; integers, then one division.)"""
    if leader < 0 or runner_up < 0:
        raise ValueError(f"counts must be >= 0, got {leader}, {runner_up}")
    n = leader + runner_up + 1
    term, total = 1, 0
    for j in range(leader + 1):  # term == C(n, j)
        total += term
        term = term * (n - j) // (j + 1)
    return float(Fraction(total, 2 ** n))


def top_two(answers: Sequence[str | None]) -> tuple[int, int]:
    """Votes of the leading answer and of the runner-up (0 when there is none); missing answers aside."""
    counts = sorted(Counter(a for a in answers if a is not None).values(), reverse=True)
    return (counts[0] if counts else 0), (counts[1] if len(counts) > 1 else 0)


def is_decided(answers: Sequence[str | None], threshold: float) -> bool:
    """The Beta rule: P(leader's share > the runner-up's) > ``threshold`` (a tie never is: P = 1/2)."""
    leader, runner_up = top_two(answers)
    return leader > 0 and leader_confidence(leader, runner_up) > threshold


def adaptive_next(answers: Sequence[str | None], threshold: float, max_paths: int) -> int:
    """Paths to decode next: 0 once decided or ``max_paths`` are in, else the fewest more paths that
    could decide it (all joining the leader), cut at ``max_paths``."""
    n = len(answers)
    if n >= max_paths or is_decided(answers, threshold):
        return 0
    leader, runner_up = top_two(answers)
    more = 1
    while more < max_paths - n and not leader_confidence(leader + more, runner_up) > threshold:
        more += 1
    return more


class AdaptiveConsistency(Method):
    name = "adaptive"
    help = ("Adaptive-Consistency: sample until a Beta posterior says the leading answer is ahead "
            "(--param threshold), up to --paths")
    samples = True
    default_paths = 40
    parameters = (Parameter("threshold", float, 0.95, "stop when P(leader ahead) exceeds this"),)
    figures = stopping.FIGURES

    def validate(self, cfg) -> None:
        threshold = cfg.param("threshold")
        if not 0.5 <= threshold < 1:
            raise InputError(f"--param threshold={threshold} must be at least 0.5 and below 1",
                             fix="use --param threshold=0.95")

    def next_paths(self, cfg, paths):
        return adaptive_next([p.answer for p in paths], cfg.param("threshold"), cfg.paths)

    def record_extras(self, paths, vote):
        leader, runner_up = top_two([p.answer for p in paths])
        return {"confidence": leader_confidence(leader, runner_up) if leader else None}

    def summary_figures(self, records, cfg):
        threshold = cfg.param("threshold")
        return stopping.summary_figures(records, cfg, lambda a: is_decided(a, threshold))


register(AdaptiveConsistency())
