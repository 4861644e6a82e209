"""Unit tests of the bench error analysis (categories, equation checking) and the paired comparison."""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction

import pytest

from petals_ops.bench.analysis import CATEGORIES, PRECEDENCE, categorize, summarize_categories
from petals_ops.bench.arithmetic import find_equations, first_slip, format_fraction
from petals_ops.bench.loops import repeated_unit
from petals_ops.bench.extraction import answers_equal, extract_answer
from petals_ops.bench.records import QuestionRecord, ScoredPath
from petals_ops.bench.paired import (
    PairedComparison,
    compare_paired,
    mcnemar_exact,
    newcombe_paired_interval,
    wald_paired_interval,
)


def scored(text: str, gold: str, finish: str = "stop", i: int = 0) -> ScoredPath:
    """A path as the runner scores it."""
    answer, how = extract_answer(text)
    return ScoredPath(i=i, answer=answer, how=how, correct=answers_equal(answer, gold), finish=finish,
                      tokens=len(text.split()), text=text, raw=text)


def record(data: dict) -> QuestionRecord:
    """A question's record (its paths numbered in order, as the runner numbers them)."""
    paths = [dataclasses.asdict(dataclasses.replace(p, i=j)) for j, p in enumerate(data["paths"])]
    return QuestionRecord.from_dict({**data, "paths": paths})


RATIONALE = ("Janet's ducks lay 16 eggs per day. She eats 3 for breakfast and bakes 4 into muffins, so she "
             "uses 3 + 4 = 7 eggs. She has 16 - 7 = 9 eggs left. She sells them for $2 each, so she makes "
             "9 * 2 = $18. The answer is 18.")
TWIN_EQUATIONS = ("Each box holds 6 pens, so 4 boxes hold 4 * 6 = 24 pens. Each bag holds 6 pens, so 4 bags "
                  "hold 4 * 6 = 24 pens. Together 24 + 24 = 48 pens. The answer is 48.")
ANSWER_LOOP = "The answer is 5. The answer is 5. The answer is 5. The answer is 5. The answer is 5."


# --- categories -----------------------------------------------------------------------------------

def test_categories_and_precedence_are_consistent():
    assert next(iter(CATEGORIES)) == "correct"
    assert set(CATEGORIES) == {"correct", *PRECEDENCE}
    assert PRECEDENCE == ("repetition", "out_of_tokens", "no_answer", "arithmetic_slip", "wrong_answer")
    assert all(isinstance(d, str) and d for d in CATEGORIES.values())


@pytest.mark.parametrize("text, gold, finish, expected", [
    (RATIONALE, "18", "stop", "correct"),
    ("I am not sure how to solve this problem.", "18", "stop", "no_answer"),
    ("She has 5 apples and buys 3 more, so she has 5 + 3 = 8 apples. Then she gives away half of",
     "6", "length", "out_of_tokens"),
    (ANSWER_LOOP, "6", "length", "repetition"),
    ("Each egg costs 3 dollars. The answer is " + "1" * 60, "6", "length", "repetition"),
    ("He buys 12 * 3 = 35 eggs. The answer is 35.", "36", "stop", "arithmetic_slip"),
    ("He buys 12 + 3 = 15 eggs. The answer is 15.", "36", "stop", "wrong_answer"),
    # an answer sentence was given before the limit: not out_of_tokens
    ("He buys 12 + 3 = 15 eggs. The answer is 15. Next, let us check the", "36", "length", "wrong_answer"),
    # a correct answer wins over a slip in the rationale
    ("He buys 4 * 5 = 21 eggs, no, 20 eggs. The answer is 20.", "20", "stop", "correct"),
    # 'correct' is re-scored against the gold: 18.00 == 18
    ("So she makes $18.00. The answer is $18.00.", "18", "stop", "correct"),
])
def test_categorize(text, gold, finish, expected):
    assert categorize(scored(text, gold, finish), gold) == expected


