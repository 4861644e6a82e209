"""Training pairs for prompt tuning and the batches of each step.

A pair is (``Q: question\\nA:``, `` rationale The answer is N.``): the bench's CoT format, so prompts
tuned here are used 0-shot by ``bench gsm8k --tuned-prompts``. A GSM8K line's rationale is its answer
without the calculator annotations (``<<48/2=24>>``) and the ``#### N`` line. ``arith:train`` is a fixed
pool of the synthetic arithmetic problems the shipped arithmetic model was trained on (never a held-out
question of ``arith:test``).

The last ``eval_size`` pairs are the held-out slice, never trained on. The batch of step ``s`` depends only
on the seed and ``s`` (a seeded permutation per epoch), so a resumed run sees the batches it would have
seen without the crash.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from petals_ops.util.errors import InputError

ARITH_TRAIN = "arith:train"
ARITH_POOL = 4000
ARITH_SEED = 11  # not the model's training seed (0): pairs it has not seen verbatim
SEPARATOR = "\n\n"  # after each completion: where the bench stops a path
CALC_RE = re.compile(r"<<[^>]*>>")


@dataclass
class Pairs:
    source: str
    sha256: str
    train: list[tuple[str, str]]
    held_out: list[tuple[str, str]]
    _perms: dict[int, list[int]] = field(default_factory=dict, repr=False)

    def batch(self, step: int, batch_size: int, seed: int) -> list[tuple[str, str]]:
        """The pairs of step ``step`` (1-based): consecutive slots of seeded per-epoch permutations."""
        n = len(self.train)
        chosen = []
        for slot in range((step - 1) * batch_size, step * batch_size):
            epoch = slot // n
            if epoch not in self._perms:
                self._perms[epoch] = random.Random(f"{seed}:{epoch}").sample(range(n), n)
            chosen.append(self.train[self._perms[epoch][slot % n]])
        return chosen


def rationale_of(answer: str) -> tuple[str, str]:
    """(worked steps, gold) of a GSM8K answer field."""
    body, _, gold = answer.rpartition("####")
    steps = " ".join(CALC_RE.sub("", line).strip() for line in body.splitlines() if line.strip())
    return steps, gold.strip().replace(",", "")


def pair_of(question: str, answer: str) -> tuple[str, str]:
    steps, gold = rationale_of(answer)
    return f"Q: {question.strip()}\nA:", f" {steps} The answer is {gold}.".replace("  ", " ")


def _arith_pool() -> tuple[list[tuple[str, str]], str]:
    from petals_ops.lab import synthetic_math

    stream = synthetic_math.training_examples(ARITH_SEED, exclude=synthetic_math.held_out_questions())
    pairs = [next(stream) for _ in range(ARITH_POOL)]
    return pairs, hashlib.sha256(json.dumps(pairs).encode()).hexdigest()


def _data_file(spec: str) -> Path:
    from petals_ops.bench import data

    entry = data.DATASETS.get(data.canonical_name(spec))
    return entry.path if entry is not None else Path(spec).expanduser()


def _training_file(spec: str) -> str:
    """``--data DIR``, the official GSM8K checkout (as the bench takes it): its train.jsonl (the bench reads
    test.jsonl there; tuning on the test split would spoil every later measurement)."""
    path = Path(spec).expanduser()
    if not path.is_dir():
        return spec
    for candidate in (path / "train.jsonl", path / "grade_school_math" / "data" / "train.jsonl",
                      path / "data" / "train.jsonl"):
        if candidate.is_file():
            return str(candidate)
    raise InputError(f"--data {spec} is a directory without train.jsonl",
                     fix="pass the training JSONL file itself, or the GSM8K checkout directory")


def require_answer_tokens(tokenizer, pairs: Pairs, max_length: int, sample: int = 512) -> None:
    """Refuse a ``--max-length`` that cuts every answer token of the held-out pairs or of the training
    pairs (the first ``sample`` of them): the loss would be 0.000 on no tokens and "best" prompts would
    be saved from no signal."""
    for name, rows in (("held-out", pairs.held_out), ("training", pairs.train[:sample])):
        questions = [len(tokenizer(q)["input_ids"]) for q, _ in rows]
        answers = [len(tokenizer(a)["input_ids"]) for _, a in rows]
        kept = sum(max(0, min(q + a, max_length) - max(q, 1)) for q, a in zip(questions, answers))
        if rows and kept == 0:
            raise InputError(
                f"--max-length {max_length} cuts every answer token of the {name} pairs (their questions "
                f"alone take {min(questions)} to {max(questions)} tokens): the loss would measure nothing",
                fix=f"use --max-length {max(questions) + 64} or more")


def load_pairs(spec: str, eval_size: int) -> Pairs:
    """``--data``: ``arith:train``, a packaged set (``gsm8k:train``) or a GSM8K-layout JSONL path."""
    from petals_ops.bench import data

    if spec == ARITH_TRAIN:
        pairs, sha = _arith_pool()
        source = ARITH_TRAIN
    else:
        if spec.startswith(data.HF_PREFIX) or data.canonical_name(spec) == data.DEMO_NAME:
            raise InputError(
                f"--data {spec} cannot be tuned on", fix="pass gsm8k:train, arith:train or a JSONL path"
            )
        spec = _training_file(spec)
        dataset = data.load_dataset(spec)  # checks the file (sha of packaged sets, every line) once
        rows = [
            json.loads(line)
            for line in _data_file(spec).read_text(encoding="utf-8").split("\n")  # as data.py: "\n" only
            if line.strip()
        ]
        pairs = [pair_of(r["question"], r["answer"]) for r in rows]
        source, sha = dataset.source, dataset.sha256
    if len(pairs) <= eval_size:
        raise InputError(
            f"--data {spec} has {len(pairs)} pairs, not more than --eval-size {eval_size}",
            fix="use a smaller --eval-size or more data",
        )
    return Pairs(source, sha, pairs[:-eval_size], pairs[-eval_size:])


def collate(tokenizer, pairs: list[tuple[str, str]], max_length: int):
    """(input_ids, labels, real tokens): rows padded on the right (Petals' BLOOM takes no attention mask;
    with causal attention right pads change nothing before them); labels -100 on the question and pads."""
    import torch

    sep = tokenizer(SEPARATOR)["input_ids"]
    rows, labels = [], []
    for prompt, completion in pairs:
        q = tokenizer(prompt)["input_ids"]
        a = tokenizer(completion)["input_ids"] + sep
        rows.append((q + a)[:max_length])
        labels.append(([-100] * len(q) + a)[:max_length])
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    lab = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (r, la) in enumerate(zip(rows, labels)):
        ids[i, : len(r)] = torch.tensor(r)
        lab[i, : len(la)] = torch.tensor(la)
    return ids, lab, sum(len(r) for r in rows)
