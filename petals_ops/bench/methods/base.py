"""The method interface, its registry, and a run's method configuration."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

from petals_ops.bench.extraction import DEFAULT_STOPS
from petals_ops.bench.figures import FigureSpec, declare
from petals_ops.bench.hooks import decode_hooks
from petals_ops.bench.stats import plurality
from petals_ops.client.decoding import DecodeSpec, Sampling
from petals_ops.util.errors import InputError

if TYPE_CHECKING:
    from petals_ops.bench.records import QuestionRecord, ScoredPath

METHODS: dict[str, Method] = {}


@dataclass(frozen=True)
class Parameter:
    """A setting of one method (``--param NAME=VALUE``), part of the run's identity."""

    name: str
    type: type  # int, float or str: how the command line's text is read
    default: Any
    help: str = ""

    def parse(self, text: str) -> Any:
        try:
            value = self.type(text)
        except ValueError:
            raise InputError(f"--param {self.name}={text}: {text!r} is not a {self.type.__name__}",
                             fix=f"use --param {self.name}={self.default}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise InputError(f"--param {self.name}={text} is not a finite number",
                             fix=f"use --param {self.name}={self.default}")
        return value


class Method:
    """A method: a sampling policy (how many paths to decode next, given the paths so far) and an
    aggregation (the question's answer from its paths), plus what it adds to records and the figures it
    reports. Subclass and override what differs; the defaults are ``cfg.paths`` paths decoded at once
    (greedy unless ``samples``) and a plurality vote."""

    name = ""
    help = ""
    samples = False
    default_paths = 1
    parameters: tuple[Parameter, ...] = ()  # its own settings (cfg.param(name))
    figures: tuple[FigureSpec, ...] = ()  # what summary_figures computes, described for the reports

    def validate(self, cfg: MethodConfig) -> None:
        """Raise :class:`InputError` for settings this method cannot run with."""

    def samples_for(self, cfg: MethodConfig) -> bool:
        """Whether this config's paths are sampled (default: :attr:`samples`); a method may sample only
        with several paths, say. Sampling settings are part of a run's identity only when it samples."""
        return self.samples

    def parse_params(self, items: Sequence[str]) -> tuple[tuple[str, Any], ...]:
        """``NAME=VALUE`` texts (``--param``) read by :attr:`parameters` (MethodConfig.params)."""
        declared = {p.name: p for p in self.parameters}
        values = {}
        for item in items:
            name, eq, text = item.partition("=")
            if not eq or not name:
                raise InputError(f"--param {item} is not NAME=VALUE", fix="write it like --param window=5")
            if name not in declared:
                raise InputError(f"--param {name} is not a setting of --method {self.name}",
                                 fix=(f"use one of: {', '.join(declared)}" if declared
                                      else f"drop --param (--method {self.name} has no settings)"))
            values[name] = declared[name].parse(text)
        return tuple(sorted(values.items()))

    def next_paths(self, cfg: MethodConfig, paths: Sequence[ScoredPath]) -> int:
        """How many more paths to decode for a question, given its paths so far (scored, in path order);
        0: the question is decided. Asked first with no paths, then after each batch it asked for. The
        runner never decodes more than ``cfg.paths`` in all (an adaptive method's maximum K)."""
        return cfg.paths - len(paths)

    def decode_spec(self, cfg: MethodConfig) -> DecodeSpec:
        """How each path is decoded (sampling, token limit, per-step hooks: stop strings, calculator).
        Override to decode otherwise, e.g. to stop a completion that holds several answers elsewhere."""
        sampling = Sampling(cfg.temperature, cfg.top_k, cfg.seed) if self.samples_for(cfg) \
            else Sampling(seed=cfg.seed)
        return DecodeSpec(sampling=sampling, max_new_tokens=cfg.max_new_tokens,
                          hooks=decode_hooks(cfg.stops, calculator=cfg.calculator))

    def aggregate(self, paths: Sequence[ScoredPath]) -> str | None:
        """The question's answer from its scored paths."""
        return plurality([p.answer for p in paths])

    def record_extras(self, paths: Sequence[ScoredPath], vote: str | None) -> dict[str, Any]:
        """Method-specific fields of a question record."""
        return {}

    def summary_figures(self, records: Sequence[QuestionRecord], cfg: MethodConfig) -> dict[str, Any]:
        """The value of each of :attr:`figures` (by key) over the scored question records."""
        return {}


