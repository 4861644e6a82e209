"""Bench machinery without a swarm: extraction, gold parser, statistics, data, prompts, store, CLI errors."""

from __future__ import annotations

import itertools
import json
import random
import re
from collections import Counter
from fractions import Fraction
from pathlib import Path

import pytest

from petals_ops.bench import data, prompts, stats, store
from petals_ops.bench.extraction import answers_equal, extract_answer, parse_gold, truncate_at_stop
from petals_ops.bench.methods import MethodConfig, max_batch_for_cache, plan_batches
from petals_ops.errors import InputError, OpsError
from petals_ops.swarm_health import ServerRecord
from tests.helpers import assert_one_line_error

SHARED = Path(__file__).resolve().parents[2] / "shared"


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
    (" I do not know.", None, "none"),
    ("", None, "none"),
])
def test_extraction_edge_cases(completion, expected, how):
    assert extract_answer(completion) == (expected, how)


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


def _brute_credit(answers, gold, k):
    """Independent exact maj@k: enumerate ordered k-tuples of distinct paths, fractional ties, in Fractions."""
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
def test_maj_at_k_exact_and_sampled_match_enumeration(answers, gold):
    rng = random.Random(1)
    for k in range(1, len(answers) + 1):
        brute = float(_brute_credit(answers, gold, k))
        assert stats.maj_at_k_exact(answers, gold, k) == pytest.approx(brute, abs=1e-12)
        assert stats.maj_at_k(answers, gold, k) == pytest.approx(brute, abs=1e-12)
        sampled = stats.maj_at_k_sampled(answers, gold, k, draws=4000, rng=rng)
        assert sampled == pytest.approx(brute, abs=0.03)


def test_maj_at_k_hand_values_and_curve():
    # 3 paths say 1, 1 path says 2: maj@1 = 3/4; maj@2: pairs {1,1} x3 -> 1, {1,2} x3 -> 1/2 => (3 + 1.5)/6
    answers = ["1", "1", "1", "2"]
    assert stats.maj_at_k_exact(answers, "1", 1) == 0.75
    assert stats.maj_at_k_exact(answers, "1", 2) == pytest.approx(0.75)
    assert stats.maj_at_k_exact(answers, "1", 4) == 1.0
    assert stats.maj_at_k_exact(answers, "2", 4) == 0.0
    # past exact_limit subsets maj_at_k samples random subsets; it must stay close to exact enumeration
    many = ["1"] * 5 + ["2"] * 5 + [None] * 4  # C(14, 7) = 3432 subsets: enumerable
    exact = stats.maj_at_k_exact(many, "1", 7)
    assert 0 < exact < 1
    assert stats.maj_at_k(many, "1", 7, exact_limit=10) == pytest.approx(exact, abs=0.02)
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
    official = tmp_path / "grade_school_math" / "data"
    official.mkdir(parents=True)
    (official / "test.jsonl").write_text('{"question": "q", "answer": "a\\n#### 1,000"}\n')
    assert data.load_dataset(str(tmp_path)).problems[0].gold == "1000"


def test_prompt_sets(tmp_path):
    ours = prompts.load_prompt_file()
    assert ours.exemplars == 8 and not ours.prefix.startswith("#")
    rendered = ours.render("How many?")
    assert rendered.endswith("The answer is 49200.\n\nQ: How many?\nA:")
    for name in ("gsm8k_cot_8shot_wei2022.txt", "gsm8k_cot_8shot_setB.txt"):
        published = prompts.load_prompt_file(SHARED / "prompts" / name)
        assert published.exemplars == 8 and published.prefix.startswith("Q: There are 15 trees")
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


def test_cli_input_errors(run_cli, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "a\\n#### 3"}\nnot json\n')
    line = assert_one_line_error(run_cli("bench", "gsm8k", "--data", bad, "--run-dir", tmp_path / "r1", "--backend", "local"), code=2)
    assert f"{bad}:2" in line
    line = assert_one_line_error(run_cli("bench", "gsm8k", "--data", tmp_path / "nope.jsonl", "--run-dir", tmp_path / "r2"), code=2)
    assert "nope.jsonl does not exist" in line
    line = assert_one_line_error(run_cli("bench", "gsm8k", "--data", "hf:openai/gsm8k", "--run-dir", tmp_path / "r3"), code=1)
    assert "cannot download openai/gsm8k" in line and "--data PATH" in line
    line = assert_one_line_error(run_cli("bench", "gsm8k", "--method", "cot", "--paths", "3", "--run-dir", tmp_path / "r4"), code=2)
    assert "--paths 3 needs --method sc" in line
    line = assert_one_line_error(run_cli("bench", "report", tmp_path), code=2)
    assert "has no summary.json" in line


def test_cli_unreachable_peers(run_cli, tmp_path, tiny_model_dir):
    peer = "/ip4/127.0.0.1/tcp/9/p2p/QmWZTX7TUhTM2myifFaq1VYb3tVyPMpLGRNoTV9hNqsB9L"
    line = assert_one_line_error(run_cli("bench", "gsm8k", "--initial-peers", peer, "--model", tiny_model_dir, "--limit", "1",
                                   "--run-dir", tmp_path / "r"), code=1)
    assert "cannot reach the swarm" in line and peer in line
