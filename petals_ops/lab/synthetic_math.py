"""Synthetic GSM-style word problems with one to three arithmetic steps that can be taken in any order.

They exist to train the tiny BLOOM a little arithmetic (``petals-ops model tiny --skill arithmetic``) so
the bench can reproduce a known effect end to end: Self-Consistency beats greedy Chain-of-Thought only
where a problem has several valid reasoning paths whose errors differ (Wang et al. 2022). Here a problem
is a start amount and one to three gains or losses (1 to 5 each, on a start of 10 to 30); a rationale
applies the changes in a random order (``14 + 29 = 43. 43 - 8 = 35. The answer is 35.``), so the same
problem has up to six chains of different intermediate sums, and a model's slips differ between them.

Everything is deterministic for a seed and written in the bench's CoT format (``Q: ...\\nA: ... The
answer is N.``); the held-out set is a GSM8K-layout JSONL (``#### N``) the bench loads by name.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass

NAMES = ("Mia", "Tom", "Ava", "Sam", "Lily", "Ben", "Zoe", "Max", "Emma", "Leo", "Nora", "Jack")
ITEMS = ("apples", "stickers", "marbles", "books", "coins", "cards", "shells", "pencils", "stamps", "toys")
GAINS = ("buys {n} more", "gets {n} from a friend", "finds {n} more", "is given {n} more", "wins {n} more")
LOSSES = ("gives {n} to a friend", "loses {n}", "sells {n}", "gives away {n}", "uses {n}")
# Training mixes in one-change problems: without them a tiny model never learns to add one number cleanly
# (greedy accuracy fell from 42% to 8% when they were dropped). The held-out set keeps only problems with
# two or three changes: a one-change problem has a single order, nothing for SC to vote over.
TRAIN_STEP_WEIGHTS = {1: 1, 2: 2, 3: 2}
HELD_OUT_STEP_WEIGHTS = {2: 1, 3: 1}
HELD_OUT_SEED = 20261121  # the shipped held-out set (petals_ops/data/arith/test.jsonl)
HELD_OUT_SIZE = 400
PROMPT_SEED = 7


@dataclass(frozen=True)
class NumberRanges:
    start: tuple[int, int] = (10, 30)
    change: tuple[int, int] = (1, 5)


@dataclass(frozen=True)
class Problem:
    question: str
    start: int
    changes: tuple[int, ...]  # signed: a gain is positive, a loss negative

    @property
    def answer(self) -> int:
        return self.start + sum(self.changes)


def make_problem(rng: random.Random, steps: int | None = None, ranges: NumberRanges = NumberRanges(),
                 step_weights: dict[int, int] = TRAIN_STEP_WEIGHTS) -> Problem:
    """A problem whose every order of changes stays at or above zero (a loss never exceeds what is there)."""
    steps = steps or rng.choices(list(step_weights), weights=list(step_weights.values()))[0]
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    while True:
        start = rng.randint(*ranges.start)
        changes = tuple((1 if rng.random() < 0.6 else -1) * rng.randint(*ranges.change) for _ in range(steps))
        if start + sum(c for c in changes if c < 0) >= 0:
            break
    acts = [(rng.choice(GAINS) if c > 0 else rng.choice(LOSSES)).format(n=abs(c)) for c in changes]
    told = acts[0] if len(acts) == 1 else ", ".join(acts[:-1]) + " and then " + acts[-1]
    question = f"{name} has {start} {item}. {name} {told}. How many {item} does {name} have now?"
    return Problem(question, start, changes)


def rationale(problem: Problem, rng: random.Random) -> str:
    """One valid chain: the changes in a random order, a gain written either way round."""
    order = list(problem.changes)
    rng.shuffle(order)
    current, steps = problem.start, []
    for change in order:
        new = current + change
        if change > 0 and rng.random() < 0.5:
            steps.append(f"{change} + {current} = {new}.")
        else:
            steps.append(f"{current} {'+' if change > 0 else '-'} {abs(change)} = {new}.")
        current = new
    return " ".join(steps) + f" The answer is {current}."


def render(problem: Problem, rng: random.Random) -> tuple[str, str]:
    """(``Q: question\\nA:``, `` rationale``): the prompt side and the completion side of one example."""
    return f"Q: {problem.question}\nA:", " " + rationale(problem, rng)


def training_examples(seed: int, exclude: set[str] = frozenset()) -> Iterator[tuple[str, str]]:
    """An endless stream of (prompt side, completion side), skipping held-out questions."""
    rng = random.Random(seed)
    while True:
        problem = make_problem(rng)
        if problem.question not in exclude:
            yield render(problem, rng)


def held_out(n: int, seed: int) -> list[Problem]:
    """``n`` distinct problems for evaluation (a seed of their own, never the training seed)."""
    rng, seen, problems = random.Random(seed), set(), []
    while len(problems) < n:
        problem = make_problem(rng, step_weights=HELD_OUT_STEP_WEIGHTS)
        if problem.question not in seen:
            seen.add(problem.question)
            problems.append(problem)
    return problems


def held_out_questions() -> set[str]:
    """The questions of the shipped held-out set: training never sees them."""
    return {p.question for p in held_out(HELD_OUT_SIZE, HELD_OUT_SEED)}


def to_jsonl(problems: list[Problem], rng: random.Random) -> str:
    """GSM8K's layout: a worked rationale then ``#### N``, so the bench's loader reads it unchanged."""
    lines = []
    for p in problems:
        worked = rationale(p, rng).rsplit(" The answer is", 1)[0]
        lines.append(json.dumps({"question": p.question, "answer": f"{worked}\n#### {p.answer}"}))
    return "\n".join(lines) + "\n"


def prompt_text(seed: int) -> str:
    """A 2-exemplar prompt file (a two-step and a three-step problem) in the bench's prompt layout."""
    rng = random.Random(seed)
    blocks = []
    for steps in (2, 3):
        q, a = render(make_problem(rng, steps), rng)
        blocks.append(q + a)
    return ("# Two exemplars of the synthetic arithmetic task (petals_ops.synthetic_math, seed %d)"
            "\n\n%s\n") % (
        seed, "\n\n".join(blocks))


def write_held_out_files(directory, n: int, seed: int, prompt_seed: int) -> dict[str, str]:
    """Write ``test.jsonl`` and ``prompt.txt`` into ``directory``; returns their sha256 by name."""
    import hashlib
    from pathlib import Path

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    files = {"test.jsonl": to_jsonl(held_out(n, seed), random.Random(seed + 1)),
             "prompt.txt": prompt_text(prompt_seed)}
    for name, text in files.items():
        (directory / name).write_text(text)
    return {name: hashlib.sha256(text.encode()).hexdigest() for name, text in files.items()}


if __name__ == "__main__":  # python -m petals_ops.lab.synthetic_math DIR: regenerate the shipped held-out set
    import sys

    for name, digest in write_held_out_files(sys.argv[1], HELD_OUT_SIZE, HELD_OUT_SEED, PROMPT_SEED).items():
        print(f"{name} {digest}")
