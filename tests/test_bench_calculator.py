"""``--calculator``: exact arithmetic forced inside the decoding loop (issue 10).

The parser on a table; forced tokens through a real local swarm (the shipped arithmetic model) equal to
the local backend; a batch of sampled paths forced at different steps; and the measured effect on the
held-out problems (local backend, fixed seeds: the test fails if the calculator stops helping).
"""

from __future__ import annotations

import json
from fractions import Fraction

import pytest

from petals_ops.bench import report
from petals_ops.bench.arithmetic import find_equations, first_slip
from petals_ops.bench.calculator import calculate, find_calculation, format_result
from petals_ops.bench.hooks import Calculator, decode_hooks
from petals_ops.bench.methods import MethodConfig
from petals_ops.bench.runner import BenchParams, ExecOptions, run_bench
from petals_ops.client.options import ClientOptions
from petals_ops.bench.store import read_records
from petals_ops.util.errors import InputError
from petals_ops.lab.tiny_model import ARITH_MODEL_DIR
from tests.helpers import assert_one_line_error

CALCULATOR_TABLE = [
    # precedence, associativity, parentheses
    ("16 - 3 - 4 =", "9"),
    ("3 + 4 * 2 =", "11"),
    ("(3 + 4) * 2 =", "14"),
    ("2 * (3 + (4 - 1)) =", "12"),
    ("20 / 2 / 5 =", "2"),
    ("3 - 5 =", "-2"),
    ("-3 + 5 =", "2"),
    ("7 x 3 =", "21"),
    ("7x3 =", "21"),
    ("7 × 3 =", "21"),
    ("6 ÷ 4 =", "1.5"),
    # numbers: $, thousands commas, decimals, %
    ("$12 + $3.50 =", "$15.50"),
    ("$5 * 3 =", "$15"),
    ("1,234 + 1,000 =", "2234"),
    ("1.5 + 2.25 =", "3.75"),
    ("0.1 + 0.2 =", "0.3"),
    ("10 / 4 =", "2.5"),
    ("50 * 20% =", "10"),
    ("50 + 10% =", None),  # ambiguous: left to the model
    # where the expression starts: a word, a previous '=', a stray '.'
    ("Ben has 21 shells. 21 + 1 =", "22"),
    ("It costs 5. 3 + 4 =", "7"),
    ("x = 5 + 3 =", "8"),
    ("16 - 3 = 13. 13 - 4 =", "9"),
    ("3 + 4 = ", "7"),  # one space after the '=' already written
    # not triggered: no '=' at the end, a bare number, garbage
    ("3 + 4", None),
    ("3 + 4 = 7", None),
    ("3 + 4 =  ", None),
    ("2 + 3 = 5 =", None),
    ("= 5 =", None),
    ("5 =", None),
    ("-5 =", None),
    ("(5) =", None),
    ("abc =", None),
    ("", None),
    ("=", None),
    ("3 + + 4 =", None),
    ("(3 + 4 =", "7"),  # an unmatched '(' before the expression is not part of it
    ("3 + 4) =", None),
    ("2(3 + 4) =", None),
    ("12 eggs / 3 + 1 =", None),  # its first operand is a word
    ("0900 - 0130 =", None),  # times, not quantities
    ("2 + 2 ==", None),
    # issue 23.4: a left side read only in part is left to the model (times, scientific notation, versions)
    ("At 9:45 + 15 =", None),
    ("10:30 + 2 =", None),
    ("3.5e3 + 500 =", None),
    ("2.5e2 * 4 =", None),
    ("1E3 + 1 =", None),
    ("v1.2.3 + 4 =", None),
    ("1.2.3 + 4 =", None),
    ("x3 + 4 =", None),
    ("2^3 + 1 =", None),
    ("Total:5 + 3 =", None),
    ("Total: 5 + 3 =", "8"),
    ("<<5 + 3 =", "8"),
    # division by zero, non-terminating decimals
    ("5 / 0 =", None),
    ("5 / (3 - 3) =", None),
    ("10 / 3 =", None),
    # overlong: tokens, digits per number, characters, result length
    (" + ".join(["1"] * 40) + " =", None),
    ("1" * 16 + " + 1 =", None),
    (" + ".join(["1000000.000001"] * 6) + " =", None),
    ("999999999999999 * 999999999999999 =", None),
    ("999999999999 * 999999999999 =", "999999999998000000000001"),
]


