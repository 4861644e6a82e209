"""Several answers in one completion: vote over the answers a completion writes, one ``A:`` line each.

Meant for a prompt whose exemplars hold several worked answers to each question (``A: ...`` lines one after
another, see :mod:`petals_ops.bench.prompts`): the model, continuing the pattern, writes several solutions
in one completion, stopped at the next ``Q:`` (or blank line) as usual. The question's answer is the
plurality of every answer in its completions (one greedy completion, or K sampled ones). A path's own
``answer`` stays its first answer (what CoT would have read), so the figures can show what the vote adds.
"""

from __future__ import annotations

import re

from petals_ops.bench.extraction import answers_equal, extract_answer
from petals_ops.bench.figures import FigureSpec
from petals_ops.bench.methods.base import Method, register
from petals_ops.bench.stats import plurality

ANSWER_LINE_RE = re.compile(r"\n\s*A:")


def completion_answers(text: str) -> list[str | None]:
    """The answer of each ``A:`` part of a completion's scored text, in order (None: a part with no
    number); empty parts (a trailing ``A:``) are left out."""
    return [extract_answer(part)[0] for part in ANSWER_LINE_RE.split(text) if part.strip()]


def _all_answers(paths) -> list[str | None]:
    return [a for p in paths for a in completion_answers(p.text)]


class MultiAnswer(Method):
    name = "multi-answer"
    help = "a vote over the several answers inside each completion (and over all K paths')"
    samples = True
    default_paths = 1
    figures = (
        FigureSpec("answers_per_completion", "answers per completion", kind="number", column="answers/c",
                   brief=True, note="mean number of 'A:' answers a completion wrote"),
        FigureSpec("first_answer_accuracy", "first answer accuracy", column="first A",
                   note="share of questions whose first completion's first answer is right (what CoT reads)"),
        FigureSpec("one_completion_vote", "one-completion vote accuracy", column="vote in 1",
                   note="share of questions whose vote over the first completion's answers alone is right"),
    )

    def samples_for(self, cfg) -> bool:
        return cfg.paths > 1  # one completion: greedy, as CoT; K of them: sampled, as SC

    def aggregate(self, paths):
        return plurality(_all_answers(paths))

    def record_extras(self, paths, vote):
        answers = [completion_answers(p.text) for p in paths]
        flat = [a for group in answers for a in group if a is not None]
        return {"answers": answers,
                "inline_agreement": (sum(a == vote for a in flat) / len(flat)) if flat and vote else None}

    def summary_figures(self, records, cfg):
        firsts = [r for r in records if r.paths]
        if not firsts:
            return {spec.key: None for spec in self.figures}
        counts = [len(completion_answers(p.text)) for r in firsts for p in r.paths]
        return {
            "answers_per_completion": sum(counts) / len(counts),
            "first_answer_accuracy": sum(bool(r.paths[0].correct) for r in firsts) / len(firsts),
            "one_completion_vote": sum(answers_equal(plurality(completion_answers(r.paths[0].text)), r.gold)
                                       for r in firsts) / len(firsts),
        }


register(MultiAnswer())