def test_precedence_repetition_before_slip_and_no_answer():
    looping_slip = "So 2 * 3 = 7. " + "and then " * 12
    assert categorize(scored(looping_slip, "6", "length"), "6") == "repetition"
    # out of tokens before an answer sentence beats a slip in the rationale
    assert categorize(scored("First, 2 * 3 = 7 and then we add", "6", "length"), "6") == "out_of_tokens"


# --- repetition -----------------------------------------------------------------------------------

@pytest.mark.parametrize("text", [
    RATIONALE,
    TWIN_EQUATIONS,
    "He walks 2 + 2 + 2 + 2 = 8 miles. The answer is 8.",
    "It doubles 12 times: 2*2*2*2*2*2*2*2*2*2*2*2=4096. The answer is 4096.",
    "It doubles 12 times: 2 * 2 * 2 * 2 * 2 * 2 * 2 * 2 * 2 * 2 * 2 * 2 = 4096. The answer is 4096.",
    "The answer is 5.",
    "The answer is 5. The answer is 5.",  # said twice is not a loop
    "He earns $1,000,000 a year. The answer is 1000000.",
    "=" * 40 + " The answer is 3.",  # a separator is not a loop of the model's content
    "",
])
def test_not_repetition(text):
    assert repeated_unit(text) is None


@pytest.mark.parametrize("text, unit", [
    (ANSWER_LOOP, "The answer is 5."),
    ("The answer is " + "1" * 40, "1"),
    ("So the total is " + "1 " * 45, "1"),
    ("We need " + "more and " * 12, "more and"),
    ("Let me check. " + "Let me check again. " * 4 + "OK.", "Let me check again."),
])
def test_repetition(text, unit):
    assert repeated_unit(text) == unit


def test_repetition_of_a_sentence_that_is_not_consecutive():
    text = "The answer is 7. Wait. The answer is 7. Hmm. The answer is 7. So. The answer is 7."
    assert repeated_unit(text) == "the answer is 7 ."


# --- equations ------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, value", [
    ("$1,200 + $300.50 = $1,500.50", Fraction(3001, 2)),
    ("It costs 2.5 * 4 = 10.0 dollars", Fraction(10)),
    ("16 - 3 - 4 = 9", Fraction(9)),  # left associative
    ("3 + 4 * 2 = 11", Fraction(11)),  # precedence
    ("(3 + 4) * 2 = 14", Fraction(14)),
    ("10 / 4 = 2.5", Fraction(5, 2)),
    ("5 x 3 = 15", Fraction(15)),
    ("5 × 3 = 15", Fraction(15)),
    ("5*3=15", Fraction(15)),
    ("<<48/2=24>>", Fraction(24)),
    ("5 - 8 = -3", Fraction(-3)),
    ("-3 + 5 = 2", Fraction(2)),
    ("50 * 20% = 10", Fraction(10)),  # a percent factor of a product is /100
    ("10 / 3 = 3.33", Fraction(10, 3)),  # rounded to the stated places
    ("2 / 3 = 0.67", Fraction(2, 3)),
    ("2 / 3 = 0.66", Fraction(2, 3)),  # truncated
    ("It costs 5. 3 + 4 = 7", Fraction(7)),
    ("(3 + 4 = 7)", Fraction(7)),
    ("$2000 / 2/3 = $3000", Fraction(3000)),  # a glued fraction after a spaced '/' is one number
    ("48/2/3 = 8", Fraction(8)),  # all glued: left associative
    ("It fell <<-14+-8+1=-21>>-21 degrees", Fraction(-21)),
    ("The price is $2,430 – $2,100 = $330", Fraction(330)),  # an en dash as minus
])
def test_true_equations(text, value):
    equations = find_equations(text)
    assert len(equations) == 1
    eq = equations[0]
    assert eq.ok is True and eq.value == value
    assert text[eq.start:eq.end] == eq.text
    assert first_slip(text) is None