@pytest.mark.parametrize(("text", "expected"), CALCULATOR_TABLE)
def test_calculator_table(text, expected):
    assert calculate(text) == expected


def test_forced_text_and_a_cut_window():
    assert find_calculation("21 + 1 =").forced_text == " 22"
    assert find_calculation("21 + 1 = ").forced_text == "22"
    assert find_calculation("So 21 + 1 =").expression == "21 + 1"
    # a tail window that may have cut the expression's start is left alone; a word before it is fine
    assert find_calculation(",234 + 5 =", start_is_cut=True) is None
    assert find_calculation("234 + 5 =", start_is_cut=True) is None
    assert find_calculation("les 234 + 5 =", start_is_cut=True).result == "239"
    assert format_result(Fraction(-7, 4), dollars=True) == "-$1.75" and format_result(Fraction(1, 3)) is None


def test_every_calculated_equation_is_true_for_the_error_analysis():
    for text, expected in CALCULATOR_TABLE:
        if expected is not None:
            last = find_equations(f"{text.rstrip()} {expected}.")[-1]
            assert last.ok is True and last.text.endswith(f"= {expected}"), (text, expected, last)


def test_method_config_carries_the_calculator_only_when_on():
    off, on = MethodConfig(), MethodConfig(calculator=True)
    assert "calculator" not in off.to_dict()  # run dirs made before the option resume as they were
    # the decode spec carries the calculator as a hook of the token loop (after the stop strings)
    assert on.to_dict()["calculator"] is True and isinstance(on.decode_spec().hooks[-1], Calculator)
    assert not any(isinstance(h, Calculator) for h in off.decode_spec().hooks)
    assert MethodConfig.from_dict(on.to_dict()) == on and MethodConfig.from_dict(off.to_dict()) == off


# --- through the decoding loop -------------------------------------------------------------------------

SLIP_QUESTION = "arith-test:19"  # greedy writes '2 + 5 = 6' (then '4 + 6 = 19'); the answer is 11


def _prompt_ids(backend, problem_id):
    from petals_ops.bench.data import default_prompt_for, load_dataset
    from petals_ops.bench.prompts import load_prompt_file

    problem = next(p for p in load_dataset("arith:test").problems if p.id == problem_id)
    prompt = load_prompt_file(default_prompt_for("arith:test"))
    return backend.tokenizer(prompt.render(problem.question), return_tensors="pt")["input_ids"], problem


@pytest.fixture(scope="module")
def backends(arith_swarm):
    """The arithmetic model through the real local swarm and in this process: {kind: Backend}."""
    from petals_ops.client.backends import open_backend

    opened = {kind: open_backend(kind, arith_swarm.model,
                                 arith_swarm.initial_peers if kind == "petals" else ())
              for kind in ("petals", "local")}
    yield opened
    for backend in opened.values():
        backend.close()


def _decode(backend, problem_id, spec, paths=(0,)):
    from petals_ops.client.decoding import decode_batch

    ids, problem = _prompt_ids(backend, problem_id)
    return decode_batch(backend, ids, list(paths), spec, problem.id), problem


def _assert_forced_where_recorded(backend, path):
    """Each intervention's expression and '=' end just before its position, and its result follows."""
    tok = backend.tokenizer
    for i in path.interventions:
        before = tok.decode(path.ids[:i.position], skip_special_tokens=True)
        after = tok.decode(path.ids[i.position:], skip_special_tokens=True)
        assert before.rstrip().endswith(f"{i.expression} ="), (before, i)
        assert after.startswith(f" {i.result}"), (after, i)
        assert calculate(f"{i.expression} =") == i.result


