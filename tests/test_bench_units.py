"""Bench machinery without a swarm: extraction, gold parser, statistics, data, prompts, store, CLI errors."""

from __future__ import annotations

import itertools
import json
import math
import random
import re
from collections import Counter
from fractions import Fraction
from pathlib import Path

import pytest

from petals_ops.bench import data, prompts, stats, store
from petals_ops.bench.extraction import (
    answers_equal,
    extract_answer,
    normalize_number,
    parse_gold,
    truncate_at_stop,
)
from petals_ops.client.decoding import max_batch_for_cache, plan_batches
from petals_ops.bench.methods import MethodConfig
from petals_ops.util.errors import InputError, OpsError
from petals_ops.swarm.health import ServerRecord
from tests.helpers import assert_one_line_error


@pytest.mark.parametrize("completion, expected, how", [
    (" There are 3 + 6 = 9. The answer is 9.", "9", "answer_is"),
    (" So 1,450,000 in total. The answer is 1,450,000.", "1450000", "answer_is"),
    (" She pays 18 dollars. The answer is $18.", "18", "answer_is"),
    (" The answer is $ 18.", "18", "answer_is"),
    (" The answer is 29.00.", "29", "answer_is"),
    (" The answer is 18.0", "18", "answer_is"),
    (" The answer is 14.625.", "14.625", "answer_is"),
    (" The answer is 0.50.", "0.5", "answer_is"),
    (" 4 - 7 = -3. The answer is -3.", "-3", "answer_is"),
    (" The answer is -$10.", "-10", "answer_is"),
    (" The answer is 540 meters.", "540", "answer_is"),
    (" The answer is: 18.", "18", "answer_is"),
    (" The answer is 18", "18", "answer_is"),
    (" First 5 then 7. The answer is 12. Later the answer is 13.", "12", "answer_is"),
    (" He has 3 + 5 = 8 apples left.", "8", "last_number"),
    (" He owes 2,125 dollars", "2125", "last_number"),
    (" The answer is eight.", None, "none"),
    # issue 23.4's class: scientific notation is not read in part (3.5e3 is neither 3.5 nor 3)
    (" 3.5e3 + 500 = 4000. The answer is 3.5e3.", "4000", "last_number"),
    (" The answer is 2.5E-2 or 7.", "7", "answer_is"),
    (" It is 1e3.", None, "none"),
    (" I do not know.", None, "none"),
    ("", None, "none"),
])
def test_extraction_edge_cases(completion, expected, how):
    assert extract_answer(completion) == (expected, how)


LOOPING = "1" * 40  # more digits than Decimal's default context holds (28)


@pytest.mark.parametrize("completion, expected, how", [
    # real completion styles: the answer sentence runs from "the answer is" to its end (". " / "." at the
    # end / a newline); its last "=" decides if it has one, else its first number
    (" So the answer is 18.", "18", "answer_is"),
    (" The answer is: 18", "18", "answer_is"),
    (" the answer is $18.00.", "18", "answer_is"),
    (" The answer is **18**.", "18", "answer_is"),
    (" **The answer is 18**", "18", "answer_is"),
    (" The answer is 1,000 dollars.", "1000", "answer_is"),
    (" The answer is 18 apples.", "18", "answer_is"),
    (" The answer is -3.", "-3", "answer_is"),
    (" The answer is 5 * 4 = 20.", "20", "answer_is"),
    (" The answer is 12 + 8 = $20.", "20", "answer_is"),
    (" The answer is 3 + 4 = 7 apples.", "7", "answer_is"),
    (" The answer is 4 - 7 = -3.", "-3", "answer_is"),
    (" The answer is 2 * 3 = 6 = 6.00.", "6", "answer_is"),
    (" The answer is 5 * 4 = twenty.", "5", "answer_is"),  # nothing after the last '=': the first number
    (" The answer is 5 * 4 = 20\nso 21", "20", "answer_is"),  # a newline ends the sentence
    (" The answer is 5 * 4.\nThen 4 = 9.", "5", "answer_is"),  # a later sentence's '=' does not count
    (" The final answer is 42.", "42", "answer_is"),
    (" THE ANSWER IS 42.", "42", "answer_is"),
    (" The answer is 0.5.", "0.5", "answer_is"),
    (" The answer is 18. Q: next 7", "18", "answer_is"),
    (" The answer is ten. Then the answer is 11.", "11", "answer_is"),  # first sentence with a number
    (" 2 + 2 = 4 and 4 + 3 = 7 apples", "7", "last_number"),  # no 'answer is': the last number, as before
    (" The answer is ten.", None, "none"),  # no number in the sentence nor anywhere: none
    (" He had 3 pens. The answer is ten.", "3", "last_number"),  # ... else the last number of the text
    (f" The answer is {LOOPING}.", LOOPING, "answer_is"),  # huge numbers are exact and never raise
    (f" The answer is {LOOPING}.000.", LOOPING, "answer_is"),
    (" The answer is -0.", "0", "answer_is"),
])
def test_extraction_real_completion_styles(completion, expected, how):
    assert extract_answer(completion) == (expected, how)


