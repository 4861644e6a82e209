"""Adaptive Self-Consistency (ESC windows, Adaptive-Consistency's Beta rule) and the cost of a run.

The stopping rules and the cost arithmetic are pure functions, tested here without a model. Then, with
the shipped arithmetic model: an adaptive run through a real swarm gives the local backend's records, and
a run killed with SIGKILL resumes to every question once with the paths an uninterrupted run decodes.
(The accuracy-at-half-the-paths target is in tests/test_bench_validity.py, beside the SC@10 run it pairs
with.)
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from petals_ops.bench import cost, report
from petals_ops.bench.methods import MethodConfig
from petals_ops.bench.methods.adaptive import adaptive_next, is_decided, leader_confidence, top_two
from petals_ops.bench.methods.esc import esc_next, last_window_agrees, window_agrees
from petals_ops.bench.methods.stopping import capped_curve
from petals_ops.bench.records import QuestionRecord, ScoredPath
from petals_ops.bench.runner import BenchParams, ExecOptions, run_bench
from petals_ops.bench.store import read_records
from petals_ops.client.options import ClientOptions
from petals_ops.lab.tiny_model import ARITH_MODEL_DIR
from petals_ops.util.errors import InputError
from tests.conftest import cli_env
from tests.helpers import assert_one_line_error

# --- ESC: windows --------------------------------------------------------------------------------------


def test_a_window_agrees_only_when_every_path_gives_the_same_answer():
    assert window_agrees(["7", "7", "7"]) and window_agrees(["7"])
    assert not window_agrees(["7", "7", "8"]) and not window_agrees([])
    assert not window_agrees([None, None])  # paths without an answer never agree
    assert not window_agrees(["7", None, "7"])


@pytest.mark.parametrize("answers, expected", [
    ([], 3),  # the first window
    (["1", "1", "1"], 0),  # a unanimous first window: decided
    (["1", "1", "2"], 3),  # not unanimous: the next window
    (["1", "1", "2", "3", "3", "3"], 0),  # the second window agrees (on another answer than the first)
    (["1", "1", "2", "1", "1", "1", "1"], 0),  # at the maximum (7): stop, whatever the last window
    (["1", "2", "3", "4", "5", "6"], 1),  # one path left under the maximum: a short last window
])
def test_esc_asks_for_the_next_window_until_one_agrees_up_to_max_k(answers, expected):
    assert esc_next(answers, 3, 7) == expected


def test_esc_never_judges_a_window_cut_short_by_the_maximum():
    assert not last_window_agrees(["1", "2", "3", "3"], 3)  # 4 paths: the window 3..5 is not whole
    assert last_window_agrees(["1", "2", "3", "3", "3", "3"], 3)


# --- Adaptive-Consistency: the Beta rule ------------------------------------------------------------------


def _integral(a: int, b: int, steps: int = 20000) -> float:
    """P(p > 1/2) for p ~ Beta(a + 1, b + 1) by the midpoint rule over the unnormalised density."""
    xs = [(i + 0.5) / steps for i in range(steps)]
    dens = [x ** a * (1 - x) ** b for x in xs]
    return sum(d for x, d in zip(xs, dens) if x > 0.5) / sum(dens)


@pytest.mark.parametrize("leader, runner_up", [(0, 0), (1, 0), (4, 0), (3, 1), (7, 2), (10, 9), (20, 3)])
def test_leader_confidence_is_the_beta_posterior_probability(leader, runner_up):
    assert leader_confidence(leader, runner_up) == pytest.approx(_integral(leader, runner_up), abs=1e-4)


def test_the_beta_rule_at_its_threshold_and_on_ties():
    assert leader_confidence(4, 0) == 1 - 2 ** -5  # no runner-up: 1 - 2^-(v1+1)
    assert not is_decided(["5"] * 3, 0.95) and is_decided(["5"] * 4, 0.95)  # 0.9375 vs 0.96875
    assert is_decided(["5"] * 3, 0.9)
    tie = ["5", "6"] * 6
    assert leader_confidence(*top_two(tie)) == 0.5 and not is_decided(tie, 0.5)  # a tie is never decided
    assert top_two(["5", None, None, "6", "5"]) == (2, 1)  # paths without an answer do not vote
    assert not is_decided([None] * 10, 0.5)


def test_adaptive_rounds_are_the_fewest_paths_that_could_decide():
    assert adaptive_next([], 0.95, 40) == 4  # four agreeing paths are the least that can stop at 0.95
    assert adaptive_next(["1", "1", "1", "2"], 0.95, 40) == 3  # (6, 1) is the first count past 0.95
    assert adaptive_next(["1"] * 4, 0.95, 40) == 0
    assert adaptive_next(["1", "2", "1", "2"], 0.95, 6) == 2  # cut at the maximum
    assert adaptive_next(["1", "2"] * 3, 0.95, 6) == 0  # at the maximum: stop undecided


def test_batched_rounds_stop_exactly_where_one_path_at_a_time_stops():
    """The paper samples one path at a time; our rounds must decode the very same paths."""
    rng = random.Random(3)
    for _ in range(400):
        threshold = rng.choice([0.6, 0.8, 0.9, 0.95, 0.99])
        pool = rng.choice([["1"], ["1", "2"], ["1", "2", "3", None], ["1", "1", "1", "2", None]])
        stream = [rng.choice(pool) for _ in range(30)]
        one_by_one = next((n for n in range(1, 31) if is_decided(stream[:n], threshold)), 30)
        n = 0
        while more := adaptive_next(stream[:n], threshold, 30):
            n += more
        assert n == one_by_one, (stream, threshold)


def test_method_settings_are_checked():
    for method, params, needle in (("esc", (("window", 0),), "window=0 must be between 1 and --paths"),
                                   ("esc", (("window", 11),), "between 1 and --paths 10"),
                                   ("adaptive", (("threshold", 1.0),), "below 1"),
                                   ("adaptive", (("threshold", 0.3),), "at least 0.5")):
        with pytest.raises(InputError, match=needle):
            MethodConfig(method=method, paths=10, params=params).validate()
    cfg = MethodConfig(method="adaptive", paths=10).validate()
    assert cfg.to_dict()["params"] == {"threshold": 0.95}  # its settings are in the run's identity


# --- accuracy at max K = k on records of different lengths --------------------------------------------


def test_capped_curve_votes_on_each_questions_first_k_paths():
    questions = [(["3", "3", "3", "3"], "3"),  # stopped after 4 paths: right at every k
                 (["4", "5", "5", "5", "5", "5"], "5"),  # wrong with one path, a tie at 2 (first seen: 4)
                 (["9"], "2")]  # stopped after one path (it could not, but the curve must not care)
    assert capped_curve(questions, 6) == [1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3]
    assert capped_curve([], 3) == []


# --- cost ------------------------------------------------------------------------------------------------

def _record(qid: str, answers: list[str], gold: str, tokens: int, server_steps: int | None) -> QuestionRecord:
    paths = [ScoredPath(i=i, answer=a, how="answer_is", correct=a == gold, finish="stop", tokens=tokens,
                        text="", raw="") for i, a in enumerate(answers)]
    vote = Counter(answers).most_common(1)[0][0]
    return QuestionRecord(id=qid, line=0, question="", gold=gold, prompt_id="", method="x", backend="local",
                          prompt_tokens=10, paths=paths, vote=vote, correct=vote == gold,
                          tokens=tokens * len(paths), seconds=1.0, attempts=1, failures=[], servers=[],
                          batches=[len(paths)], error=None, finished_at=0.0, session_steps=server_steps,
                          server_steps=server_steps)


def test_run_cost_per_question_and_per_correct_answer():
    records = [_record("a", ["1"] * 4, "1", 10, 20), _record("b", ["2"] * 10, "1", 5, 40)]
    c = cost.run_cost(records, wall_seconds=1800.0, gpus=4, gpu_hour_price=1.5)
    assert (c["paths"], c["paths_per_question"], c["paths_median"]) == (14, 7.0, 7.0)
    assert (c["tokens"], c["tokens_per_question"]) == (90, 45.0)
    assert (c["server_steps"], c["server_steps_per_question"]) == (60, 30.0)
    assert c["gpu_hours"] == 2.0 and c["gpu_hours_per_question"] == 1.0 and c["gpu_hours_per_correct"] == 2.0
    assert c["cost_per_question"] == 1.5 and c["cost_per_correct"] == 3.0
    unpriced = cost.run_cost(records, wall_seconds=1800.0, gpus=4)
    assert unpriced["cost_per_correct"] is None and cost.priced(unpriced, 1.5) == c
    old = cost.run_cost([*records, _record("c", ["1"], "1", 3, None)], wall_seconds=1.0, gpus=1)
    assert old["server_steps"] is None  # a record written before server-steps were counted
    for bad in (lambda: cost.check_price(-1.0), lambda: cost.check_gpus(0)):
        with pytest.raises(InputError):
            bad()


def test_pair_cost_compares_b_with_a_on_the_same_questions():
    a = {"q1": _record("q1", ["1"], "1", 10, 10), "q2": _record("q2", ["2"], "1", 10, 10)}
    b = {"q1": _record("q1", ["1"] * 4, "1", 10, 40), "q2": _record("q2", ["1"] * 10, "1", 10, 60)}
    ca = cost.run_cost(list(a.values()), wall_seconds=36.0, gpus=1, gpu_hour_price=2.0)
    cb = cost.run_cost(list(b.values()), wall_seconds=180.0, gpus=1, gpu_hour_price=2.0)
    c = cost.pair_cost(a, b, ["q1", "q2"], ca, cb)
    assert c["extra_correct"] == 1 and c["paths_ratio"] == 7.0 and c["tokens_ratio"] == 7.0
    assert c["server_steps_ratio"] == 5.0 and c["server_steps_per_extra_correct"] == 80
    assert c["gpu_hours_ratio"] == pytest.approx(5.0)
    assert c["gpu_hours_per_extra_correct"] == pytest.approx(144 / 3600)
    assert c["cost_per_extra_correct"] == pytest.approx(2 * 144 / 3600)
    same = cost.pair_cost(a, a, ["q1", "q2"], ca, ca)
    assert same["extra_correct"] == 0 and same["server_steps_per_extra_correct"] is None
    assert cost.pair_cells(same)[:2] == ["+0", "1.00x"]


# --- with the model -------------------------------------------------------------------------------------

QUESTIONS = 4
TOKENS = 24


def _params(run_dir, method: str, *, backend="local", swarm=None, **params) -> BenchParams:
    client = ClientOptions(backend=backend, model=None if swarm else str(ARITH_MODEL_DIR),
                           swarm_dir=swarm.run_dir if swarm else None)
    cfg = MethodConfig(method=method, paths=8, temperature=0.5, max_new_tokens=TOKENS,
                       params=tuple(params.items()))
    return BenchParams(data="arith:test", limit=QUESTIONS, run_dir=str(run_dir), client=client, method=cfg,
                       exec=ExecOptions(concurrency=2), gpu_hour_price=2.0)


@pytest.mark.swarm
def test_adaptive_runs_through_the_swarm_give_the_local_records_and_their_cost(arith_swarm, tmp_path,
                                                                               run_cli):
    keys = ("i", "raw", "text", "answer", "correct", "finish", "tokens")
    runs = {}
    # through the swarm: one adaptive method (the runner's rounds are the same code for every method)
    runs["esc", "local"] = run_bench(_params(tmp_path / "esc-local", "esc", window=3))
    for method, params in (("adaptive", {"threshold": 0.9}),):
        for backend in ("petals", "local"):
            run = run_bench(_params(tmp_path / f"{method}-{backend}", method, backend=backend,
                                    swarm=arith_swarm if backend == "petals" else None, **params))
            runs[method, backend] = run
        swarm, local = (read_records(runs[method, b].run_dir) for b in ("petals", "local"))
        assert [[{k: p[k] for k in keys} for p in r["paths"]] for r in swarm] == \
               [[{k: p[k] for k in keys} for p in r["paths"]] for r in local]
        for field in ("vote", "correct", "rounds", "batches", "tokens", "session_steps"):
            assert [r[field] for r in swarm] == [r[field] for r in local], field
        # a server-step is a session step on one server of the route: the arithmetic swarm splits the
        # blocks over 2 servers, the local backend is one process
        assert all(r["server_steps"] == 2 * r["session_steps"] == 2 * mine["server_steps"]
                   for r, mine in zip(swarm, local))
        s = runs[method, "petals"].summary
        assert s.cost["gpus"] == 2 and s.cost["server_steps"] == sum(r["server_steps"] for r in swarm)
        assert s.cost["cost_per_question"] == pytest.approx(2.0 * s.cost["gpu_hours"] / QUESTIONS)
        assert s.cost["paths"] == sum(len(r["paths"]) for r in swarm) <= 8 * QUESTIONS
    esc = read_records(runs["esc", "local"].run_dir)
    assert all(set(r["rounds"][:-1]) <= {3} for r in esc)  # windows of 3 (the last cut at 8)
    assert runs["esc", "local"].summary.figure("windows_mean") == \
        sum(len(r["rounds"]) for r in esc) / QUESTIONS
    curve = runs["adaptive", "local"].summary.figure("accuracy_at_max_k")
    assert list(curve) == [str(k) for k in range(1, 9)]
    assert curve["8"] == runs["adaptive", "local"].summary.accuracy  # at its own maximum: the run itself

    # bench report pairs an adaptive run with a fixed-K one, with what B's answers cost against A's
    sc = run_bench(_params(tmp_path / "sc", "sc"))
    out = run_cli("bench", "report", sc.run_dir, runs["adaptive", "local"].run_dir, "--out", tmp_path / "r",
                  "--gpu-hour-price", "3", "-o", "json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    (pair,) = data["pairs"]
    sc_paths = sum(len(r["paths"]) for r in read_records(sc.run_dir))
    assert pair["cost"]["paths_ratio"] == pytest.approx(
        sum(len(r["paths"]) for r in read_records(runs["adaptive", "local"].run_dir)) / sc_paths)
    assert all(r["cost"]["gpu_hour_price"] == 3.0 for r in data["runs"])  # repriced for the report
    text = (tmp_path / "r" / "report.md").read_text()
    assert "server-steps B/A" in text and "paths per question" in text and "accuracy at max K = k" in text
    line = assert_one_line_error(run_cli("bench", "report", sc.run_dir, "--out", tmp_path / "r2",
                                         "--gpu-hour-price", "-2"), code=2)
    assert "--gpu-hour-price -2.0 must be a number >= 0" in line


def test_a_killed_adaptive_run_resumes_to_every_question_once_with_the_same_paths(tmp_path):
    run_dir, questions = tmp_path / "killed", 8
    args = [sys.executable, "-m", "petals_ops.cli.main", "bench", "gsm8k", "--data", "arith:test",
            "--limit", str(questions), "--backend", "local", "--model", str(ARITH_MODEL_DIR),
            "--method", "adaptive", "--paths", "8", "--temperature", "0.5", "--max-new-tokens", str(TOKENS),
            "--run-dir", str(run_dir)]
    proc = subprocess.Popen(args, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 240
        while not read_records(run_dir) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, f"the bench exited before it was killed: {proc.stderr.read()[-1500:]}"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
        proc.stderr.close()
    before = len(read_records(run_dir))
    assert 1 <= before < questions, "the bench was not killed mid-run"
    resumed = subprocess.run(args, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{before} of {questions} questions already done" in resumed.stderr
    records = read_records(run_dir)
    assert Counter(r["id"] for r in records) == Counter(f"arith-test:{i}" for i in range(1, questions + 1))
    whole = run_bench(BenchParams(data="arith:test", limit=questions, run_dir=str(tmp_path / "whole"),
                                  client=ClientOptions(backend="local", model=str(ARITH_MODEL_DIR)),
                                  method=MethodConfig(method="adaptive", paths=8, temperature=0.5,
                                                      max_new_tokens=TOKENS)))
    by_id = {r["id"]: r for r in read_records(whole.run_dir)}
    for r in records:
        assert [p["text"] for p in r["paths"]] == [p["text"] for p in by_id[r["id"]]["paths"]], r["id"]
        assert r["rounds"] == by_id[r["id"]]["rounds"] and r["vote"] == by_id[r["id"]]["vote"]
    assert report.load_run(run_dir)[0].cost["paths"] == whole.summary.cost["paths"]


def test_cli_refuses_bad_cost_options_in_one_line(run_cli, tmp_path):
    for option, needle in ((["--gpus", "0"], "--gpus 0 must be at least 1"),
                           (["--gpu-hour-price", "nan"], "must be a number >= 0")):
        result = run_cli("bench", "gsm8k", "--data", "arith:test", "--limit", "1", "--backend", "local",
                         "--model", ARITH_MODEL_DIR, "--run-dir", tmp_path / "r", *option)
        assert_one_line_error(result, needle, code=2)
    assert not (tmp_path / "r").exists()