def test_forced_result_reaches_the_servers_and_equals_the_local_backend(backends):
    from petals_ops.client.decoding import DecodeSpec, Sampling

    off, _ = _decode(backends["local"], SLIP_QUESTION, DecodeSpec(Sampling(), 48, decode_hooks()))
    slip = first_slip(off.paths[0].text)
    # the model's own slip
    assert slip is not None and slip.left == "2 + 5" and slip.stated == 6, off.paths[0].text

    spec = DecodeSpec(Sampling(), 48, decode_hooks(calculator=True))
    outs = {kind: _decode(backend, SLIP_QUESTION, spec)[0].paths[0] for kind, backend in backends.items()}
    swarm, local = outs["petals"], outs["local"]
    assert (swarm.raw, swarm.ids, swarm.interventions) == (local.raw, local.ids, local.interventions)
    assert "2 + 5 = 7." in swarm.text and first_slip(swarm.text) is None, swarm.text
    # the servers' cache holds the forced 7, not the model's 6: its next equation starts from it
    assert "2 + 5 = 7. 7 + " in swarm.text or "2 + 5 = 7. 4 + 7 = 11" in swarm.text, swarm.text
    corrected = [i for i in swarm.interventions if i.model_wrong]
    assert [(i.expression, i.result, i.model.strip()) for i in corrected][:1] == [("2 + 5", "7", "6")]
    assert all(not i.model_wrong for i in swarm.interventions if i not in corrected)
    _assert_forced_where_recorded(backends["petals"], swarm)


def test_sampled_rows_forced_at_different_steps_get_their_own_results(backends):
    """K sampled paths of one question in one session: each row is forced at its own steps, and a row the
    calculator never overrode is the very path the loop gives without it (its random stream unshifted)."""
    from petals_ops.client.decoding import DecodeSpec, Sampling

    sampling = Sampling(temperature=1.0, top_k=40, seed=0)
    paths = range(6)
    spec = DecodeSpec(sampling, 48, decode_hooks(calculator=True))
    on = {kind: _decode(backend, "arith-test:4", spec, paths)[0]
          for kind, backend in backends.items()}
    assert ([(p.raw, p.interventions) for p in on["petals"].paths]
            == [(p.raw, p.interventions) for p in on["local"].paths])
    off, _ = _decode(backends["local"], "arith-test:4", DecodeSpec(sampling, 48, decode_hooks()), paths)
    rows = on["petals"].paths
    tok = backends["petals"].tokenizer
    forced_steps = [{i.position + k for i in p.interventions
                     for k in range(len(tok(f" {i.result}", add_special_tokens=False)["input_ids"]))}
                    for p in rows]
    assert len({frozenset(s) for s in forced_steps}) > 1, forced_steps  # rows forced at different steps
    assert any(i.model_wrong for p in rows for i in p.interventions)
    for row, plain in zip(rows, off.paths):
        assert row.interventions, row.text
        _assert_forced_where_recorded(backends["petals"], row)
        assert all(e.ok is not False for e in find_equations(row.text)), row.text
        if not any(i.model_wrong for i in row.interventions):
            assert row.raw == plain.raw  # the model agreed everywhere: the same tokens, the same draws
        else:
            assert row.raw != plain.raw


def test_sc_through_the_swarm_records_interventions_like_local(arith_swarm, tmp_path):
    cfg = MethodConfig(method="sc", paths=4, temperature=1.0, max_new_tokens=48, calculator=True)
    runs = {}
    for backend in ("petals", "local"):
        client = ClientOptions(backend=backend, model=None if backend == "petals" else str(ARITH_MODEL_DIR),
                               swarm_dir=arith_swarm.run_dir if backend == "petals" else None)
        params = BenchParams(data="arith:test", limit=2, run_dir=str(tmp_path / backend), client=client,
                             method=cfg)
        runs[backend] = run_bench(params)
    keys = ("i", "raw", "answer", "interventions")
    recs = {b: [[{k: p[k] for k in keys} for p in r["paths"]] for r in read_records(res.run_dir)]
            for b, res in runs.items()}
    assert recs["petals"] == recs["local"]
    assert all(p["interventions"] for r in recs["petals"] for p in r)
    calc = runs["petals"].summary.calculator
    assert (calc["questions"] == 2
            and calc["interventions"] == sum(len(p["interventions"]) for r in recs["petals"] for p in r))
    assert json.loads((runs["petals"].run_dir / "config.json").read_text())["method"]["calculator"] is True