def test_huge_numbers_and_non_plain_golds():
    assert normalize_number(LOOPING + ".50") == LOOPING + ".5"
    assert normalize_number("-$" + LOOPING) == "-" + LOOPING
    assert (normalize_number("1e5") is None and normalize_number("inf") is None
            and normalize_number("NaN") is None)
    assert answers_equal(LOOPING, LOOPING + ".00") and not answers_equal(LOOPING, LOOPING + "1")
    assert answers_equal("0", "-0") and not answers_equal("abc", "abc")
    assert parse_gold("x\n#### " + LOOPING) == LOOPING
    for bad in ("1e999", "1e5", "inf", "nan", "0x10"):
        with pytest.raises(ValueError, match=rf"final answer '{bad}' that is not a plain decimal number"):
            parse_gold(f"So it is.\n#### {bad}")


def test_run_on_into_new_question_is_cut_before_scoring():
    raw = " 16 - 3 = 13. The answer is 13.\nQ: Tom has 5 apples. How many?\nA: The answer is 5."
    text, stop = truncate_at_stop(raw, MethodConfig().stops)
    assert stop == "\nQ:" and text == " 16 - 3 = 13. The answer is 13."
    assert extract_answer(text) == ("13", "answer_is")
    # without an answer before the run-on, the last number of the *truncated* text counts, not the new Q's
    text, _ = truncate_at_stop(" It is 7 then.\n\nQ: 99 apples?", MethodConfig().stops)
    assert extract_answer(text) == ("7", "last_number")


def test_numeric_comparison():
    assert answers_equal("18", "18.00") and answers_equal("1000", "1000")
    assert not answers_equal("18", "-18") and not answers_equal(None, "1")


def test_gold_parser_over_the_whole_test_split(gsm8k_dir):
    official = re.compile(r"#### (\-?[0-9\.\,]+)")  # openai/grade-school-math dataset.py
    lines = (gsm8k_dir / "test.jsonl").read_text().splitlines()
    assert len(lines) == 1319
    commas = negatives = 0
    for line in lines:
        row = json.loads(line)
        ours = parse_gold(row["answer"])
        theirs = official.search(row["answer"]).group(1).replace(",", "")
        assert ours == theirs, row["answer"][-40:]
        commas += "," in official.search(row["answer"]).group(1)
        negatives += ours.startswith("-")
    assert (commas, negatives) == (14, 2)
    ds = data.load_jsonl(gsm8k_dir / "test.jsonl")
    assert len(ds.problems) == 1319 and ds.problems[489].gold == "-10" and ds.problems[0].id == "test:1"