@pytest.mark.parametrize("text, left, stated, value", [
    ("16 - 3 - 4 = 8", "16 - 3 - 4", 8, 9),
    ("12 * 3 = 35", "12 * 3", 35, 36),
    ("He pays $1,200 - $300 = $800 in total.", "$1,200 - $300", 800, 900),
    ("10 / 4 = 2", "10 / 4", 2, Fraction(5, 2)),  # an integer result must be exact
    ("5 × 3 = 18", "5 × 3", 18, 15),
    ("He can fill 13 / 6 = 2 boxes", "13 / 6", 2, Fraction(13, 6)),  # a whole number must be exact
])
def test_slips(text, left, stated, value):
    slip = first_slip(text)
    assert slip is not None and slip.ok is False
    assert (slip.left, slip.stated, slip.value) == (left, stated, value)


@pytest.mark.parametrize("text", [
    "10 / 0 = 5",  # division by zero
    "10 / (5 - 5) = 3",
    "3 + * 4 = 7",  # garbage
    "2(3 + 4) = 14",  # juxtaposition
    "12 eggs / 3 + 1 = 5",  # an operand is a word
    "week-3 + 4 = 7",  # a hyphen, not a minus
    "50 + 10% = 55",  # ambiguous percent
    "10/100% * 5 = 0.5",  # a percent divisor is ambiguous too
    "12 x 1 and 1/4 = 15",  # the mixed number 1 and 1/4 is cut by the word 'and'
    "2x-3 = 17",  # algebra: 'x' is an unknown, the '-' has no left operand
    "14 * 1 1/2 = 21",  # a mixed number on the left does not parse
    "3.5e3 + 500 = 4000",  # issue 23.4: scientific notation, read only in part, is not a slip
    "2.5e2 * 4 = 1000",
    "At 9:45 + 15 = 10",  # a time
    "1.2.3 + 4 = 5",  # a version
    " + ".join(["1"] * 40) + " = 39",  # over 30 tokens
    " + ".join(["1000000000000000000000000000000"] * 8) + " = 1",  # over 200 characters
])
def test_not_checked_is_never_a_slip(text):
    equations = find_equations(text)
    assert len(equations) == 1
    assert equations[0].ok is None and equations[0].value is None
    assert first_slip(text) is None


@pytest.mark.parametrize("text", [
    "x = 5",
    "20 = 20",
    "-5 = -5",
    "1/5 * 100 = 20%",  # a percent on the right is a conversion, not checked
    "40 / 6 = 20/3",  # a fraction on the right
    "6 * 4 = 24 + 3",  # an expression on the right
    "3 + 4 = 7k",  # a unit glued on
    "5 + 5 == 11",
    "__import__('os').system('true') = 0",
    "no numbers here = nothing",
    "4 / 3 = 1 and 1/3",  # mixed numbers on the right
    "600 x 30 = 18 000",  # digits grouped by a space
    "0900-0130 = 0730",  # times
    "6:00+48=6:48",
    "3*30 = 30 + M",  # an expression with an unknown on the right
    "3*x = 30",
])
def test_not_equations(text):
    assert find_equations(text) == []


def test_chains():
    # 'expr = number = number': one link; the '20 = 20' link has no operator
    assert [(e.left, e.ok) for e in find_equations("5 * 4 = 20 = 20")] == [("5 * 4", True)]
    assert [(e.left, e.ok) for e in find_equations("Total = 3 + 4 = 7")] == [("3 + 4", True)]
    # 'a = b + c = d': the first link's right side is an expression, the second is checked
    assert [(e.left, e.ok) for e in find_equations("6 * 4 = 24 + 3 = 27")] == [("24 + 3", True)]
    assert [(e.left, e.ok) for e in find_equations("40 / 6 = 20/3 = 6.67")] == [("20/3", True)]
    assert [(e.left, e.ok) for e in find_equations("5 * 4 = 20 * 2 = 41")] == [("20 * 2", False)]
    assert [e.left for e in find_equations("3 + 4 = 7, 7 * 2 = 14")] == ["3 + 4", "7 * 2"]


