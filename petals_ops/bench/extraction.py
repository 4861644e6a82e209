"""Answer extraction from a completion, the gold parser, and numeric comparison.

Rules (see docs/bench.md): the completion is first cut at the first stop string (a run-on into a new
``Q:`` is never scored); then the *first* ``The answer is X`` wins (tolerating ``:``, ``$``, thousands
commas, a trailing period, ``18.00``, negatives); otherwise the *last* number in the text; otherwise no
answer. Answers are compared as exact decimals, so ``18.00 == 18`` and ``1,000 == 1000``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation

DEFAULT_STOPS = ("\nQ:", "\n\n")

_NUM = r"-?\$?\s*-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\$?\s*-?\.\d+"
ANSWER_RE = re.compile(r"[Tt]he answer is\s*:?\s*(" + _NUM + r")")
NUMBER_RE = re.compile(_NUM)
GOLD_RE = re.compile(r"####\s*(\S+)\s*$")


def truncate_at_stop(text: str, stops: Sequence[str] = DEFAULT_STOPS) -> tuple[str, str | None]:
    """Cut ``text`` at the earliest stop string; return (text, the stop found or None)."""
    best, found = len(text), None
    for stop in stops:
        i = text.find(stop)
        if i != -1 and i < best:
            best, found = i, stop
    return text[:best], found


def normalize_number(raw: str) -> str | None:
    """'$1,450,000.' -> '1450000'; '18.00' -> '18'; '-3' -> '-3'; '0.50' -> '0.5'. None if not a number."""
    s = raw.replace("$", "").replace(",", "").replace(" ", "").strip().rstrip(".")
    if s.count("-") > 1:
        s = "-" + s.replace("-", "")
    try:
        value = Decimal(s)
    except InvalidOperation:
        return None
    if not value.is_finite():
        return None
    if value == value.to_integral_value():
        return str(value.quantize(Decimal(1)))
    return format(value.normalize(), "f")


def extract_answer(text: str) -> tuple[str | None, str]:
    """(normalised answer or None, how): how is 'answer_is', 'last_number' or 'none'."""
    m = ANSWER_RE.search(text)
    if m:
        value = normalize_number(m.group(1))
        if value is not None:
            return value, "answer_is"
    numbers = NUMBER_RE.findall(text)
    for raw in reversed(numbers):
        value = normalize_number(raw)
        if value is not None:
            return value, "last_number"
    return None, "none"


def parse_gold(answer: str) -> str:
    """The gold of a GSM8K ``answer`` field (the value after ``####`` on its last line), normalised."""
    m = GOLD_RE.search(answer.strip())
    if not m:
        raise ValueError("no '#### N' final line")
    value = normalize_number(m.group(1))
    if value is None:
        raise ValueError(f"the final answer {m.group(1)!r} is not a number")
    return value


def answers_equal(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return False
    return Decimal(a) == Decimal(b)