def test_packaged_gsm8k_named_sets(tmp_path):
    test = data.load_dataset("gsm8k:test")
    assert data.load_dataset("gsm8k") == test and data.load_dataset(" gsm8k:test ") == test
    assert len(test.problems) == 1319 and test.source == "gsm8k:test"
    assert test.sha256 == "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14"
    assert ([p.id for p in test.problems[:2]] == ["gsm8k-test:1", "gsm8k-test:2"]
            and test.problems[-1].id == "gsm8k-test:1319")
    by_line = {p.line: p for p in test.problems}
    assert by_line[147].gold == "2125" and by_line[147].id == "gsm8k-test:147"  # '#### 2,125'
    assert by_line[490].gold == "-10"
    assert test.problems[0].question.startswith("Janet’s ducks lay 16 eggs") and test.problems[0].gold == "18"
    train = data.load_dataset("gsm8k:train")
    assert (len(train.problems) == 7473 and train.problems[6].id == "gsm8k-train:7"
            and train.source == "gsm8k:train")
    assert train.sha256 == "17f347dc51477c50d4efb83959dbb7c56297aba886e5544ee2aaed3024813465"
    assert train.problems[0].gold == "72"
    # ids do not depend on the selection
    assert data.select(test.problems, offset=146, limit=1)[0].id == "gsm8k-test:147"

    with pytest.raises(InputError) as e:
        data.load_dataset("gsm8k:dev")
    assert e.value.one_line() == ("--data gsm8k:dev is not a known dataset name; "
                                  "use one of: demo, gsm8k, arith:test, gsm8k:test, "
                                  "gsm8k:train, a JSONL path, or hf:openai/gsm8k[:split]")

    # a tampered copy registered under a temporary name is refused with one line naming file and fix
    copy = tmp_path / "test.jsonl"
    copy.write_bytes(data.DATASETS["gsm8k:test"].path.read_bytes())
    name = "tmpcheck:test"
    try:
        data.register_dataset(name, copy, data.DATASETS["gsm8k:test"].sha256)
        assert [p.id for p in data.load_dataset(name).problems[:1]] == ["tmpcheck-test:1"]  # intact: loads
        lines = copy.read_text(encoding="utf-8").splitlines(keepends=True)
        lines[0] = lines[0].replace("#### 18", "#### 19")
        copy.write_text("".join(lines), encoding="utf-8")
        with pytest.raises(InputError) as e:
            data.load_dataset(name)
        line = e.value.one_line()
        assert "\n" not in line and line.startswith(f"the packaged copy of {name} is modified "
                                                    f"({copy} has sha256 ")
        assert "restore" in line
        copy.unlink()
        with pytest.raises(InputError,
                           match=rf"--data {name}: the packaged file .*test.jsonl does not exist"):
            data.load_dataset(name)
    finally:
        data.DATASETS.pop(name, None)
    with pytest.raises(ValueError):
        data.register_dataset("no-split", copy, "0" * 64)
    with pytest.raises(ValueError):
        data.register_dataset("x:y", copy, "abc")


def _brute_credit(answers, gold, k):
    """Independent exact maj@k: enumerate ordered k-tuples of distinct paths, fractional ties, in
    Fractions."""
    total, count = Fraction(0), 0
    for subset in itertools.permutations(range(len(answers)), k):
        votes = Counter(answers[i] for i in subset if answers[i] is not None)
        count += 1
        if votes:
            top = max(votes.values())
            tied = [a for a, c in votes.items() if c == top]
            if gold in tied:
                total += Fraction(1, len(tied))
    return total / count


@pytest.mark.parametrize("answers, gold", [
    (["1", "1", "2", "3", None], "1"),
    (["5", "6", "6", None, None, "5"], "5"),
    (["4", "4", "4", "7"], "7"),
    ([None, None, "2"], "2"),
    (["1", "2", "3", "4"], "2"),
])
def test_maj_at_k_from_counts_matches_enumeration(answers, gold):
    every_k = stats.maj_at_k_all(answers, gold)
    for k in range(1, len(answers) + 1):
        brute = float(_brute_credit(answers, gold, k))
        assert stats.maj_at_k_exact(answers, gold, k) == pytest.approx(brute, abs=1e-12)
        assert every_k[k - 1] == pytest.approx(brute, abs=1e-12)
        assert stats.maj_at_k(answers, gold, k) == pytest.approx(brute, abs=1e-12)


def test_maj_at_k_from_counts_matches_enumeration_on_random_paths():
    rng = random.Random(7)
    for _ in range(40):
        answers = [rng.choice(["1", "2", "3", "4", None]) for _ in range(rng.randint(1, 11))]
        gold = rng.choice(["1", "2", "5"])
        every_k = stats.maj_at_k_all(answers, gold)
        assert every_k == pytest.approx([stats.maj_at_k_exact(answers, gold, k)
                                         for k in range(1, len(answers) + 1)], abs=1e-12)


