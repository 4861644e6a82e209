"""The decoding calculator (``--calculator``): exact arithmetic for an expression a path has just written.

When a path's text ends with an arithmetic expression and ``=`` (optionally one space after it), the
decoding loop (:func:`petals_ops.client.decoding.decode_batch`) asks :func:`find_calculation` for the true
result and forces its tokens as that path's next inputs, in the same inference session, as GSM8K's
authors did with their calculator during sampling. Pure functions, no torch.

What is read is exactly what the error analysis checks (:func:`petals_ops.bench.arithmetic.evaluate_left`,
one recursive-descent parser over :class:`fractions.Fraction`, never ``eval``): numbers with ``$``,
thousands commas, decimals and ``%`` (``%`` only as a factor of ``*``: ``50 * 20% =`` is 10); operators
``+ - * / x × ÷`` with the usual precedence, left associativity and parentheses; the expression runs back
from the ``=`` to a word or a previous ``=`` (``16 - 3 - 4 = 9. 9 * 2 =`` computes ``9 * 2``).

Left to the model (None): no expression or a bare number (``= 5 =``, ``-5 =``), an unparseable left side
(a time ``At 9:45 + 15 =`` or scientific notation ``3.5e3 + 500 =``: only part of it would be read),
a division by zero, an ambiguous percent (``50 + 10% =``), a result that is not a terminating decimal
(``10 / 3 =``: any rounding would be our guess), and anything too long: over :data:`MAX_CHARS` characters,
:data:`MAX_NUMBER_DIGITS` digits in one number, 30 tokens, or a result over :data:`MAX_RESULT_CHARS`.

The result is written the GSM8K way: an integer plainly (``-2``, ``1500``), otherwise its exact decimal
(``2.5``), with a leading ``$`` when the expression used one (``$12 + $3.50 =`` gives ``$15.50``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

from petals_ops.bench.arithmetic import EXPRESSION_CHARS, evaluate_left, format_fraction

MAX_CHARS = 80  # characters of the expression (also what the loop's decoded tail window must hold)
MAX_NUMBER_DIGITS = 15  # digits in any one number of the expression
MAX_RESULT_CHARS = 24  # characters of the formatted result (forced tokens are decoding steps)

_TRAILING_EQUALS_RE = re.compile(r"=( ?)\Z")
_DIGIT_RUN_RE = re.compile(r"\d[\d,]*(?:\.\d+)?")


@dataclass(frozen=True)
class Calculation:
    """An expression at the end of a text and its exact result."""

    expression: str  # as written, without the '='
    value: Fraction
    result: str  # formatted for the text (see format_result)
    spaced: bool  # the text already ends with '= ' (the result goes in without a leading space)

    @property
    def forced_text(self) -> str:
        """What the loop forces after the '=': ``" " + result``, or ``result`` after '= '."""
        return self.result if self.spaced else " " + self.result


def format_result(value: Fraction, dollars: bool = False) -> str | None:
    """``9``, ``-2``, ``2.5``, ``$15.50``; None for a non-terminating decimal or a result over
    MAX_RESULT_CHARS."""
    q = value.denominator
    for p in (2, 5):
        while q % p == 0:
            q //= p
    if q != 1:
        return None
    digits = format_fraction(abs(value))
    if dollars and "." in digits and len(digits.split(".")[1]) == 1:
        digits += "0"  # cents: '$15.50'
    text = ("-" if value < 0 else "") + ("$" if dollars else "") + digits
    return text if len(text) <= MAX_RESULT_CHARS else None


def find_calculation(text: str, *, start_is_cut: bool = False) -> Calculation | None:
    """The calculation ``text`` ends with (``<expression> =`` or ``<expression> = ``), or None.

    ``start_is_cut``: ``text`` is a tail window of a longer text, so an expression reaching its very first
    character may have lost its beginning (``1,234 + 5`` seen as ``234 + 5``): such an expression is too
    long, None.
    """
    m = _TRAILING_EQUALS_RE.search(text)
    if m is None:
        return None
    eq = m.start()
    left = evaluate_left(text, eq)
    if left is None:
        return None
    start, value = left
    if value is None or eq - start > MAX_CHARS or (start_is_cut and _may_continue_before(text[:start])):
        return None
    expression = text[start:eq].strip()
    if any(len(n.replace(",", "").replace(".", "")) > MAX_NUMBER_DIGITS
           for n in _DIGIT_RUN_RE.findall(expression)):
        return None
    result = format_result(value, dollars="$" in expression)
    if result is None:
        return None
    return Calculation(expression=expression, value=value, result=result, spaced=bool(m.group(1)))


def _may_continue_before(head: str) -> bool:
    """Whether the start of a cut window up to the expression could be part of it (no word, no '=')."""
    return all(ch in EXPRESSION_CHARS or ch in "xX" for ch in head)


def calculate(text: str) -> str | None:
    """The result to write after a text ending with ``<expression> =``, or None (see the module docstring).

    >>> calculate("16 - 3 - 4 =")
    '9'
    """
    found = find_calculation(text)
    return found.result if found else None


def summarize_interventions(records) -> dict:
    """The calculator's figures over scored question records (:class:`records.QuestionRecord`): how many
    interventions, per question and per path, and how often the model's own number was wrong."""
    interventions = [i for r in records for p in r.paths for i in p.interventions]
    paths = [p for r in records for p in r.paths]
    known = [i for i in interventions if i.get("model_wrong") is not None]
    wrong = sum(bool(i["model_wrong"]) for i in known)
    return {
        "questions": len(records),
        "interventions": len(interventions),
        "per_question": len(interventions) / len(records) if records else None,
        "paths_with_interventions": sum(bool(p.interventions) for p in paths),
        "model_wrong": wrong,
        "model_wrong_known": len(known),  # the others were cut short by the end of the path
        "model_wrong_rate": wrong / len(known) if known else None,
    }
