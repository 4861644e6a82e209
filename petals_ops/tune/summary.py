"""The typed summary of a tune run (``tune.json``): what ``run_tune`` returns and the CLI prints.

JSON stays the form on disk (:meth:`TuneSummary.to_dict` writes the same keys as before);
:meth:`TuneSummary.from_dict` reads it back (:func:`petals_ops.tune.store.load_tune_summary`), with
defaults for what older files lack.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass(frozen=True)
class TuneData:
    source: str
    sha256: str
    train_pairs: int
    held_out_pairs: int


@dataclass(frozen=True)
class EvalPoint:
    step: int
    loss: float


@dataclass(frozen=True)
class BestPrompts:
    """The prompts with the lowest held-out loss so far (``best.safetensors``)."""

    step: int
    eval_loss: float
    id: str


@dataclass(frozen=True)
class StepFailure:
    step: int
    attempt: int
    error: str
    banned: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class TuneTiming:
    forward_s: float = 0.0
    backward_s: float = 0.0
    optimizer_s: float = 0.0
    train_s: float = 0.0
    tokens: int = 0  # real (unpadded) training tokens
    padded_tokens: int = 0
    tokens_per_second: float | None = None


@dataclass(frozen=True)
class TuneSummary:
    model: str
    dht_prefix: str
    backend: str
    mode: str
    pre_seq_len: int
    data: TuneData
    hyperparameters: dict[str, Any]  # the TuneSpec (tune.spec.TuneSpec.to_dict)
    step: int
    steps: int
    losses: list[float]
    evals: list[EvalPoint]
    best: BestPrompts | None  # None until the first held-out evaluation
    prompts_id: str | None  # the last saved prompts (prompts.safetensors)
    servers: list[str]
    resumed_at: list[int]
    retries: int
    failures: list[StepFailure]  # the last 20
    timing: TuneTiming

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["best"] = data["best"] or {}  # as tune.json always had it
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TuneSummary:
        """ValueError (or TypeError) unless ``data`` is a tune summary."""
        if not isinstance(data, dict):
            raise ValueError("it is not a JSON object")
        known = {f.name for f in fields(cls)}
        missing = sorted(known - set(data) - {"failures", "resumed_at", "retries", "servers", "evals"})
        if missing:
            raise ValueError(f"it lacks {', '.join(missing)}")
        values = {k: v for k, v in data.items() if k in known}
        values.update(
            data=TuneData(**data["data"]),
            evals=[EvalPoint(**e) for e in data.get("evals") or []],
            best=BestPrompts(**data["best"]) if data.get("best") else None,
            failures=[StepFailure(**f) for f in data.get("failures") or []],
            timing=TuneTiming(**data["timing"]),
            servers=list(data.get("servers") or []),
            resumed_at=list(data.get("resumed_at") or []),
            retries=int(data.get("retries") or 0),
        )
        return cls(**values)