def test_maj_at_k_hand_values_and_curve():
    # 3 paths say 1, 1 path says 2: maj@1 = 3/4; maj@2: pairs {1,1} x3 -> 1, {1,2} x3 -> 1/2 => (3 + 1.5)/6
    answers = ["1", "1", "1", "2"]
    assert stats.maj_at_k_exact(answers, "1", 1) == 0.75
    assert stats.maj_at_k_exact(answers, "1", 2) == pytest.approx(0.75)
    assert stats.maj_at_k_exact(answers, "1", 4) == 1.0
    assert stats.maj_at_k_exact(answers, "2", 4) == 0.0
    # 40 paths (SC@40): C(40, 20) subsets cannot be enumerated; the count-based sum is exact and fast
    many = ["1"] * 14 + ["2"] * 12 + ["3"] * 6 + [None] * 8
    curve40 = stats.maj_at_k_all(many, "1")
    assert curve40[0] == pytest.approx(14 / 40) and curve40[-1] == 1.0
    pairs_won = math.comb(14, 2) + 14 * 8 + (14 * 12 + 14 * 6) / 2  # {1,1}, {1,None}, a tie with 2 or 3
    assert curve40[1] == pytest.approx(pairs_won / math.comb(40, 2))
    assert all(0 < v <= 1 for v in curve40)
    curve = stats.maj_curve([(answers, "1"), (["3", None], "3")], 2)
    assert curve[0] == pytest.approx((0.75 + 0.5) / 2)


def test_wilson_and_plurality():
    low, high = stats.wilson_interval(5, 10)
    assert (round(low, 4), round(high, 4)) == (0.2366, 0.7634)
    low, high = stats.wilson_interval(91, 1319)  # BLOOM's 5-shot leaderboard score
    assert 0.055 < low < 0.058 and 0.083 < high < 0.086
    assert stats.wilson_interval(0, 0) == (0.0, 1.0)
    assert stats.plurality(["2", None, "3", "3", "2"]) == "2"  # tie: first seen
    assert stats.plurality([None, None]) is None


def test_defaults_ship_in_the_package():
    """--data demo and the default prompt are package data (a wheel has no experiments/), checked by sha."""
    import petals_ops

    package = Path(petals_ops.__file__).resolve().parent
    demo = data.load_dataset("demo")
    assert demo.source == "gsm8k:demo" and data.load_dataset("gsm8k:demo") == demo
    assert data.DATASETS["gsm8k:demo"].path.resolve().is_relative_to(package)
    assert prompts.DEFAULT_PROMPT.resolve().is_relative_to(package)
    assert prompts.load_prompt_file().name == "gsm8k_cot_8shot_petals_ops"


