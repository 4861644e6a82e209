"""Answer extraction from a completion, the gold parser, and numeric comparison.

Rules (see docs/bench.md): the completion is first cut at the first stop string (a run-on into a new
``Q:`` is never scored). Then the *answer sentence* is read: from ``the answer is`` (any case, also ``the
final answer is``; markdown ``**`` around it is ignored) up to the end of that sentence (a period followed
by whitespace or the end of the text, or a newline). If the sentence holds an ``=``, the answer is the
first number after its *last* ``=`` (``The answer is 5 * 4 = 20.`` -> 20; with no number after it, the
sentence's first number); otherwise the sentence's *first* number (``The answer is 18 apples.`` -> 18).
Numbers tolerate ``$``, thousands commas, ``18.00``, negatives and a leading ``:``. The *first* answer
sentence that yields a number wins (how ``answer_is``). If none does (no ``the answer is``, or ``The answer
is ten.``), the *last* number anywhere in the text counts (how ``last_number``); otherwise there is no
answer (how ``none``). Numbers are plain decimals of any length (no exponents) and are compared exactly,
so ``18.00 == 18`` and ``1,000 == 1000``.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

DEFAULT_STOPS = ("\nQ:", "\n\n")

_NUM = r"-?\$?\s*-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\$?\s*-?\.\d+"
NUMBER_RE = re.compile(_NUM)
# the cue of an answer sentence, and where that sentence ends
ANSWER_CUE_RE = re.compile(r"\bthe\s+(?:final\s+)?answer\s+is\b", re.IGNORECASE)
SENTENCE_END_RE = re.compile(r"\.(?=\s|$)|\n")
GOLD_RE = re.compile(r"####\s*(\S+)\s*$")
# a plain decimal once '$', ',' and spaces are removed: no exponent, no inf/nan
_PLAIN_RE = re.compile(r"([-+]?)([0-9]*)(?:\.([0-9]*))?")


def truncate_at_stop(text: str, stops: Sequence[str] = DEFAULT_STOPS) -> tuple[str, str | None]:
    """Cut ``text`` at the earliest stop string; return (text, the stop found or None)."""
    best, found = len(text), None
    for stop in stops:
        i = text.find(stop)
        if i != -1 and i < best:
            best, found = i, stop
    return text[:best], found


def normalize_number(raw: str) -> str | None:
    """'$1,450,000.' -> '1450000'; '18.00' -> '18'; '-3' -> '-3'; '0.50' -> '0.5'; '-0' -> '0'.

    None if ``raw`` is not a plain decimal (exponents, ``inf`` and ``nan`` are not). Exact at any length
    (string arithmetic, no Decimal context): never raises.
    """
    s = raw.replace("$", "").replace(",", "").replace(" ", "").strip().rstrip(".")
    if s.count("-") > 1:
        s = "-" + s.replace("-", "")
    if not s.isascii():  # other scripts' decimal digits (what ``\d`` matches) as ASCII, as Decimal reads them
        s = "".join(str(unicodedata.decimal(c)) if c.isdecimal() else c for c in s)
    m = _PLAIN_RE.fullmatch(s)
    if not m or not (m.group(2) or m.group(3)):
        return None
    sign, whole, frac = m.group(1), m.group(2).lstrip("0") or "0", (m.group(3) or "").rstrip("0")
    value = f"{whole}.{frac}" if frac else whole
    return value if value == "0" or sign != "-" else f"-{value}"


_EXPONENT_AFTER_RE = re.compile(r"[eE][+-]?\d")
_EXPONENT_BEFORE_RE = re.compile(r"\d[eE][+-]?\Z")


def _numbers(text: str) -> list[str]:
    """The plain numbers of ``text``, normalised, in order. A number read only in part is none: the mantissa
    or the exponent of scientific notation ('3.5e3' is not 3.5 nor 3; exponents are not plain decimals)."""
    found = []
    for m in NUMBER_RE.finditer(text):
        before = text[max(0, m.start() - 3):m.start()]
        if _EXPONENT_AFTER_RE.match(text, m.end()) or _EXPONENT_BEFORE_RE.search(before):
            continue
        value = normalize_number(m.group(0))
        if value is not None:
            found.append(value)
    return found


def _first_number(text: str) -> str | None:
    return next(iter(_numbers(text)), None)


def _answer_sentence_value(sentence: str) -> str | None:
    """The number an answer sentence concludes with: after its last '=', else its first number."""
    eq = sentence.rfind("=")
    if eq != -1:
        value = _first_number(sentence[eq + 1:])
        if value is not None:
            return value
    return _first_number(sentence)


def extract_answer(text: str) -> tuple[str | None, str]:
    """(normalised answer or None, how): how is 'answer_is', 'last_number' or 'none'."""
    for cue in ANSWER_CUE_RE.finditer(text):
        end = SENTENCE_END_RE.search(text, cue.end())
        value = _answer_sentence_value(text[cue.end():end.start() if end else len(text)])
        if value is not None:
            return value, "answer_is"
    numbers = _numbers(text)
    if numbers:
        return numbers[-1], "last_number"
    return None, "none"


def parse_gold(answer: str) -> str:
    """The gold of a GSM8K ``answer`` field (the value after ``####`` on its last line), normalised.

    A gold must be a plain decimal (digits, optional sign, thousands commas, decimal point); ValueError
    otherwise, phrased to follow "the answer has ...".
    """
    m = GOLD_RE.search(answer.strip())
    if not m:
        raise ValueError("no '#### N' final line")
    value = normalize_number(m.group(1))
    if value is None:
        raise ValueError(f"a final answer {m.group(1)!r} that is not a plain decimal number "
                         "(digits with an optional sign, thousands commas and decimal point; no exponent)")
    return value


def answers_equal(a: str | None, b: str | None) -> bool:
    """Exact numeric equality of two answers ('18' == '18.00'); False if either is None or not a number."""
    if a is None or b is None:
        return False
    na, nb = normalize_number(a), normalize_number(b)
    return na is not None and na == nb
