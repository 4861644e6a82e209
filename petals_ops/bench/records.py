"""Typed results of a bench run: a scored path, a question's record, and the run's summary.

On disk a record is one JSON line of ``records.jsonl`` (:meth:`QuestionRecord.to_dict`, method extras
flattened in), and the summary is ``summary.json`` (:meth:`RunSummary.to_dict`, each figure's value under
its key). Readers go through :meth:`from_dict`, so fields a later version adds do not break older run
dirs' reports, and older run dirs (records without ``rounds``, summaries that do not describe their
figures) still load.
"""

from __future__ import annotations

import types
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any

from petals_ops.bench.figures import Figure, FigureSpec, declared


def _conforms(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a field's annotation (ints count as floats; a dataclass is a dict here,
    checked by its own from_dict)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (types.UnionType, typing.Union):
        return any(_conforms(value, h) for h in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is list or hint is list:
        return isinstance(value, list) and (not args or all(_conforms(v, args[0]) for v in value))
    if origin is dict or hint is dict:
        return isinstance(value, dict) and (not args or all(_conforms(v, args[1]) for v in value.values()))
    if is_dataclass(hint):
        return isinstance(value, dict)
    return True


def _checked(cls, data: Any, defaults: dict[str, Any]) -> dict[str, Any]:
    """The known fields of ``data`` for ``cls``, type-checked; a field absent from ``data`` takes its value
    in ``defaults`` (absent there too: it is required). ValueError, phrased to follow "it is not a ...
    (": files on disk may be cut, hand-edited or written by another version."""
    if not isinstance(data, dict):
        raise ValueError("it is not a JSON object")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in fields(cls) if f.name not in ("extras", "figures")]
    missing = sorted(k for k in known if k not in data and k not in defaults)
    if missing:
        raise ValueError(f"it lacks {', '.join(missing)}")
    values = {}
    for name in known:
        value = data[name] if name in data else defaults[name]
        if not _conforms(value, hints[name]):
            hint = hints[name]
            expected = hint.__name__ if isinstance(hint, type) and not typing.get_args(hint) else str(hint)
            raise ValueError(f"its {name} is {type(value).__name__}, not {expected.replace('typing.', '')}")
        values[name] = value
    return values


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
    # --calculator: each forced result (bench.hooks.Intervention.to_dict: position, expression, result, model,
    # model_wrong); empty without the calculator
    interventions: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScoredPath:
        """ValueError if ``data`` is not a scored path (see :func:`_checked`)."""
        return cls(**_checked(cls, data, {"category": "", "interventions": []}))


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
    batches: list[int]  # paths per inference session, in order
    error: str | None
    finished_at: float
    # the paths the method asked for, round by round (Method.next_paths); a fixed-K method: [K]
    rounds: list[int] = field(default_factory=list)
    # its cost (bench.cost): requests sent through a route over its sessions, and those times the servers
    # on each session's route; None in records written before they were counted
    session_steps: int | None = None
    server_steps: int | None = None
    extras: dict[str, Any] = field(default_factory=dict)  # what the method adds (Method.record_extras)

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("paths", "extras")}
        data["paths"] = [asdict(p) for p in self.paths]
        return {**self.extras, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuestionRecord:
        """ValueError if ``data`` is not a question's record (see :func:`_checked`)."""
        values = _checked(cls, data, cls._DEFAULTS)
        values["paths"] = [ScoredPath.from_dict(p) for p in values["paths"]]
        for key in ("failures", "servers", "batches", "rounds"):
            values[key] = values[key] or []
        return cls(**values, extras={k: v for k, v in data.items() if k not in values})

    # what a record may lack (older versions, or an error record written before any path was scored)
    _DEFAULTS: typing.ClassVar[dict[str, Any]] = {
        "paths": [], "vote": None, "correct": False, "tokens": 0, "seconds": 0.0, "attempts": 0,
        "failures": [], "servers": [], "batches": [], "rounds": [], "error": None, "finished_at": 0.0,
        "prompt_tokens": 0, "line": 0, "prompt_id": "", "backend": "", "question": "", "method": "",
        "session_steps": None, "server_steps": None}


def parse_record(data: Any) -> QuestionRecord | None:
    """``data`` (a line of records.jsonl) typed, or None if it is not a whole record the reports can read."""
    try:
        return QuestionRecord.from_dict(data)
    except ValueError:
        return None


def is_record(data: Any) -> bool:
    return parse_record(data) is not None


@dataclass(frozen=True)
class RunSummary:
    """``summary.json``: the run's figures. ``figures`` holds what the method reports (SC: maj@k...)."""

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
    # --calculator runs: interventions, per question, how often the model's own number was wrong
    # (calculator.summarize_interventions); None without the calculator
    calculator: dict[str, Any] | None = None
    # paths, tokens, server-steps, wall time, GPU-hours and money per question (bench.cost.run_cost);
    # None in summaries written before costs were counted
    cost: dict[str, Any] | None = None
    figures: tuple[Figure, ...] = ()

    def figure(self, key: str) -> Any:
        """The value of the figure ``key`` (None when this run does not report it)."""
        return next((f.value for f in self.figures if f.key == key), None)

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "figures"}
        values = {f.key: f.value for f in self.figures}
        return {**values, **data, "figures": [f.spec.to_dict() for f in self.figures]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSummary:
        """ValueError unless ``data`` has every field the reports read, of the right types
        (see :func:`_checked`)."""
        values = _checked(cls, data, cls._DEFAULTS)
        if len(values["accuracy_wilson95"]) != 2:
            raise ValueError("its accuracy_wilson95 is not [low, high]")
        RunIdentity.of(values["config"])  # ValueError unless the reports can read it
        return cls(**values, figures=_figures(data))

    @property
    def identity(self) -> RunIdentity:
        """The run's config as the reports read it, typed (``config`` is config.json as written)."""
        return RunIdentity.of(self.config)

    # what a summary may lack: figures the reports show as n/a or leave out
    _DEFAULTS: typing.ClassVar[dict[str, Any]] = {
        "backend": None, "done": 0, "missing": 0, "error_ids": [], "invalid_path_rate": None,
        "finish_reasons": {}, "extraction": {}, "categories": {}, "prompt_tokens_mean": None,
        "wall_seconds": 0.0, "tokens_this_invocation": 0, "tokens_per_second": None,
        "questions_per_minute": None, "run": {}, "exec": {}, "servers_served": {}, "swarm": [],
        "written_at": 0.0, "errors": 0, "correct": 0, "accuracy": None, "accuracy_wilson95": [0.0, 1.0],
        "tokens": 0, "wall_seconds_total": 0.0, "paths": 1, "calculator": None, "cost": None}


@dataclass(frozen=True)
class ModelId:
    name: str
    dht_prefix: str
    weights_sha256: str | None = None  # a local checkpoint's weights (runs made before the pin: None)


@dataclass(frozen=True)
class PromptId:
    id: str
    exemplars: int


@dataclass(frozen=True)
class DataId:
    source: str
    sha256: str
    offset: int
    limit: int | None
    sample: int | None


@dataclass(frozen=True)
class RunIdentity:
    """The parts of a run's config (config.json) the reports read, typed. The file itself stays the
    run's identity as written (a resume compares it whole); this is how it is read."""

    model: ModelId
    prompt: PromptId
    data: DataId
    method: dict[str, Any]  # methods.MethodConfig.to_dict

    @classmethod
    def of(cls, config: Any) -> RunIdentity:
        """ValueError (phrased as 'its config.PART ...') unless ``config`` has the parts the reports read."""
        if not isinstance(config, dict):
            raise ValueError("its config is not a JSON object")
        parts = {}
        for name, kind in (("model", ModelId), ("prompt", PromptId), ("data", DataId)):
            try:
                parts[name] = kind(**_checked(kind, config.get(name), {"weights_sha256": None}))
            except ValueError as e:
                raise ValueError(f"its config.{name}: {e}") from None
        if not isinstance(config.get("method"), dict):
            raise ValueError("its config.method is not a JSON object")
        return cls(**parts, method=config["method"])


def _figures(data: dict[str, Any]) -> tuple[Figure, ...]:
    """A summary's figures: described by its ``figures`` list, or (a summary written before summaries
    described them) by the registered methods' figures (figures.declared) of the keys it has.
    ValueError for a value that is not of its figure's kind."""
    if "figures" in data:
        stored = data["figures"]
        if not isinstance(stored, list):
            raise ValueError("its figures is not a list")
        specs = [FigureSpec.from_dict(d) for d in stored]
    else:
        specs = [spec for key, spec in declared().items() if key in data]
    figures = []
    for spec in specs:
        value = data.get(spec.key)
        if not spec.fits(value):
            what = "a mapping of k to accuracy" if spec.kind == "curve" else "a number"
            raise ValueError(f"its {spec.key} is not {what}")
        figures.append(Figure(spec, value))
    return tuple(figures)