def test_data_loading_selection_and_errors(tmp_path):
    demo = data.load_dataset("demo")
    assert len(demo.problems) >= 20 and all(p.gold for p in demo.problems)
    picked = data.select(demo.problems, offset=2, sample=5, sample_seed=3)
    assert picked == data.select(demo.problems, offset=2, sample=5, sample_seed=3) and len(picked) == 5
    assert data.select(demo.problems, limit=2)[1].id == "gsm8k_demo:2"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "a\\n#### 3"}\n{"question": "q", "answer": \n')
    with pytest.raises(InputError, match=rf"{re.escape(str(bad))}:2 is not valid JSON"):
        data.load_jsonl(bad)
    bad.write_text('{"question": "q", "answer": "no final line"}\n')
    with pytest.raises(InputError, match=":1: the answer has no '#### N'"):
        data.load_jsonl(bad)
    with pytest.raises(InputError, match="does not exist"):
        data.load_dataset(str(tmp_path / "missing.jsonl"))
    with pytest.raises(InputError, match=r"^--data /dev/null is not a regular file; "):
        data.load_dataset("/dev/null")
    official = tmp_path / "grade_school_math" / "data"
    official.mkdir(parents=True)
    (official / "test.jsonl").write_text('{"question": "q", "answer": "a\\n#### 1,000"}\n')
    assert data.load_dataset(str(tmp_path)).problems[0].gold == "1000"


def test_jsonl_lines_end_at_newline_only(tmp_path):
    """Issue 23.12: raw U+2028, U+2029 and U+0085 are valid inside a JSON string; str.splitlines split the
    line there (refusing the file) and shifted every FILE:LINE id after it. Every JSONL reader is checked."""
    from petals_ops.tune.examples import load_pairs

    odd = "\u2028\u0085\u2029\x1c\x0b\x0c"
    rows = [{"question": f"Tom has 3{odd} apples. How many?", "answer": f"3 + 0 = 3{odd}\n#### 3"},
            {"question": "Two?", "answer": "#### 2"}, {"question": "Four?", "answer": "2 + 2 = 4\n#### 4"}]
    path = tmp_path / "odd.jsonl"
    text = "\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\r\n"
    assert "\u2028" in text and len(text.splitlines()) > 3  # what the old readers did with it
    path.write_text(text, encoding="utf-8")
    problems = data.load_jsonl(path).problems
    assert [(p.id, p.line, p.gold) for p in problems] == [("odd:1", 1, "3"), ("odd:2", 2, "2"),
                                                          ("odd:3", 3, "4")]
    assert odd.strip() in problems[0].question
    pairs = load_pairs(str(path), eval_size=1)
    assert len(pairs.train) == 2 and odd.strip() in pairs.train[0][0]
    path.write_text(text + "{broken\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"odd.jsonl:4 is not valid JSON"):
        data.load_jsonl(path)
    # the records of a run dir are read the same way
    run = store.RunStore(tmp_path / "run")
    run.open({"a": 1})
    run.append({"id": "odd:1", "error": None, "question": odd})
    run.append({"id": "odd:2", "error": None})
    run.close()
    assert [r["id"] for r in store.read_records(tmp_path / "run")] == ["odd:1", "odd:2"]
    # a prompt file: a U+2028 inside an exemplar stays text
    prompt = tmp_path / "p.txt"
    prompt.write_text(f"# header\nQ: one{odd}two?\nA: 3 + 0 = 3. The answer is 3.\n", encoding="utf-8")
    assert f"one{odd}two" in prompts.load_prompt_file(prompt).prefix


def test_prompt_sets(tmp_path):
    ours = prompts.load_prompt_file()
    assert ours.exemplars == 8 and not ours.prefix.startswith("#")
    rendered = ours.render("How many?")
    assert rendered.endswith("The answer is 49200.\n\nQ: How many?\nA:")
    # both prompt-file layouts (published sets stay outside the repo; ours is written in each layout)
    plain = tmp_path / "plain.txt"
    plain.write_text(f"# a comment line\n#another\n\n{ours.prefix}\n", encoding="utf-8")
    marked = tmp_path / "marked.txt"
    marked.write_text(f"Set X, as published. The prompt lies between {prompts.BEGIN} and {prompts.END}:\n\n"
                      f"{prompts.BEGIN}\n{ours.prefix}\n\n{prompts.END}\nTrailing notes: The answer is 7.\n",
                      encoding="utf-8")
    for path in (plain, marked):
        loaded = prompts.load_prompt_file(path)
        assert (loaded.prefix, loaded.exemplars, loaded.sha256) == (ours.prefix, 8, ours.sha256), path.name
    unclosed = tmp_path / "unclosed.txt"
    unclosed.write_text(f"{prompts.BEGIN}\n{ours.prefix}\n", encoding="utf-8")
    with pytest.raises(InputError, match="no -----END PROMPT----- line"):
        prompts.load_prompt_file(unclosed)
    bad = tmp_path / "p.txt"
    bad.write_text("Q: a?\nA: b. The answer is 1.\n\nQ: c?\nA: no answer here\n")
    with pytest.raises(InputError, match="exemplar 2"):
        prompts.load_prompt_file(bad)


def test_batch_planning():
    assert plan_batches(10, 4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    servers = [ServerRecord("a", "ONLINE", 0, 2, 1.0, cache_tokens_left=2 * 4096 * 2),
               ServerRecord("b", "ONLINE", 2, 4, 1.0, cache_tokens_left=10 ** 9),
               ServerRecord("c", "OFFLINE", 0, 4, 1.0, cache_tokens_left=0)]
    # BLOOM defaults: 4096 cache tokens per block -> sessions of 1024 tokens fit 4 at a time
    assert max_batch_for_cache(servers, 1024) == 4
    assert max_batch_for_cache(servers, 1024, concurrency=2) == 2
    assert max_batch_for_cache(servers, 100000) == 1
    assert max_batch_for_cache([], 1024) is None


def test_store_refuses_other_config_and_repairs_cut_lines(tmp_path):
    run = tmp_path / "run"
    s = store.RunStore(run)
    assert s.open({"a": 1, "m": {"k": 2}}) == {}
    s.append({"id": "x:1", "error": "boom"})
    s.append({"id": "x:1", "error": None})
    s.append({"id": "x:2", "error": None})
    s.close()
    with open(run / "records.jsonl", "ab") as f:
        f.write(b'{"id": "x:3", "err')  # a crash in the middle of a line
    with pytest.raises(InputError, match=r"different config \(m.k 2 -> 3\)"):
        store.RunStore(run).open({"a": 1, "m": {"k": 3}})
    s = store.RunStore(run)
    done = s.open({"a": 1, "m": {"k": 2}})
    assert sorted(done) == ["x:1", "x:2"] and done["x:1"]["error"] is None
    with pytest.raises(OpsError, match=r"another bench \(pid \d+\) is running"):
        store.RunStore(run).open({"a": 1, "m": {"k": 2}})
    s.append({"id": "x:3", "error": None})
    s.close()
    lines = (run / "records.jsonl").read_bytes().split(b"\n")
    assert lines[-1] == b"" and all(json.loads(line) for line in lines[:-1]) and len(lines) == 5


def test_a_run_dir_without_records_takes_a_new_config(tmp_path):
    """Issue 23.5: a command refused (or killed) after opening the run dir, before any record, must not pin
    its config there; once a record is written the config is the run's identity. Same for tune runs."""
    from petals_ops.tune.store import TuneStore

    run = tmp_path / "run"
    for config in ({"max_new_tokens": 9000}, {"max_new_tokens": 8}):
        s = store.RunStore(run)
        assert s.open(config) == {}
        s.close()
        assert json.loads((run / "config.json").read_text()) == config
    s = store.RunStore(run)
    s.open({"max_new_tokens": 8})
    s.append({"id": "x:1", "error": "boom"})  # an error record is a record: the run has begun
    s.close()
    with pytest.raises(InputError, match=r"different config \(max_new_tokens 8 -> 16\)"):
        store.RunStore(run).open({"max_new_tokens": 16})
    tune = tmp_path / "tune"
    for config in ({"steps": 9}, {"steps": 10}):
        t = TuneStore(tune)
        assert t.open(config) is None
        t.close()
    t = TuneStore(tune)
    t.open({"steps": 10})
    t.write_checkpoint({"step": 1})
    t.close()
    with pytest.raises(InputError, match="different config"):
        TuneStore(tune).open({"steps": 11})


def test_cli_input_errors(run_cli, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "a\\n#### 3"}\nnot json\n')
    line = assert_one_line_error(run_cli("bench", "gsm8k", "--data", bad, "--run-dir", tmp_path / "r1",
                                         "--backend", "local"), code=2)
    assert f"{bad}:2" in line
    line = assert_one_line_error(run_cli("bench", "gsm8k", "--data", tmp_path / "nope.jsonl",
                                         "--run-dir", tmp_path / "r2"), code=2)
    assert "nope.jsonl does not exist" in line
    line = assert_one_line_error(run_cli("bench", "gsm8k", "--data", "hf:openai/gsm8k",
                                         "--run-dir", tmp_path / "r3"), code=1)
    assert "cannot download openai/gsm8k" in line and "--data PATH" in line
    line = assert_one_line_error(run_cli("bench", "gsm8k", "--method", "cot", "--paths", "3",
                                         "--run-dir", tmp_path / "r4"), code=2)
    assert "--paths 3 needs --method sc" in line
    line = assert_one_line_error(run_cli("bench", "report", tmp_path), code=2)
    assert "has no summary.json" in line


def test_cli_unreachable_peers(run_cli, tmp_path, tiny_model_dir):
    peer = "/ip4/127.0.0.1/tcp/9/p2p/QmWZTX7TUhTM2myifFaq1VYb3tVyPMpLGRNoTV9hNqsB9L"
    line = assert_one_line_error(run_cli("bench", "gsm8k", "--initial-peers", peer, "--model", tiny_model_dir,
                                         "--limit", "1", "--run-dir", tmp_path / "r"), code=1)
    assert "cannot reach the swarm" in line and peer in line
