"""The method interface, its registry, and a run's method configuration."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from petals_ops.client.decoding import DecodeSpec, Sampling
from petals_ops.bench.extraction import DEFAULT_STOPS
from petals_ops.bench.hooks import decode_hooks
from petals_ops.bench.stats import plurality
from petals_ops.util.errors import InputError

METHODS: dict[str, Method] = {}


class Method:
    """A method: how many paths, greedy or sampled, how paths vote, and what it adds to records and
    the summary. Subclass and override what differs; the defaults are one greedy path, plurality vote."""

    name = ""
    help = ""
    samples = False
    default_paths = 1

    def validate(self, cfg: MethodConfig) -> None:
        """Raise :class:`InputError` for settings this method cannot run with."""

    def aggregate(self, answers: Sequence[str | None]) -> str | None:
        """The question's answer from its paths' answers."""
        return plurality(answers)

    def record_extras(self, paths: Sequence[Any], vote: str | None) -> dict[str, Any]:
        """Method-specific fields of a question record (``paths`` are :class:`records.ScoredPath`)."""
        return {}

    def summary_extras(self, records: Sequence[Any], cfg: MethodConfig) -> dict[str, Any]:
        """Method-specific fields of the run summary (``records`` are the scored question records)."""
        return {}


def register(method: Method) -> Method:
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
    paths: int = 1
    temperature: float = 0.7
    top_k: int | None = 40
    max_new_tokens: int = 256
    stops: tuple[str, ...] = DEFAULT_STOPS
    seed: int = 0
    calculator: bool = False  # exact results forced after '<expression> =' (petals_ops.bench.calculator)

    @property
    def impl(self) -> Method:
        return get_method(self.method)

    @property
    def sample(self) -> bool:
        return self.impl.samples

    def validate(self) -> MethodConfig:
        method = self.impl
        if self.max_new_tokens < 1:
            raise InputError(f"--max-new-tokens {self.max_new_tokens} must be at least 1",
                             fix="use --max-new-tokens 256")
        if self.paths < 1:
            raise InputError(f"--paths {self.paths} must be at least 1",
                             fix=f"use --paths {method.default_paths}")
        if method.samples:
            if not self.temperature > 0 or self.temperature == float("inf"):  # also refuses nan
                raise InputError(f"--temperature {self.temperature} must be a number > 0 for sampling",
                                 fix="use --temperature 0.7")
            if self.top_k is not None and self.top_k < 1:
                raise InputError(f"--top-k {self.top_k} must be >= 1",
                                 fix="use --top-k 40 (or 0 for no top-k)")
        method.validate(self)
        return self

    def decode_spec(self) -> DecodeSpec:
        sampling = (Sampling(self.temperature, self.top_k, self.seed) if self.sample
                    else Sampling(seed=self.seed))
        return DecodeSpec(sampling=sampling, max_new_tokens=self.max_new_tokens,
                          hooks=decode_hooks(self.stops, calculator=self.calculator))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MethodConfig:
        """The inverse of :meth:`to_dict` (greedy methods stored no sampling parameters: defaults return)."""
        values = {k: v for k, v in data.items() if v is not None}
        return cls(**{**values, "stops": tuple(data.get("stops") or ())})

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["stops"] = list(self.stops)
        if not self.sample:  # sampling parameters mean nothing for greedy decoding
            data.update(temperature=None, top_k=None)
        if not self.calculator:  # written only when on: run dirs made before the option resume unchanged
            del data["calculator"]
        return data
