"""Typed results of a bench run: a scored path, a question's record, and the run's summary.

On disk a record is one JSON line of ``records.jsonl`` (:meth:`QuestionRecord.to_dict`, method extras
flattened in), and the summary is ``summary.json``. Readers go through :meth:`from_dict`, so fields a
later version adds do not break older run dirs' reports.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass(frozen=True)
class ScoredPath:
    i: int  # the path's index among the question's K paths (its sampling seed)
    answer: str | None
    how: str  # how the answer was extracted: answer_is, last_number, none
    correct: bool
    finish: str  # stop, eos, length
    tokens: int
    text: str  # cut at the first stop string: what is scored
    raw: str  # everything decoded
    category: str = ""  # error-analysis category (petals_ops.bench.analysis)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScoredPath:
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


@dataclass(frozen=True)
class QuestionRecord:
    id: str
    line: int
    question: str
    gold: str
    prompt_id: str
    method: str
    backend: str
    prompt_tokens: int
    paths: list[ScoredPath]
    vote: str | None
    correct: bool
    tokens: int
    seconds: float
    attempts: int
    failures: list[str]
    servers: list[str]
    batches: list[int]
    error: str | None
    finished_at: float
    extras: dict[str, Any] = field(default_factory=dict)  # what the method adds (e.g. SC's agreement)

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("paths", "extras")}
        data["paths"] = [asdict(p) for p in self.paths]
        return {**self.extras, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuestionRecord:
        known = {f.name for f in fields(cls)} - {"extras"}
        values = {k: data.get(k) for k in known}
        values["paths"] = [ScoredPath.from_dict(p) for p in data.get("paths") or []]
        for key, empty in (("failures", []), ("servers", []), ("batches", [])):
            values[key] = values[key] or empty
        return cls(**values, extras={k: v for k, v in data.items() if k not in known})


@dataclass(frozen=True)
class RunSummary:
    """``summary.json``: the run's figures. ``extras`` holds what the method adds (SC: maj@k...)."""

    run_dir: str
    method: str
    paths: int
    backend: str | None
    n: int
    done: int
    missing: int
    scored: int
    errors: int
    error_ids: list[str]
    correct: int
    accuracy: float | None
    accuracy_wilson95: list[float]
    invalid_path_rate: float | None
    finish_reasons: dict[str, int]
    extraction: dict[str, int]
    categories: dict[str, Any]  # error analysis: counts per category and examples
    tokens: int
    prompt_tokens_mean: float | None
    wall_seconds: float
    wall_seconds_total: float
    tokens_this_invocation: int
    tokens_per_second: float | None
    questions_per_minute: float | None
    run: dict[str, Any]
    exec: dict[str, Any]
    config: dict[str, Any]
    servers_served: dict[str, int]
    swarm: list[dict[str, Any]]
    written_at: float
    extras: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extras"}
        return {**self.extras, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSummary:
        known = {f.name for f in fields(cls)} - {"extras"}
        missing = sorted(k for k in ("run_dir", "method", "n", "scored", "config") if k not in data)
        if missing:
            raise ValueError(f"it lacks {', '.join(missing)}")
        values = {k: data.get(k) for k in known}
        return cls(**values, extras={k: v for k, v in data.items() if k not in known})
