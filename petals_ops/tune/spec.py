"""What a tuning run is (its identity in ``config.json``) and how it is run, checked before any work."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from petals_ops.client.tuned_model import MAX_PRE_SEQ_LEN, MODES
from petals_ops.util.errors import InputError

# A Petals server refuses a forward/backward request of more than --max_batch_size tokens (rows x length,
# prompts included; petals/server/task_pool.py). Servers do not announce it; 2048 is petals' default
# for BLOOM.
DEFAULT_SERVERS_MAX_BATCH_SIZE = 2048
# The petals client sends at most this many tokens per request, but never less than one row
# (petals/client/sequential_autograd.py, MAX_TOKENS_IN_BATCH).
CLIENT_TOKENS_PER_REQUEST = 1024


@dataclass(frozen=True)
class TuneSpec:
    """The hyper-parameters (part of the run's identity: a resumed run must use the same)."""

    data: str = "gsm8k:train"
    mode: str = "ptune"
    pre_seq_len: int = 16
    steps: int = 200
    batch_size: int = 8
    lr: float = 1e-2
    seed: int = 0
    max_length: int = 256  # tokens of one question+rationale row (longer rows are cut)
    eval_every: int = 20
    eval_size: int = 32
    checkpoint_every: int = 10

    def validate(self) -> TuneSpec:
        if self.mode not in MODES:
            raise InputError(f"--mode {self.mode} is unknown", fix=f"use one of: {', '.join(MODES)}")
        if self.pre_seq_len < 1:
            raise InputError(
                f"--pre-seq-len {self.pre_seq_len} must be at least 1 (the number of trained prompt vectors)",
                fix="use --pre-seq-len 16",
            )
        if self.pre_seq_len > MAX_PRE_SEQ_LEN:
            raise InputError(
                f"--pre-seq-len {self.pre_seq_len} is over {MAX_PRE_SEQ_LEN} prompt vectors",
                fix="use --pre-seq-len 16 (tens of vectors are the usual range)",
            )
        for name, value in (
            ("--steps", self.steps),
            ("--batch-size", self.batch_size),
            ("--eval-every", self.eval_every),
            ("--eval-size", self.eval_size),
            ("--checkpoint-every", self.checkpoint_every),
        ):
            if value < 1:
                raise InputError(f"{name} {value} must be at least 1", fix=f"pass {name} 1 or more")
        if not (math.isfinite(self.lr) and 0 < self.lr < 10):
            raise InputError(f"--lr {self.lr} must be a number in (0, 10)", fix="use --lr 1e-2")
        if self.max_length < 8:
            raise InputError(
                f"--max-length {self.max_length} must be at least 8 tokens", fix="use --max-length 256"
            )
        return self

    def to_dict(self) -> dict:
        return asdict(self)


def request_rows(batch_size: int, row_tokens: int) -> int:
    """Rows in the largest request the petals client sends a server for one step."""
    return min(batch_size, max(CLIENT_TOKENS_PER_REQUEST // row_tokens, 1))


def check_request_size(spec: TuneSpec, servers_max_batch_size: int) -> None:
    """Refuse a step a server would refuse ('Task size greater than max_batch_size'), before any work."""
    row = spec.pre_seq_len + spec.max_length
    rows = request_rows(spec.batch_size, row)
    if rows * row > servers_max_batch_size:
        raise InputError(
            f"a training step sends requests of {rows} rows x {row} tokens (--batch-size {spec.batch_size}, "
            f"--pre-seq-len {spec.pre_seq_len} + --max-length {spec.max_length}) = {rows * row} tokens, "
            "above the "
            f"servers' max_batch_size of {servers_max_batch_size} tokens",
            fix="lower --batch-size, --max-length or --pre-seq-len, or pass --servers-max-batch-size "
            "if the servers "
            "run with a larger --max_batch_size",
        )
