"""Loop detection: is a completion stuck repeating itself? (:func:`repeated_unit` defines a loop.)

A model that loops never reaches its answer sentence; the error analysis (:mod:`petals_ops.bench.analysis`)
blames such a path on the loop before anything else.
"""

from __future__ import annotations

import math
import re
from collections import Counter

_WORD_TOKEN_RE = re.compile(r"\w+|[^\w\s]")
_SENTENCE_SPLIT_RE = re.compile(r"(?<=[.!?])\s+|\n+")
MIN_REPEATS = 4
MIN_LOOP_TOKENS = 20
MIN_NUMERIC_LOOP_TOKENS = 40  # a unit without letters ('2 *', '1 +'): legit products and sums look like loops
MAX_UNIT_TOKENS = 16
MAX_UNIT_CHARS = 8
MIN_LOOP_CHARS = 24


def _loop_phase(tokens: list[str], first: int, size: int, need: int) -> int:
    """Shift a detected loop so that its unit starts a sentence ('Let me check again.', not '. Let me check
    again') when the loop still has ``need`` copies from there; else keep ``first``."""
    end = first + size
    while end < len(tokens) and tokens[end] == tokens[end - size]:
        end += 1
    for start in range(first, min(first + size, end - need * size + 1)):
        if tokens[start][0].isalnum() and (start == 0 or not tokens[start - 1][0].isalnum()):
            return start
    return first


def repeated_unit(text: str) -> str | None:
    """The unit of a repetition loop in ``text`` (as written), or None. A loop is any of:

    1. tokens (words, numbers and single punctuation marks, case-folded): a span of 1..MAX_UNIT_TOKENS tokens
       repeated back to back at least MIN_REPEATS times *and* covering at least MIN_LOOP_TOKENS tokens when
       the span has a word in it (a 5-token "The answer is 5." needs 4 copies, a single word 20), or
       MIN_NUMERIC_LOOP_TOKENS when it has only numbers and symbols ("1 +" needs 20 copies, so a product
       2*2*...*2 of a dozen twos is not a loop); a span of punctuation alone ("=====") never counts;
    2. characters: a unit of 1..MAX_UNIT_CHARS characters that has a letter or is all digits, repeated back to
       back at least 8 times and covering at least MIN_LOOP_CHARS characters ("1111…", "hahaha…");
    3. sentences: one sentence of 3+ tokens occurring at least MIN_REPEATS times (not necessarily in a row)
       and making up at least half the tokens.

    A rationale with two similar equations, or "2 + 2 + 2 + 2 = 8", is none of these.
    """
    matches = list(_WORD_TOKEN_RE.finditer(text))
    tokens = [m.group().lower() for m in matches]
    n = len(tokens)
    for size in range(1, MAX_UNIT_TOKENS + 1):
        need = max(MIN_REPEATS, math.ceil(MIN_LOOP_TOKENS / size))
        need_numeric = max(MIN_REPEATS, math.ceil(MIN_NUMERIC_LOOP_TOKENS / size))
        run = 0
        for i in range(n - size):
            run = run + 1 if tokens[i] == tokens[i + size] else 0
            if run < (need - 1) * size:
                continue
            first = i - run + 1
            unit = tokens[first:first + size]
            if run == (need - 1) * size and any(t[0].isalpha() for t in unit):
                first = _loop_phase(tokens, first, size, need)
            elif not (run == (need_numeric - 1) * size and any(t[0].isdigit() for t in unit)):
                continue
            return text[matches[first].start():matches[first + size - 1].end()]
    for size in range(1, MAX_UNIT_CHARS + 1):
        need = max(8, math.ceil(MIN_LOOP_CHARS / size))
        for m in re.finditer(rf"(.{{{size}}})\1{{{need - 1},}}", text, re.DOTALL):
            if any(ch.isalpha() for ch in m.group(1)) or m.group(1).isdigit():
                return m.group(1)
    sentences = [" ".join(_WORD_TOKEN_RE.findall(s.lower())) for s in _SENTENCE_SPLIT_RE.split(text)]
    counts = Counter(s for s in sentences if len(s.split()) >= 3)
    if counts and n:
        sentence, count = counts.most_common(1)[0]
        if count >= MIN_REPEATS and count * len(sentence.split()) * 2 >= n:
            return sentence
    return None