def test_equations_of_a_rationale():
    assert [(e.text, e.ok) for e in find_equations(RATIONALE)] == [
        ("3 + 4 = 7", True), ("16 - 7 = 9", True), ("9 * 2 = $18", True)]


def test_format_fraction():
    assert format_fraction(Fraction(20)) == "20"
    assert format_fraction(Fraction(5, 2)) == "2.5"
    assert format_fraction(Fraction(-1, 40)) == "-0.025"
    assert format_fraction(Fraction(10, 3)) == "10/3 (~3.33333)"


# --- summary --------------------------------------------------------------------------------------

def test_summarize_categories():
    records = [
        {"id": "q1", "question": "?", "gold": "36", "error": None, "paths": [
            scored("He buys 12 * 3 = 36 eggs. The answer is 36.", "36"),
            scored("He buys 12 * 3 = 35 eggs. The answer is 35.", "36"),
            scored("He buys 12 + 3 = 15 eggs. The answer is 15.", "36"),
        ]},
        {"id": "q2", "question": "?", "gold": "5", "error": "TimeoutError: swarm", "paths": [
            scored("The answer is 4.", "5"),
        ]},
        {"id": "q3", "question": "?", "gold": "20", "error": None, "paths": [
            scored("So 4 * 5 = 21, I mean 20. The answer is 20.", "20"),
            scored(ANSWER_LOOP, "20", "length"),
            scored("I do not know.", "20"),
            scored("First 2 * 10 is", "20", "length"),
            scored("He buys 10 * 3 = 31 eggs. The answer is 31.", "20"),
        ]},
    ]
    summary = summarize_categories([record(r) for r in records], examples=1)
    assert summary["questions"] == 2 and summary["skipped_errors"] == 1 and summary["paths"] == 8
    assert summary["counts"] == {"correct": 2, "repetition": 1, "out_of_tokens": 1, "no_answer": 1,
                                 "arithmetic_slip": 2, "wrong_answer": 1}
    assert list(summary["counts"]) == list(CATEGORIES)
    assert summary["correct_with_slip"] == 1
    slip = summary["examples"]["arithmetic_slip"]
    assert slip == [{"id": "q1", "path": 1, "answer": "35", "gold": "36",
                     "excerpt": "He buys 12 * 3 = 35 eggs. The answer is 35.", "equation": "12 * 3 = 35",
                     "true_value": "36"}]
    assert summary["examples"]["correct"][0]["id"] == "q1"  # record order
    assert summary["examples"]["repetition"][0]["unit"] == "The answer is 5."
    assert all(len(v) <= 1 for v in summary["examples"].values())
    long = " ".join(chr(97 + i % 26) * (1 + i // 26) for i in range(80))  # a b ... z aa bb ..., no loop
    one = record({"id": "x", "gold": "1", "error": None, "paths": [scored(long, "1")]})
    excerpt = summarize_categories([one])["examples"]["no_answer"][0]["excerpt"]
    assert len(excerpt) <= 161 and excerpt.endswith("…")
    only_errors = summarize_categories([record({"id": "e", "gold": "1", "error": "x", "paths": []})])
    assert summarize_categories([]) == only_errors | {"skipped_errors": 0}


def test_summary_uses_the_path_index_of_the_runner():
    path = scored("The answer is 3.", "3", i=7)
    summary = summarize_categories([QuestionRecord.from_dict(
        {"id": "q", "gold": "3", "error": None, "paths": [dataclasses.asdict(path)]})])
    assert summary["examples"]["correct"][0]["path"] == 7


# --- McNemar --------------------------------------------------------------------------------------

@pytest.mark.parametrize("b, c, expected", [
    (0, 0, 1.0),  # no discordant pairs
    (1, 0, 1.0),  # 2 * P[X <= 0 | n=1] = 2 * 1/2 = 1
    (5, 0, 0.0625),  # 2 * (1/32)
    (10, 2, 0.03857421875),  # 2 * (C(12,0) + C(12,1) + C(12,2)) / 2^12 = 2 * (1 + 12 + 66) / 4096 = 158/4096
    (3, 3, 1.0),  # 2 * P[X <= 3 | n=6] = 2 * 42/64 > 1
    # 2 * sum_{k<=8} C(38,k) / 2^38 = 2 * 64869364 / 274877906944
    (30, 8, 2 * 64869364 / 274877906944),
])
def test_mcnemar_exact_by_hand(b, c, expected):
    assert mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-12)
    assert mcnemar_exact(c, b) == mcnemar_exact(b, c)


def test_mcnemar_exact_large():
    b, c = 1500, 1400
    n = b + c
    exact = Fraction(2 * sum(math.comb(n, k) for k in range(c + 1)), 2 ** n)
    assert mcnemar_exact(b, c) == pytest.approx(float(exact), rel=1e-12)
    assert 0.05 < mcnemar_exact(b, c) < 0.08
    assert 0 <= mcnemar_exact(5000, 1000) < 1e-300  # tiny (underflows) but no overflow
    assert mcnemar_exact(3000, 3000) == 1.0
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 2)


