"""Exact arithmetic over what a rationale writes: ``expression = number`` links, checked with
:class:`fractions.Fraction` by a small tokenizer and recursive-descent parser (never ``eval``).

One reader for two users: the error analysis (:mod:`petals_ops.bench.analysis` calls a path whose rationale
has a false link an arithmetic slip) and the decoding calculator (:mod:`petals_ops.bench.calculator` forces
the true result after ``<expression> =``). :func:`find_equations` says what counts as an equation and when
one is "not checked"; :func:`evaluate_left` reads the expression before one '='.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction

MAX_EXPR_CHARS = 200
MAX_EXPR_TOKENS = 30

_NUMBER = r"(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
_NUM_TOKEN_RE = re.compile(r"\$?\s*(" + _NUMBER + r")")
_STATED_RE = re.compile(r"[ \t]*([-−–]?)[ \t]*\$?[ \t]*([-−–]?)[ \t]*(" + _NUMBER + r")")
_OPS = {"+": "+", "-": "-", "−": "-", "–": "-", "*": "*", "x": "*", "X": "*", "×": "*",
        "/": "/", "÷": "/"}
_GLUED_FRACTION_RE = re.compile(r"(\d+)/(\d+)(?![\d.,/%])")
# what an expression may be written with (and a standalone 'x', see _is_x_operator)
EXPRESSION_CHARS = frozenset("0123456789.,$ \t+-−–*/×÷()%")


@dataclass(frozen=True)
class Equation:
    """One ``expression = number`` link: ``ok`` is None when it could not be checked (see find_equations)."""

    start: int  # span of the link in the text: text[start:end] == self.text
    end: int
    text: str
    left: str  # the left-hand expression as written
    stated: Fraction  # the number written after '='
    value: Fraction | None  # the exact value of the left side; None when not checked
    ok: bool | None


class _Unchecked(Exception):
    """The left side parses but has no checkable value (division by zero, an ambiguous percent)."""


def _is_x_operator(text: str, i: int) -> bool:
    """An 'x' reads as multiplication only between operands: not inside a word ('box'), and after a number or
    ')' and before a number or '(' ('5 x 3', '5x3'); an algebra unknown ('2x - 3', '3*x') is not one."""
    before = text[i - 1] if i > 0 else " "
    after = text[i + 1] if i + 1 < len(text) else " "
    if before.isalpha() or after.isalpha():
        return False
    left = re.search(r"[^ \t]?[ \t]*$", text[max(0, i - 40):i]).group().strip()
    right = re.match(r"[ \t]*([^ \t]?)", text[i + 1:i + 41]).group(1)
    return left != "" and left in "0123456789)%" and right != "" and right in "0123456789($."


def _scan_left(text: str, eq: int) -> int:
    """Start of the run of expression characters that ends at the '=' at ``eq`` (stops at words and '=')."""
    i = eq
    while i > 0:
        ch = text[i - 1]
        if ch in EXPRESSION_CHARS or (ch in "xX" and _is_x_operator(text, i - 1)):
            i -= 1
        else:
            break
    return i


def _tokenize(text: str, start: int, end: int) -> list[tuple[str, str | Fraction, int, int]]:
    """Tokens (kind, value, start, end) of text[start:end]: num, odd (a leading zero), op, (, ), %, bad."""
    tokens: list[tuple[str, str | Fraction, int, int]] = []
    i = start
    while i < end:
        ch = text[i]
        if ch in " \t":
            i += 1
            continue
        glued = _GLUED_FRACTION_RE.match(text, i, end)
        short_fraction = glued and glued.end() - i <= MAX_EXPR_CHARS  # no int of 4,301+ digits
        if short_fraction and int(glued.group(2)) and tokens and tokens[-1][:2] == ("op", "/") \
                and " " in text[max(0, tokens[-1][2] - 1):tokens[-1][3] + 1]:
            # '2000 / 2/3': a fraction written glued after a spaced '/' is one number, 2000 / (2/3).
            tokens.append(("num", Fraction(int(glued.group(1)), int(glued.group(2))), i, glued.end()))
            i = glued.end()
            continue
        m = _NUM_TOKEN_RE.match(text, i, end)
        if m:
            # '0900' is a time or a code, not a quantity: it makes the expression unparseable; so does a
            # number longer than an expression may be (never converted: Python refuses ints of 4,301+ digits)
            if len(m.group(1)) > MAX_EXPR_CHARS:
                tokens.append(("odd", m.group(1)[:20], i, m.end()))
            else:
                kind = "odd" if re.match(r"0\d", m.group(1)) else "num"
                tokens.append((kind, Fraction(m.group(1).replace(",", "")), i, m.end()))
            i = m.end()
        elif ch in _OPS:
            tokens.append(("op", _OPS[ch], i, i + 1))
            i += 1
        elif ch in "()%":
            tokens.append((ch, ch, i, i + 1))
            i += 1
        else:  # a stray '.', ',' or '$': the expression starts after it
            tokens.append(("bad", ch, i, i + 1))
            i += 1
    return tokens


class _Parser:
    """expr := term (('+'|'-') term)*; term := unary (('*'|'/') unary)*; unary := '-' unary | atom;
    atom := number ['%'] | '(' expr ')'. Nodes: ('num', value, is_percent), ('neg', x), ('bin', op, l, r)."""

    def __init__(self, tokens: list[tuple[str, str | Fraction, int, int]]):
        self.tokens, self.i = tokens, 0

    def _peek(self) -> tuple[str, str | Fraction] | None:
        return self.tokens[self.i][:2] if self.i < len(self.tokens) else None

    def parse(self) -> tuple:
        node = self._expr()
        if self.i != len(self.tokens):
            raise ValueError("trailing tokens")
        return node

    def _expr(self) -> tuple:
        node = self._term()
        while self._peek() in (("op", "+"), ("op", "-")):
            op = self.tokens[self.i][1]
            self.i += 1
            node = ("bin", op, node, self._term())
        return node

    def _term(self) -> tuple:
        node = self._unary()
        while self._peek() in (("op", "*"), ("op", "/")):
            op = self.tokens[self.i][1]
            self.i += 1
            node = ("bin", op, node, self._unary())
        return node

    def _unary(self) -> tuple:
        if self._peek() == ("op", "-"):
            self.i += 1
            return ("neg", self._unary())
        return self._atom()

    def _atom(self) -> tuple:
        tok = self._peek()
        if tok is None:
            raise ValueError("unexpected end")
        if tok[0] == "num":
            self.i += 1
            percent = self._peek() == ("%", "%")
            if percent:
                self.i += 1
            return ("num", tok[1], percent)
        if tok[0] == "(":
            self.i += 1
            node = self._expr()
            if self._peek() != (")", ")"):
                raise ValueError("unbalanced parentheses")
            self.i += 1
            return node
        raise ValueError(f"unexpected {tok[1]!r}")


def _evaluate(node: tuple, in_product: bool = False) -> Fraction:
    """Exact value; a percent is only read as /100 as a factor of '*' ("50 * 20%"), else _Unchecked."""
    kind = node[0]
    if kind == "num":
        if node[2]:
            if not in_product:
                raise _Unchecked("a percent outside a product is ambiguous ('50 + 10%', '10/100%')")
            return node[1] / 100
        return node[1]
    if kind == "neg":
        return -_evaluate(node[1], in_product)
    op, left, right = node[1], node[2], node[3]
    product = op == "*"
    a, b = _evaluate(left, product), _evaluate(right, product)
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if b == 0:
        raise _Unchecked("division by zero")
    return a / b


def _has_binary(node: tuple) -> bool:
    if node[0] == "bin":
        return True
    return node[0] == "neg" and _has_binary(node[1])


def _stated_after(text: str, eq: int) -> tuple[Fraction, int] | None:
    """The plain number right after the '=' at ``eq`` and where it ends; None when the right side is not
    a plain number: a percent, a fraction '20/3', an expression '24 + 3' or '30 + M', a unit glued on '5k',
    a time '6:48' or '0730', a mixed number '2 1/2' or '1 and 1/3', digits grouped by spaces '18 000'."""
    m = _STATED_RE.match(text, eq + 1)
    if not m or re.match(r"0\d", m.group(3)) or len(m.group(3)) > MAX_EXPR_CHARS:  # 4,301+ digits: no int
        return None
    end = m.end()
    rest = text[end:end + 16]
    if rest[:1].isalpha() or rest[:1] == "%" or re.match(r"[.,:]?\d|[ \t]+(?:and[ \t]+)?\(?\d", rest):
        return None
    follow = re.match(r"[ \t]*([+\-−–*/×÷xX])[ \t]*\$?[ \t]*[\w(.]", rest)
    if follow and (follow.group(1) not in "xX" or _is_x_operator(text, end + follow.start(1))):
        return None
    value = Fraction(m.group(3).replace(",", ""))
    if sum((m.group(1) + m.group(2)).count(sign) for sign in "-−–") == 1:
        value = -value
    return value, end


def _matches(stated: Fraction, value: Fraction, written: str) -> bool:
    """Exact equality, or, when the stated number has d > 0 decimals, the true value rounded half away from
    zero or truncated to d decimals ('10 / 3 = 3.33' is fine; '10 / 4 = 2' is a slip)."""
    if stated == value:
        return True
    m = re.search(r"\.(\d+)\s*$", written)
    if not m:
        return False
    scale = 10 ** len(m.group(1))
    magnitude = abs(value) * scale
    sign = -1 if value < 0 else 1
    candidates = (math.floor(magnitude), math.floor(magnitude + Fraction(1, 2)))
    return any(Fraction(sign * c, scale) == stated for c in candidates)


def _unbalanced(tokens: list) -> bool:
    return sum(t[0] == "(" for t in tokens) > sum(t[0] == ")" for t in tokens)


def _left_expression(text: str, eq: int) -> tuple[int, list] | None:
    """(start, tokens) of the expression before the '=' at ``eq``; None without a number and an operator."""
    start = _scan_left(text, eq)
    tokens = _tokenize(text, start, eq)
    bad = [k for k, t in enumerate(tokens) if t[0] == "bad"]
    if bad:
        tokens = tokens[bad[-1] + 1:]
    # A '(' opened before the equation ("(3 + 4 = 7)") is not part of it.
    while tokens and tokens[0][0] == "(" and _unbalanced(tokens):
        tokens = tokens[1:]
    if not any(t[0] == "op" for t in tokens) or not any(t[0] == "num" for t in tokens):
        return None
    return tokens[0][2], tokens


def find_equations(text: str) -> list[Equation]:
    """Every ``expression = number`` link in ``text``, in order, each checked with exact arithmetic.

    For each '=' the left side is the longest run of expression characters before it (digits, spaces,
    ``$ , . % ( ) + - − * / × ÷`` and a standalone ``x``); it stops at a word or at the previous '=', so
    a chain ``5 * 4 = 20 = 20`` or ``a = b + c = d`` gives one link per '=' and only links whose left side
    has an operator count (``20 = 20`` and ``x = 5`` are skipped). Text up to a stray ``.``/``,``/``$`` is
    dropped ("It costs 5. 3 + 4 = 7" checks ``3 + 4``), as is a leading unmatched '('. The right side must
    be a plain number (``$``, thousands commas, decimals, a sign); a link whose right side is a percent, a
    fraction, a mixed number, a time or the start of another expression (``40 / 6 = 20/3``,
    ``6 * 4 = 24 + 3``, ``4 / 3 = 1 and 1/3``) is skipped, and the next link is checked from there.

    Usual precedence and left associativity (``16 - 3 - 4 = 9``, ``3 + 4 * 2 = 11``), except that a fraction
    written glued after a spaced '/' is one number (``2000 / 2/3 = 3000``). ``x`` is multiplication only
    between operands (``2x - 3`` is algebra). ``%`` means /100 only on a factor of ``*`` (``50 * 20% = 10``);
    elsewhere it is ambiguous. A stated number with decimals may be the true value rounded or truncated to
    that many places (``10 / 3 = 3.33``); a whole-number result must be exact (``13 / 6 = 2``, "two full
    boxes", is a slip by this definition). Returned with ``ok`` None (not checked, never a slip): a division
    by zero, an ambiguous percent, a left side that does not parse (garbage, ``2(3 + 4)``, ``14 * 1 1/2``,
    ``12 eggs / 3 + 1`` where an operand is a word, a hyphen ``week-3``, a time ``0900 - 0130`` or
    ``9:45 + 15``, scientific notation ``3.5e3 + 500``: a first operand glued to the text before it), or
    one over MAX_EXPR_CHARS characters or MAX_EXPR_TOKENS tokens.

    On the gold rationales of GSM8K (29k checked links) this flags 25, all false as written there: mistakes
    ("$32 - $20 = $300"), unit changes ("$1 / 2 = 50 cents") and whole-number rounding ("13 / 6 = 2").
    """
    found: list[Equation] = []
    for eq in (m.start() for m in re.finditer("=", text)):
        right = _stated_after(text, eq)
        if right is None:
            continue
        stated, end = right
        left = evaluate_left(text, eq)
        if left is None:
            continue
        start, value = left
        ok = None if value is None else _matches(stated, value, text[eq + 1:end])
        found.append(Equation(start, end, text[start:end], text[start:eq].strip(), stated, value, ok))
    return found


def evaluate_left(text: str, eq: int) -> tuple[int, Fraction | None] | None:
    """The arithmetic expression just before the '=' at ``eq``, read as :func:`find_equations` reads it
    (shared with the decoding calculator, :mod:`petals_ops.bench.calculator`).

    None when there is no expression there: no number and operator ('x = 5'), or a bare number ('-5 =',
    '(5) ='). Else (where it starts, its exact value), the value None when it cannot be checked: a leading
    operator whose left operand is a word, a mixed number, a first operand glued to the text before it
    (a time '9:45 + 15', scientific notation '3.5e3 + 500'), over MAX_EXPR_CHARS/MAX_EXPR_TOKENS, a left
    side that does not parse, a division by zero or an ambiguous percent.
    """
    left = _left_expression(text, eq)
    if left is None:
        return None
    start, tokens = left
    first = tokens[0]
    # A leading operator has a word for its left operand ("12 eggs / 3 + 1 = 5"): not checked. A leading
    # '-' is a sign only when glued to its number and preceded by a space, '(' or '=' ("x = -3 + 5").
    sign = first[0] == "op" and first[1] == "-" and len(tokens) > 1 and tokens[1][2] == first[3] \
        and (first[2] == 0 or text[first[2] - 1] in " \t(=<")
    short = len(tokens) <= MAX_EXPR_TOKENS and eq - start <= MAX_EXPR_CHARS
    mixed = re.search(r"\d[ \t]+and[ \t]*$", text[max(0, start - 40):start])  # '12 x 1 and 1/4 = 15'
    # An operand glued to what precedes the expression is part of something this parser does not read: a
    # time ('9:45 + 15'), scientific notation ('3.5e3 + 500'), a version ('1.2.3 + 4'), a code ('x3 + 4').
    before = text[first[2] - 1] if first[2] > 0 else " "
    glued = first[0] != "op" and not before.isspace() and before not in "(=<>[{"
    if not ((first[0] != "op" or sign) and short and not mixed and not glued):
        return start, None
    try:
        node = _Parser(tokens).parse()
    except ValueError:
        return start, None
    if not _has_binary(node):
        return None  # '-5 = -5' or '(5) = 5': not arithmetic
    try:
        return start, _evaluate(node)
    except _Unchecked:
        return start, None


def first_slip(text: str) -> Equation | None:
    """The first equation that is checked and false, or None."""
    return next((e for e in find_equations(text) if e.ok is False), None)


def format_fraction(value: Fraction) -> str:
    """'20', '2.5', or '10/3 (~3.33333)' when the decimal does not terminate."""
    if value.denominator == 1:
        return str(value.numerator)
    q, twos, fives = value.denominator, 0, 0
    while q % 2 == 0:
        q, twos = q // 2, twos + 1
    while q % 5 == 0:
        q, fives = q // 5, fives + 1
    if q != 1:
        return f"{value.numerator}/{value.denominator} (~{float(value):.6g})"
    places = max(twos, fives)
    digits = str(abs(value.numerator) * 10 ** places // value.denominator).rjust(places + 1, "0")
    return ("-" if value < 0 else "") + digits[:-places] + "." + digits[-places:]

