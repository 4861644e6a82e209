"""Self-Consistency (Wang et al. 2022): K sampled CoT paths and a plurality vote over their answers.

It adds to each record the share of paths that agree with the vote, and reports the maj@k curve
(k = 1..K, from subsets of the K paths; see :mod:`petals_ops.bench.stats`), pass@K and the mean agreement.
"""

from petals_ops.bench.figures import FigureSpec
from petals_ops.bench.methods.base import Method, register
from petals_ops.bench.stats import maj_curve


class SelfConsistency(Method):
    name = "sc"
    help = "K sampled paths and a majority vote"
    samples = True
    default_paths = 10
    figures = (
        FigureSpec("maj_at_k", "maj@k", kind="curve", column="maj@k", brief=True, point="maj@{x}",
                   note="expected plurality-vote accuracy over every k-subset of each question's sampled "
                        "paths (exact)"),
        FigureSpec("pass_at_k", "pass@K",
                   note="share of questions where at least one of the K paths is right"),
        FigureSpec("agreement", "agreement with the vote",
                   note="mean share of a question's paths whose answer is the vote"),
    )

    def record_extras(self, paths, vote):
        if not paths or vote is None:
            return {"agreement": None}
        return {"agreement": sum(p.answer == vote for p in paths) / len(paths)}

    def summary_figures(self, records, cfg):
        votes = [([p.answer for p in r.paths], r.gold) for r in records if r.paths]
        k_max = max((len(a) for a, _ in votes), default=cfg.paths)
        curve = maj_curve(votes, k_max)
        agreement = [r.extras["agreement"] for r in records if r.extras.get("agreement") is not None]
        return {
            "maj_at_k": {str(k): v for k, v in enumerate(curve, start=1)},
            "pass_at_k": ((sum(any(p.correct for p in r.paths) for r in records) / len(records))
                          if records else None),
            "agreement": sum(agreement) / len(agreement) if agreement else None,
        }


register(SelfConsistency())