# --- Newcombe method 10 ---------------------------------------------------------------------------

def _wilson(x: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Written out independently: (2x + z^2 -+ z sqrt(z^2 + 4x(1 - x/n))) / (2(n + z^2))."""
    root = z * math.sqrt(z * z + 4 * x * (1 - x / n))
    return (2 * x + z * z - root) / (2 * (n + z * z)), (2 * x + z * z + root) / (2 * (n + z * z))


def test_newcombe_by_hand():
    # The paired table of the worked example of Altman et al. (2000), Table 6.2 (the expected numbers below
    # are computed by hand here, not quoted), in our convention: a=14 both right, b=5 only B right,
    # c=0 only A right, d=22 both wrong; n=41, p_B = 19/41 = 0.46341, p_A = 14/41 = 0.34146, diff = 0.12195.
    a, b, c, d, n = 14, 5, 0, 22, 41
    p_b, p_a = 19 / 41, 14 / 41
    l_b, u_b = _wilson(19, 41)  # 0.32056, 0.61254
    l_a, u_a = _wilson(14, 41)  # 0.21559, 0.49450
    # ad - bc = 308 > n/2, so phi = (308 - 20.5) / sqrt(19 * 22 * 14 * 27) = 287.5 / 397.497 = 0.72328
    phi = (a * d - b * c - n / 2) / math.sqrt((a + b) * (c + d) * (a + c) * (b + d))
    assert phi == pytest.approx(0.72328, abs=1e-5)
    # delta^2 = 0.142852^2 - 2 phi 0.142852 * 0.153038 + 0.153038^2 = 0.012204 -> low = 0.12195 - 0.11047
    delta = math.sqrt((p_b - l_b) ** 2 - 2 * phi * (p_b - l_b) * (u_a - p_a) + (u_a - p_a) ** 2)
    # eps^2 = 0.149120^2 - 2 phi 0.149120 * 0.125875 + 0.125875^2 = 0.010930 -> high = 0.12195 + 0.10455
    eps = math.sqrt((u_b - p_b) ** 2 - 2 * phi * (u_b - p_b) * (p_a - l_a) + (p_a - l_a) ** 2)
    low, high = newcombe_paired_interval(a, b, c, d)
    assert (low, high) == pytest.approx((p_b - p_a - delta, p_b - p_a + eps), abs=1e-12)
    assert (low, high) == pytest.approx((0.01148, 0.22650), abs=1e-5)
    # the plain phi (no n/2 reduction): 308 / 397.497 = 0.77485
    plain = newcombe_paired_interval(a, b, c, d, continuity_phi=False)
    phi0 = 308 / math.sqrt(19 * 22 * 14 * 27)
    delta0 = math.sqrt((p_b - l_b) ** 2 - 2 * phi0 * (p_b - l_b) * (u_a - p_a) + (u_a - p_a) ** 2)
    assert plain[0] == pytest.approx(p_b - p_a - delta0, abs=1e-12)


def test_newcombe_negative_correlation_and_small_positive():
    # a=36, b=12, c=2, d=0: ad - bc = -24 < 0 is used as is: phi = -24 / sqrt(48 * 2 * 38 * 12) = -0.114708
    p_b, p_a = 48 / 50, 38 / 50
    l_b, u_b = _wilson(48, 50)
    l_a, u_a = _wilson(38, 50)
    phi = -24 / math.sqrt(48 * 2 * 38 * 12)
    low = 0.2 - math.sqrt((p_b - l_b) ** 2 - 2 * phi * (p_b - l_b) * (u_a - p_a) + (u_a - p_a) ** 2)
    high = 0.2 + math.sqrt((u_b - p_b) ** 2 - 2 * phi * (u_b - p_b) * (p_a - l_a) + (p_a - l_a) ** 2)
    assert newcombe_paired_interval(36, 12, 2, 0) == pytest.approx((low, high), abs=1e-12)
    # 0 <= ad - bc <= n/2 -> phi = 0: plain square-and-add of the two Wilson intervals
    # a=5, b=5, c=5, d=6: ad - bc = 5 <= 10.5
    p_b = p_a = 10 / 21
    lo, hi = _wilson(10, 21)
    expected = (-math.hypot(p_b - lo, hi - p_a), math.hypot(hi - p_b, p_a - lo))
    assert newcombe_paired_interval(5, 5, 5, 6) == pytest.approx(expected, abs=1e-12)


TABLES = [(14, 5, 0, 22), (36, 12, 2, 0), (60, 15, 5, 20), (300, 40, 25, 135), (5, 5, 5, 6), (0, 3, 1, 0),
          (1, 0, 0, 0), (0, 0, 0, 1), (0, 1, 0, 0), (0, 0, 1, 0), (10, 0, 0, 10), (7, 0, 0, 0), (0, 0, 0, 9),
          (0, 4, 0, 0), (0, 0, 4, 0), (2, 3, 0, 0)]


@pytest.mark.parametrize("table", TABLES)
def test_newcombe_properties(table):
    a, b, c, d = table
    n = a + b + c + d
    diff = (b - c) / n
    low, high = newcombe_paired_interval(a, b, c, d)
    assert -1.0 <= low <= diff + 1e-12 and diff - 1e-12 <= high <= 1.0
    swapped = newcombe_paired_interval(a, c, b, d)  # A and B exchanged: the interval is negated
    assert swapped == pytest.approx((-high, -low), abs=1e-12)
    w_low, w_high = wald_paired_interval(a, b, c, d)
    assert -1.0 <= w_low <= diff + 1e-12 and diff - 1e-12 <= w_high <= 1.0
    assert wald_paired_interval(a, c, b, d) == pytest.approx((-w_high, -w_low), abs=1e-12)


@pytest.mark.parametrize("table", [(60, 15, 5, 20), (300, 40, 25, 135), (14, 5, 0, 22)])
def test_newcombe_comparable_to_wald_in_ordinary_cases(table):
    low, high = newcombe_paired_interval(*table)
    w_low, w_high = wald_paired_interval(*table)
    assert 0.7 < (high - low) / (w_high - w_low) < 1.3


def test_interval_degenerate_cases():
    assert newcombe_paired_interval(0, 0, 0, 0) == (-1.0, 1.0)
    assert wald_paired_interval(0, 0, 0, 0) == (-1.0, 1.0)
    low, high = newcombe_paired_interval(10, 0, 0, 10)  # b + c == 0: still a real interval around 0
    assert low < 0 < high
    assert wald_paired_interval(10, 0, 0, 10) == (0.0, 0.0)  # why Wald is only a reference
    with pytest.raises(ValueError):
        newcombe_paired_interval(-1, 0, 0, 0)


# --- compare_paired -------------------------------------------------------------------------------

def test_compare_paired():
    a = {"q1": True, "q2": True, "q3": False, "q4": False, "q5": True, "q6": False}
    b = {"q1": True, "q2": False, "q3": True, "q4": True, "q5": True, "q6": False}
    result = compare_paired(a, b)
    assert isinstance(result, PairedComparison)
    assert (result.n, result.both_right, result.a_only, result.b_only, result.both_wrong) == (6, 2, 1, 2, 1)
    assert result.acc_a == pytest.approx(3 / 6) and result.acc_b == pytest.approx(4 / 6)
    assert result.diff == pytest.approx(1 / 6)
    assert result.mcnemar_p == 1.0  # 2 * P[X <= 1 | n=3] = 2 * 4/8
    assert result.diff_ci95 == pytest.approx(newcombe_paired_interval(2, 2, 1, 1))
    assert not result.significant()
    d = result.to_dict()
    assert d["diff_ci95"] == list(result.diff_ci95) and d["a_only"] == 1 and d["b_only"] == 2
    reverse = compare_paired(b, a)
    assert reverse.diff == pytest.approx(-result.diff)
    assert reverse.diff_ci95 == pytest.approx((-result.diff_ci95[1], -result.diff_ci95[0]))


def test_compare_paired_significant():
    a = {f"q{i}": i < 10 for i in range(40)}
    b = {f"q{i}": i < 30 for i in range(40)}  # b = 20 only-B-right, c = 0
    result = compare_paired(a, b)
    assert result.mcnemar_p == pytest.approx(2 / 2 ** 20)
    assert result.significant() and result.significant(alpha=1e-5)
    assert result.diff_ci95[0] > 0


def test_compare_paired_refuses_different_ids():
    with pytest.raises(ValueError, match=r"2 ids differ: 1 only in A \(q3\); 1 only in B \(q9\)"):
        compare_paired({"q1": True, "q2": False, "q3": True}, {"q1": True, "q2": True, "q9": False})
    with pytest.raises(ValueError, match=r"5 ids differ: 5 only in B \(q1, q2, q3, \.\.\.\)"):
        compare_paired({}, {f"q{i}": True for i in range(1, 6)})
    with pytest.raises(ValueError, match="no questions"):
        compare_paired({}, {})


HUGE = "9" * 5000  # past Python's int-conversion limit (4,300 digits)


@pytest.mark.parametrize("text", [
    f"{HUGE} + 1 = 5. The answer is 5.", f"1 + 1 = {HUGE}. The answer is 2.", f"{HUGE}/{HUGE} = 1",
    f"2 * {HUGE} = 3", f"2000 / {HUGE}/3 = 1", f"The answer is {HUGE}.", f"So 3 + 4 = 7. {HUGE} x 2 = 5",
])
def test_numbers_past_pythons_int_limit_are_scored_not_errors(text):
    """Issue 23.9: such a number made the scorer raise, so the question became a permanent error record."""
    from petals_ops.bench.runner import score_path
    from petals_ops.client.decoding import PathOutput

    equations = find_equations(text)
    assert all(e.ok is not False for e in equations) and first_slip(text) is None
    scored = score_path(PathOutput(index=0, raw=text, text=text, tokens=9, finish="stop"), gold="5")
    assert scored.category in CATEGORIES
    assert answers_equal(HUGE, HUGE + ".00") and not answers_equal(HUGE, HUGE + "1")
    assert [e.text for e in find_equations("So 3 + 4 = 7. " + text)][:1] == ["3 + 4 = 7"]