# --- the measured effect ---------------------------------------------------------------------------------

HELD_OUT = 200  # the first 200 of arith:test (about 40 s per run, local backend, 2 cores)
MAX_NEW_TOKENS = 48


def _cot(run_dir, calculator: bool, limit: int = HELD_OUT):
    cfg = MethodConfig(method="cot", max_new_tokens=MAX_NEW_TOKENS, calculator=calculator)
    return run_bench(BenchParams(data="arith:test", limit=limit, run_dir=str(run_dir),
                                 client=ClientOptions(backend="local", model=str(ARITH_MODEL_DIR)),
                                 method=cfg, exec=ExecOptions(concurrency=1)))


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    root = tmp_path_factory.mktemp("calc-runs")
    return {calc: _cot(root / ("calculator" if calc else "plain"), calc).run_dir for calc in (False, True)}


def test_calculator_raises_held_out_accuracy(held_out, tmp_path):
    path, (plain, calc), (pair,) = report.compare([held_out[False], held_out[True]], tmp_path / "cmp")
    c = pair.comparison
    assert c.n == HELD_OUT and pair.excluded == 0
    # measured when written (first 200): 149 -> 153 correct; all 400: 296 -> 303 (B only 11, A only 4)
    assert plain.categories["counts"]["arithmetic_slip"] > 0  # the model slips without it...
    assert calc.categories["counts"]["arithmetic_slip"] == 0  # ...and never with it
    assert calc.correct > plain.correct and c.b_only > c.a_only, c
    stats = calc.calculator
    assert plain.calculator is None and stats["questions"] == HELD_OUT
    assert stats["interventions"] >= 2 * HELD_OUT and 2 <= stats["per_question"] <= 3  # one per equation
    assert 0 < stats["model_wrong"] <= stats["model_wrong_known"] == stats["interventions"]
    text = path.read_text()
    assert ("+calculator" in text and "Paired comparisons" in text
            and "the model's own number was wrong" in text)


def test_calculator_run_dir_refuses_a_run_without_it(held_out):
    with pytest.raises(InputError, match="method.calculator"):
        _cot(held_out[True], False)
    with pytest.raises(InputError, match="method.calculator"):
        _cot(held_out[False], True)
    # the same command resumes (nothing left to do)
    assert _cot(held_out[True], True).summary.correct == report.load_summary(held_out[True]).correct


def test_cli_calculator_flags(run_cli, tmp_path):
    run_dir = tmp_path / "run"
    common = ["bench", "gsm8k", "--data", "arith:test", "--limit", "2", "--backend", "local",
              "--model", ARITH_MODEL_DIR, "--max-new-tokens", "48", "--run-dir", run_dir]
    result = run_cli(*common, "--calculator")
    assert result.returncode == 0, result.stderr
    assert "calculator:" in result.stdout and "interventions" in result.stdout
    assert json.loads((run_dir / "config.json").read_text())["method"]["calculator"] is True
    line = assert_one_line_error(run_cli(*common), code=2)
    assert "method.calculator True -> None" in line

    gen = run_cli("generate", "Q: Ben has 21 shells. Ben is given 1 more and then buys 5 more. "
                  "How many shells does Ben have now?\nA:", "--backend", "local", "--model", ARITH_MODEL_DIR,
                  "--max-new-tokens", "20", "--calculator")
    assert gen.returncode == 0, gen.stderr
    assert ("21 + 1 = 22." in gen.stdout and "calculator at token" in gen.stderr
            and "21 + 1 = 22" in gen.stderr)
