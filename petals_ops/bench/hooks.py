"""The bench's per-step hooks for the client's token loop: stop strings and the calculator.

The loop (:func:`petals_ops.client.decoding.decode_batch`) knows nothing of GSM8K; the bench passes these
in (:meth:`petals_ops.bench.methods.MethodConfig.decode_spec`, ``generate --calculator``):

- :class:`StopAtStrings` ends a path at its first stop string (``\\nQ:``, ``\\n\\n``) and cuts its text there;
- :class:`Calculator` queues the tokens of the exact result (:mod:`petals_ops.bench.calculator`) after a
  path's newest token completed ``<expression> =``, and records each :class:`Intervention`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from petals_ops.bench import calculator
from petals_ops.bench.extraction import DEFAULT_STOPS, NUMBER_RE, answers_equal, truncate_at_stop
from petals_ops.client.decoding import STOP

# a stop string (a few characters) that appears with the newest token lies in this tail
STOP_WINDOW_TOKENS = 16
CALC_WINDOW_TOKENS = 64  # the decoded tail the calculator reads: an expression cut by it is left to the model


def decode_hooks(stops: Sequence[str] = DEFAULT_STOPS, *, calculator: bool = False) -> tuple:
    """The hooks of a bench decode, in the order the loop asks them (a stop wins over a calculation)."""
    hooks: list = [StopAtStrings(tuple(stops))] if stops else []
    if calculator:
        hooks.append(Calculator())
    return tuple(hooks)


@dataclass(frozen=True)
class StopAtStrings:
    stops: tuple[str, ...] = DEFAULT_STOPS

    def start(self, tok, batch: int) -> _StopRun:
        return _StopRun(tok, self.stops)


class _StopRun:
    def __init__(self, tok, stops: tuple[str, ...]):
        self.tok, self.stops = tok, stops

    def step(self, row: int, ids: list[int], token: int, forced: bool) -> str | None:
        """Whether the newest token completed a stop string. Only the tail is decoded: decoding the whole
        path at every step made the loop quadratic in its length (see benchmarks/bench_arith.py)."""
        window = max(STOP_WINDOW_TOKENS, max(len(s) for s in self.stops))
        tail = self.tok.decode(ids[-window:], skip_special_tokens=True)
        return STOP if truncate_at_stop(tail, self.stops)[1] is not None else None

    def text(self, row: int, raw: str) -> str:
        return truncate_at_stop(raw, self.stops)[0]

    def notes(self, row: int) -> list:
        return []


@dataclass(frozen=True)
class Intervention:
    """One calculator intervention in a path."""

    position: int  # index among the path's new tokens of the first forced token (the '=' is just before)
    expression: str  # as written, without the '='
    result: str  # the forced result (the forced text is this, after a space unless the text had one)
    model: str  # what the model chose itself at the forced steps, up to its first disagreement (included);
    # when it agreed all along, also its token after the result (so '23' then '4' shows as '234')
    model_wrong: bool | None  # its own number (as far as it went) differs from the result; None: cut short

    def to_dict(self) -> dict:
        return asdict(self)


class Calculator:
    """Force the exact result after ``<expression> =`` (see :mod:`petals_ops.bench.calculator`)."""

    def start(self, tok, batch: int) -> _CalculatorRun:
        return _CalculatorRun(tok, batch)


class _CalculatorRun:
    def __init__(self, tok, batch: int):
        self.tok = tok
        self.forcings: list[list[_Forcing]] = [[] for _ in range(batch)]
        self.writes_equals: dict[int, bool] = {}  # token id -> its text has an '=' (the cheap first check)

    def step(self, row: int, ids: list[int], token: int, forced: bool) -> _Forcing | None:
        if forced:
            return None
        found = self._calculation(ids, token)
        if found is None:
            return None
        forced_ids = self.tok(found.forced_text, add_special_tokens=False)["input_ids"]
        forcing = _Forcing(len(ids), found, forced_ids)
        self.forcings[row].append(forcing)
        return forcing

    def _calculation(self, ids: list[int], token: int) -> calculator.Calculation | None:
        """The calculation the newest token completed (it wrote the '='), read from a tail of the path."""
        if token not in self.writes_equals:
            self.writes_equals[token] = "=" in self.tok.decode([token])
        if not self.writes_equals[token]:
            return None
        text = self.tok.decode(ids[-CALC_WINDOW_TOKENS:], skip_special_tokens=True)
        return calculator.find_calculation(text, start_is_cut=len(ids) > CALC_WINDOW_TOKENS)

    def text(self, row: int, raw: str) -> str:
        return raw

    def notes(self, row: int) -> list[Intervention]:
        return [f.intervention(self.tok) for f in self.forcings[row]]


class _Forcing:
    """A row's forced result in progress: the tokens still to force and what the model chose instead."""

    def __init__(self, position: int, found: calculator.Calculation, ids: list[int]):
        self.position, self.found, self.queue = position, found, list(ids)
        self.own: list[int] = []
        self.known = False  # the model's own number is known: it disagreed, or the step after the result ran

    def take(self, own: int) -> int:
        """The next forced token, noting the model's own choice ``own`` (until it first disagrees)."""
        token = self.queue.pop(0)
        if not self.known:
            self.own.append(own)
            self.known = own != token
        return token

    def after(self, own: int) -> None:
        if not self.known:
            self.own.append(own)
            self.known = True

    def intervention(self, tok) -> Intervention:
        model = tok.decode(self.own, skip_special_tokens=True)
        wrong = None
        if self.known:
            m = NUMBER_RE.match(model.strip())
            wrong = m is None or not answers_equal(m.group(0), self.found.result)
        return Intervention(position=self.position, expression=self.found.expression,
                            result=self.found.result, model=model, model_wrong=wrong)