def register(method: Method) -> Method:
    """Make ``method`` available as ``--method NAME`` (its module calls this once, at import)."""
    from petals_ops.bench.records import RunSummary

    reserved = set(RunSummary.__dataclass_fields__) | {"figures"}
    for spec in method.figures:
        if spec.key in reserved:
            raise ValueError(f"method {method.name}: figure key {spec.key!r} is taken by the summary")
        declare(spec, method.name)
    METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise InputError(f"--method {name} is unknown", fix=f"use one of: {', '.join(METHODS)}") from None


@dataclass(frozen=True)
class MethodConfig:
    """What a run decodes: part of the run's identity (a changed value is a different run)."""

    method: str = "cot"
    paths: int = 1  # paths per question; an adaptive method's maximum
    temperature: float = 0.7
    top_k: int | None = 40
    max_new_tokens: int = 256
    stops: tuple[str, ...] = DEFAULT_STOPS
    seed: int = 0
    calculator: bool = False  # exact results forced after '<expression> =' (petals_ops.bench.calculator)
    params: tuple[tuple[str, Any], ...] = ()  # the method's own settings (Method.parameters), sorted

    @property
    def impl(self) -> Method:
        return get_method(self.method)

    @property
    def sample(self) -> bool:
        return self.impl.samples_for(self)

    def param(self, name: str) -> Any:
        """The value of the method's setting ``name`` (its default when not given)."""
        given = dict(self.params)
        if name in given:
            return given[name]
        return next(p.default for p in self.impl.parameters if p.name == name)

    def validate(self) -> MethodConfig:
        """This config checked, with every setting of the method spelled out (defaults included, so that a
        default changed by a later version does not silently change a resumed run)."""
        method = self.impl
        if self.max_new_tokens < 1:
            raise InputError(f"--max-new-tokens {self.max_new_tokens} must be at least 1",
                             fix="use --max-new-tokens 256")
        if self.paths < 1:
            raise InputError(f"--paths {self.paths} must be at least 1",
                             fix=f"use --paths {method.default_paths}")
        if self.sample:
            if not self.temperature > 0 or self.temperature == float("inf"):  # also refuses nan
                raise InputError(f"--temperature {self.temperature} must be a number > 0 for sampling",
                                 fix="use --temperature 0.7")
            if self.top_k is not None and self.top_k < 1:
                raise InputError(f"--top-k {self.top_k} must be >= 1",
                                 fix="use --top-k 40 (or 0 for no top-k)")
        declared = {p.name: p for p in method.parameters}
        given = dict(self.params)
        unknown = sorted(set(given) - set(declared))
        if unknown:
            raise InputError(f"--param {unknown[0]} is not a setting of --method {self.method}",
                             fix=(f"use one of: {', '.join(declared)}" if declared
                                  else f"drop --param (--method {self.method} has no settings)"))
        for name, value in given.items():
            kind = declared[name].type
            if not (isinstance(value, kind) or (kind is float and isinstance(value, int))) \
                    or isinstance(value, bool):
                raise InputError(f"--param {name}={value} is not a {kind.__name__}",
                                 fix=f"use --param {name}={declared[name].default}")
        cfg = replace(self, params=tuple(sorted({**{n: p.default for n, p in declared.items()},
                                                 **given}.items())))
        method.validate(cfg)
        return cfg

    def decode_spec(self) -> DecodeSpec:
        """How each path is decoded: the method's say (:meth:`Method.decode_spec`)."""
        return self.impl.decode_spec(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MethodConfig:
        """The inverse of :meth:`to_dict` (greedy methods stored no sampling parameters: defaults return)."""
        values = {k: v for k, v in data.items() if v is not None}
        params = tuple(sorted((data.get("params") or {}).items()))
        return cls(**{**values, "stops": tuple(data.get("stops") or ()), "params": params})

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["stops"] = list(self.stops)
        if not self.sample:  # sampling parameters mean nothing for greedy decoding
            data.update(temperature=None, top_k=None)
        if not self.calculator:  # written only when on: run dirs made before the option resume unchanged
            del data["calculator"]
        if self.params:
            data["params"] = dict(self.params)
        else:  # likewise: methods without settings keep the identity they had
            del data["params"]
        return data
