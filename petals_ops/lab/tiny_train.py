"""Train the tiny BLOOM a little arithmetic, in-process, offline and deterministic for a seed.

The model learns the synthetic problems of :mod:`petals_ops.lab.synthetic_math` in the bench's CoT format.
Rows are packed examples (``Q: ...\\nA: ... The answer is N.`` joined by blank lines, as a few-shot
prompt reads); the loss counts only the completion side and the separator after it, so the capacity of a
tiny model goes to the arithmetic rather than to guessing random question numbers. The held-out
problems are excluded from training by their text. Torch runs on a fixed number of threads: the same
seed gives the same weights on the same torch build, whatever the machine's core count.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from petals_ops.lab import synthetic_math
from petals_ops.util.errors import InputError

TRAIN_THREADS = 2  # fixed, so the float reduction order (and so the weights) does not depend on the machine


@dataclass(frozen=True)
class TrainSpec:
    steps: int = 800
    batch_size: int = 32
    seq_len: int = 160
    lr: float = 6e-3
    warmup: int = 40
    weight_decay: float = 0.01
    seed: int = 0

    def validate(self) -> TrainSpec:
        if self.steps < 1:
            raise InputError(f"--steps {self.steps} must be at least 1", fix="use --steps 800")
        if not (0 < self.lr < 1):  # also refuses nan
            raise InputError(f"--lr {self.lr} must be a number in (0, 1)", fix="use --lr 6e-3")
        if self.batch_size < 1 or self.seq_len < 32:
            raise InputError("--batch-size must be >= 1 and the sequence length >= 32",
                             fix="keep the defaults")
        return self


@dataclass(frozen=True)
class TrainStep:
    step: int
    steps: int
    loss: float
    tokens_per_second: float
    elapsed: float

    @property
    def eta(self) -> float:
        return self.elapsed / self.step * (self.steps - self.step)


@dataclass(frozen=True)
class TrainResult:
    spec: TrainSpec
    losses: list[float]  # mean loss of each block of ``LOSS_EVERY`` steps
    first_loss: float
    final_loss: float
    seconds: float

    def to_dict(self) -> dict:
        return {"spec": asdict(self.spec), "losses": self.losses, "first_loss": self.first_loss,
                "final_loss": self.final_loss, "seconds": round(self.seconds, 1)}


LOSS_EVERY = 20


def corpus_for_tokenizer(seed: int, n: int = 3000) -> list[str]:
    """Text the BPE is trained on: rendered problems (digits are split apart by the pre-tokenizer)."""
    stream = synthetic_math.training_examples(seed + 1)
    return ["".join(next(stream)) for _ in range(n)]


def _batches(tokenizer, spec: TrainSpec):
    """Endless (input_ids, labels) batches of packed examples; labels are -100 on the prompt side."""
    import torch

    stream = synthetic_math.training_examples(spec.seed, exclude=synthetic_math.held_out_questions())
    sep = tokenizer("\n\n")["input_ids"]
    while True:
        rows, labels = [], []
        for _ in range(spec.batch_size):
            ids, lab = [], []
            while len(ids) < spec.seq_len:
                question, completion = next(stream)
                q = tokenizer(question)["input_ids"]
                a = tokenizer(completion)["input_ids"] + sep
                ids += q + a
                lab += [-100] * len(q) + a
            rows.append(ids[:spec.seq_len])
            labels.append(lab[:spec.seq_len])
        yield torch.tensor(rows), torch.tensor(labels)


def train(model, tokenizer, spec: TrainSpec,
          on_step: Callable[[TrainStep], None] | None = None) -> TrainResult:
    """AdamW with linear warmup and cosine decay to 10%; gradient norm clipped at 1."""
    import torch

    spec.validate()
    threads = torch.get_num_threads()
    torch.set_num_threads(TRAIN_THREADS)
    torch.manual_seed(spec.seed)
    try:
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay,
                                      betas=(0.9, 0.98))
        batches = _batches(tokenizer, spec)
        started, tokens, window, losses, first = time.monotonic(), 0, [], [], None
        for step in range(1, spec.steps + 1):
            progress = min(1.0, step / spec.steps)
            lr = (spec.lr * min(1.0, step / max(1, spec.warmup))
                  * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))))
            for group in optimizer.param_groups:
                group["lr"] = lr
            ids, labels = next(batches)
            loss = model(input_ids=ids, labels=labels).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            value = float(loss.detach())
            first = value if first is None else first
            window.append(value)
            tokens += ids.numel()
            if len(window) == LOSS_EVERY or step == spec.steps:
                losses.append(round(sum(window) / len(window), 4))
                window = []
            if on_step is not None:
                elapsed = time.monotonic() - started
                on_step(TrainStep(step, spec.steps, value, tokens / max(elapsed, 1e-9), elapsed))
        model.eval()
        return TrainResult(spec, losses, first, losses[-1], time.monotonic() - started)
    finally:
        torch.set_num_threads(threads)
