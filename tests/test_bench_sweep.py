"""Prompt templates, the in-completion vote, ``bench sweep`` and its report.

Pure units first (template rendering and ids, the vote on hand-written completions, spec errors, the
report's statistics against values computed by hand); then one sweep through the arithmetic swarm, killed
mid-way and resumed, whose records equal the same configurations run one by one. The one-by-one runs use
the local backend: tests/test_bench_validity.py and test_bench_swarm.py establish that the swarm and the
local backend give identical records (same paths, texts, answers).
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from fractions import Fraction
from itertools import product
from pathlib import Path

import pytest
from click.testing import CliRunner

from petals_ops.bench import sweep as sweeps
from petals_ops.bench import sweep_report
from petals_ops.bench.data import default_prompt_for
from petals_ops.bench.methods.multi_answer import MultiAnswer, completion_answers
from petals_ops.bench.paired import mcnemar_exact
from petals_ops.bench.prompts import PACKAGE_DATA, Template, load_prompt_file
from petals_ops.bench.records import ScoredPath
from petals_ops.bench.store import read_records
from petals_ops.util.errors import InputError

MULTI_PROMPT = PACKAGE_DATA / "arith" / "prompt_multi.txt"


# --- templates -------------------------------------------------------------------------------------------

def test_template_renders_instructions_shots_and_order_and_the_id_follows_each():
    base = load_prompt_file(default_prompt_for("gsm8k:test"))  # 8 exemplars
    assert Template().apply(base) is base  # plain: the file as it is, its id as before templates
    blocks = base.prefix.split("\n\n")

    first3 = Template(shots=3).apply(base)
    assert first3.prefix == "\n\n".join(blocks[:3]) and first3.exemplars == 3
    chosen = Template(shots=3, shots_seed=5).apply(base)
    picked = chosen.prefix.split("\n\n")
    assert len(picked) == 3 and picked != blocks[:3]
    assert [blocks.index(b) for b in picked] == sorted(blocks.index(b) for b in picked)  # kept in file order
    assert Template(shots=3, shots_seed=5).apply(base).prefix == chosen.prefix  # seeded: reproducible
    ordered = Template(order=1).apply(base).prefix.split("\n\n")
    assert sorted(ordered) == sorted(blocks) and ordered != blocks
    # a subset in a seeded order keeps the relative order of the whole permutation
    sub = Template(shots=3, shots_seed=5, order=1).apply(base).prefix.split("\n\n")
    assert sub == [b for b in ordered if b in picked]

    instr = Template(shots=1, instruction="Use mathematical operations:",
                     answer_instruction="Here is the solution explanation:").apply(base)
    q, a = blocks[0].split("\nA: ", 1)
    assert instr.prefix == f"Use mathematical operations:\n{q}\nHere is the solution explanation:\nA: {a}"
    assert instr.render("How many?") == (f"{instr.prefix}\n\nUse mathematical operations:\nQ: How many?\n"
                                         "Here is the solution explanation:\nA:")
    assert Template(shots=0, instruction="Go:").apply(base).render("x?") == "Go:\nQ: x?\nA:"

    variants = [base, first3, chosen, Template(order=1).apply(base), Template(order=2).apply(base), instr,
                Template(shots=1, instruction="Use mathematical operations:").apply(base),
                Template(shots=1, instruction="Other words:").apply(base)]
    ids = [v.prompt_id for v in variants]
    assert len(set(ids)) == len(ids) and len({v.sha256 for v in variants}) == len(variants)
    stem = base.prompt_id
    assert all(i.startswith(stem) for i in ids)  # the file's part of the id stays; the template's is added
    assert first3.prompt_id == f"{stem}+shots3" and chosen.prompt_id == f"{stem}+shots3@5"

    with pytest.raises(InputError, match="--shots 9 is more than the 8 exemplars"):
        Template(shots=9).apply(base)
    with pytest.raises(InputError, match="blank line"):
        Template(instruction="two\n\nparagraphs").apply(base)


def test_prompt_file_with_several_answers_per_exemplar(tmp_path):
    multi = load_prompt_file(MULTI_PROMPT)
    assert multi.exemplars == 2 and multi.prefix.count("\nA: ") == 6
    bad = tmp_path / "bad.txt"
    bad.write_text("Q: Two?\nA: 1 + 1 = 2.\nA: 2 - 0 = 2. The answer is 2.\n")
    with pytest.raises(InputError, match="exemplar 1, answer 1 of 2 does not end with 'The answer is N.'"):
        load_prompt_file(bad)


# --- the in-completion vote ---------------------------------------------------------------------------------

def _path(i: int, text: str, gold: str = "24") -> ScoredPath:
    from petals_ops.bench.extraction import answers_equal, extract_answer

    answer, how = extract_answer(text)
    return ScoredPath(i=i, answer=answer, how=how, correct=answers_equal(answer, gold), finish="stop",
                      tokens=10, text=text, raw=text)


def test_the_vote_over_the_answers_inside_one_completion_and_over_k():
    method = MultiAnswer()
    one = " 22 + 3 = 25. 25 - 1 = 23. The answer is 23.\nA: 3 + 22 = 25. 25 - 1 = 24. The answer is 24." \
          "\nA: 22 - 1 = 21. 21 + 3 = 24. The answer is 24.\nA:"
    assert completion_answers(one) == ["23", "24", "24"]  # the trailing empty 'A:' is no answer
    p0 = _path(0, one)
    assert p0.answer == "23" and not p0.correct  # the path's own answer: its first, what CoT reads
    assert method.aggregate([p0]) == "24"  # the vote inside the completion overturns it
    extras = method.record_extras([p0], "24")
    assert extras == {"answers": [["23", "24", "24"]], "inline_agreement": pytest.approx(2 / 3)}
    # no 'The answer is': the last number of each part; a part with no number does not vote
    text = " 5 + 5 = 10\nA: no idea\nA: 2 + 9 = 11. The answer is 11."
    assert completion_answers(text) == ["10", None, "11"]
    # K completions: one vote over all their answers (a tie goes to the answer seen first)
    p1 = _path(1, " The answer is 23.\nA: The answer is 23.")
    p2 = _path(2, " The answer is 7.")
    assert method.aggregate([p0, p1]) == "23"  # 23 x3, 24 x2
    assert method.aggregate([p2, p0]) == "24"  # 7 x1, 23 x1, 24 x2
    assert method.aggregate([_path(0, " The answer is 5.\nA: The answer is 6.")]) == "5"
    # greedy with one completion, sampled with several
    from petals_ops.bench.methods import MethodConfig

    assert not MethodConfig(method="multi-answer", paths=1).sample
    assert MethodConfig(method="multi-answer", paths=3).sample
    assert "temperature" in json.dumps(MethodConfig(method="multi-answer", paths=3).to_dict())
    assert MethodConfig(method="multi-answer", paths=1).to_dict()["temperature"] is None


# --- specs ------------------------------------------------------------------------------------------------

GOOD = {"data": "arith:test", "limit": 4, "methods": {"cot": {}, "sc": {"paths": 4}},
        "seeds": [0, 1], "shots": [1, 2], "orders": ["file", 3], "temperatures": [0.5, 0.7]}


def test_the_grid_shares_runs_that_cannot_differ():
    plan = sweeps.plan_sweep(sweeps.parse_spec(GOOD))
    assert len(plan.cells) == 2 * 2 * 2 * 2 * 2  # seeds x orders x methods x shots x temperatures
    # cot: seeds and temperatures change nothing; one exemplar has no order -> 1 + 2 runs;
    # sc: temperatures x seeds x (shots 1: one order, shots 2: two) -> 2 * 2 * 3 runs
    assert len(plan.runs) == 3 + 12
    assert list(plan.configs) == ["default/cot/shots=1", "default/cot/shots=2", "default/sc/shots=1/T=0.5",
                                  "default/sc/shots=1/T=0.7", "default/sc/shots=2/T=0.5",
                                  "default/sc/shots=2/T=0.7"]
    # the first replicate (seed 0, file order) of every configuration runs first
    first = [r.name for r in plan.runs[:6]]
    assert all("orderfile" in n and "seed1" not in n for n in first)
    names = {c.run for c in plan.configs["default/cot/shots=2"]}
    assert len(names) == 2  # the two orders; both seeds and temperatures share them


def test_the_specs_in_the_docs_parse():
    docs = Path(__file__).parent.parent / "docs" / "sweeps"
    arith = sweeps.plan_sweep(sweeps.load_spec(docs / "arith-grid.yaml", {}))
    assert (len(arith.cells), len(arith.runs)) == (72, 36)  # as docs/bench.md says
    bloom = sweeps.plan_sweep(sweeps.load_spec(docs / "gsm8k-bloom.yaml", {}))
    assert (len(bloom.cells), len(bloom.runs)) == (72, 48)


@pytest.mark.parametrize("change, needle", [
    ({"seed": [1]}, "sweep spec: seed is not a sweep spec key; use data, offset"),
    ({"methods": None}, "sweep spec: methods is None; write methods:"),
    ({"methods": {"cot": {"paths": 3}}}, "methods.cot is refused: --paths 3 needs --method sc"),
    ({"methods": {"sc": {"pathz": 3}}}, "methods.sc.pathz is not a method setting"),
    ({"methods": {"x": {"method": "nope"}}}, "methods.x.method 'nope' is not a method; use one of: cot"),
    ({"methods": {"bad label": {}}}, "has the label 'bad label'"),
    ({"shots": [-1]}, "shots is -1, not a whole number >= 0"),
    ({"shots": [2, 2]}, "shots repeats a value"),
    ({"orders": ["random"]}, "orders is 'random', not a whole number"),
    ({"temperatures": [0]}, "temperatures has 0, not a number > 0"),
    ({"shot_choice": "random"}, "shot_choice is 'random'; write shot_choice: first"),
    ({"prompts": {"p": {"instructions": "x"}}}, "prompts.p.instructions is not a prompt setting"),
    ({"prompts": {"p": {"instruction": "a\n\nb"}}}, "prompts.p is refused: --instruction"),
    ({"baseline": "default/cot"}, "baseline 'default/cot' is not a configuration of this grid; use one of"),
])
def test_a_bad_spec_is_one_line_naming_the_key_and_the_fix(change, needle):
    with pytest.raises(InputError) as e:
        sweeps.parse_spec({**GOOD, **change})
    assert needle in e.value.one_line() and "\n" not in e.value.one_line()
    assert e.value.fix


def test_bad_spec_file_through_the_cli_is_one_line_exit_2(tmp_path):
    from petals_ops.cli.main import cli

    spec = tmp_path / "grid.yaml"
    spec.write_text("methods: {cot: {}}\nseeds: [0, x]\n")
    result = CliRunner().invoke(cli, ["bench", "sweep", str(spec), "--sweep-dir", str(tmp_path / "s")])
    assert result.exit_code == 2, result.output
    (line,) = [ln for ln in result.output.splitlines() if ln.strip()]
    assert "seeds is 'x', not a whole number" in line and "write seeds:" in line
    result = CliRunner().invoke(cli, ["bench", "sweep", str(spec), "--seeds", "0", "--methods", "sc@z"])
    assert result.exit_code == 2 and "'z' is not a number of paths" in result.output
    laughs = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi"))
    spec.write_text(laughs)  # a YAML alias bomb: refused before it is built
    result = CliRunner().invoke(cli, ["bench", "sweep", str(spec)])
    assert result.exit_code == 2 and "expands to more than" in result.output
    spec.write_text("methods: [cot\n")
    result = CliRunner().invoke(cli, ["bench", "sweep", str(spec)])
    assert result.exit_code == 2 and "is not YAML" in result.output
    assert not (tmp_path / "s").exists()  # a refused spec touches nothing


def test_dry_run_prints_the_plan_and_an_upper_bound_of_its_steps():
    from petals_ops.cli.main import cli

    result = CliRunner().invoke(cli, ["bench", "sweep", "--data", "gsm8k:test", "--methods", "cot,sc@10",
                                      "--seeds", "0,1", "--batch-size", "3", "--concurrency", "2",
                                      "--dry-run", "--gpus", "5", "--gpu-hour-price", "1.5", "-o", "json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert plan["configs"] == ["default/cot/shots=all", "default/sc10/shots=all/T=0.7"]
    assert plan["cells"] == 4 and plan["runs"] == len(plan["run_names"]) == 3  # cot: one run, both seeds
    # cot: 1 session per question; sc K=10 in sessions of 3: 4 per question, two seeds
    assert plan["questions"] == 1319 and plan["sessions"] == 1319 * (1 + 2 * 4)
    assert plan["steps"] == plan["sessions"] * 256
    assert plan["days_at_most"] == pytest.approx(plan["steps"] / 0.83 / 2 / 86400)
    assert plan["gpu_hours_at_most"] == pytest.approx(5 * plan["steps"] / 0.83 / 2 / 3600)
    assert plan["cost_at_most"] == pytest.approx(1.5 * plan["gpu_hours_at_most"])


# --- the report's statistics, by hand ---------------------------------------------------------------------

def test_report_spread_ci_and_holm_corrected_paired_tests_by_hand():
    q = [f"q{i}" for i in range(6)]

    def run(*right):
        return {qid: qid in {q[i] for i in right} for qid in q}

    base = [run(0, 1, 2), run(0, 1, 3)]  # accuracies 3/6, 3/6
    better = [run(0, 1, 2, 3, 4), run(0, 1, 2, 3, 5)]  # 5/6, 5/6
    worse = [run(0), run(0, 1), run(0, 1, 2)]  # 1/6, 2/6, 3/6
    s = sweep_report.config_stats("worse", worse)
    assert s.runs == 3 and s.n == 6 and s.accuracies == (1 / 6, 2 / 6, 3 / 6)
    assert s.mean == pytest.approx(1 / 3) and s.sd == pytest.approx(1 / 6)  # SD of 1/6, 2/6, 3/6
    # per-question accuracy over the 3 runs: 1, 2/3, 1/3, 0, 0, 0 -> mean 1/3, sd sqrt(0.16296...)
    per_q = [1, 2 / 3, 1 / 3, 0, 0, 0]
    sd = math.sqrt(sum((x - 1 / 3) ** 2 for x in per_q) / 5)
    t975_5 = 2.570581835636314  # t quantile, 5 degrees of freedom
    low, high = 1 / 3 - t975_5 * sd / math.sqrt(6), 1 / 3 + t975_5 * sd / math.sqrt(6)
    assert low < 0 and s.ci95 == pytest.approx((0, high))  # clipped to [0, 1]
    assert sweep_report.config_stats("one", [run(0, 1, 2, 3, 4)]).ci95[1] == 1.0  # clipped to [0, 1]
    one = sweep_report.config_stats("one", [run(0, 1)])
    assert one.sd is None and one.mean == pytest.approx(2 / 6)

    comps = sweep_report.compare_all({"base": base, "better": better, "worse": worse}, "base")
    by = {c.label: c for c in comps}
    # better - base per question: q0..q1 0, q2 1 - 1/2, q3 1 - 1/2, q4 1/2, q5 1/2 -> four of +1/2
    assert by["better"].diff == pytest.approx(2 / 6) and by["better"].n == 6
    # exact sign-flip: the 2^4 sign patterns of four +-1/2, |sum| >= 2 only for all + or all -: 2/16
    assert by["better"].p == pytest.approx(2 / 16)
    # worse - base: q0 0, q1 2/3 - 1, q2 1/3 - 1/2, q3 0 - 1/2, q4 0, q5 0 -> -1/3, -1/6, -1/2
    d = [Fraction(-1, 3), Fraction(-1, 6), Fraction(-1, 2)]
    brute = sum(abs(sum(s * x for s, x in zip(signs, d))) >= 1
                for signs in product((1, -1), repeat=3)) / 8
    assert by["worse"].p == pytest.approx(brute) == pytest.approx(2 / 8)
    assert by["worse"].diff == pytest.approx(-1 / 6)
    # Holm over 2: the smaller (1/8) x 2 = 1/4, the larger max(1/4, 1/4 x 1) = 1/4
    assert by["better"].p_holm == pytest.approx(0.25) and by["worse"].p_holm == pytest.approx(0.25)
    assert sweep_report.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # one run each: the sign-flip test is the exact McNemar test
    assert sweep_report.sign_flip_p([1] * 36 + [-1] * 13) == pytest.approx(mcnemar_exact(36, 13))
    assert sweep_report.sign_flip_p([1, -1]) == 1.0 and sweep_report.sign_flip_p([0, 0]) == 1.0


# --- a sweep through the swarm, killed and resumed ------------------------------------------------------

QUESTIONS = 2
SPEC = f"""
data: arith:test
limit: {QUESTIONS}
max_new_tokens: 32
shots: [2]
orders: [file, 1]
prompts:
  multi:
    file: {MULTI_PROMPT}
    answer_instruction: "Worked answers:"
methods:
  cot: {{}}
  vote: {{method: multi-answer, paths: 2}}
temperatures: [0.5]
"""


def _sweep_cmd(spec: Path, sweep_dir: Path) -> list[str]:
    return [sys.executable, "-m", "petals_ops.cli.main", "bench", "sweep", str(spec), "--sweep-dir",
            str(sweep_dir), "--timeout", "120"]


@pytest.mark.swarm
def test_sweep_through_the_swarm_killed_resumed_equals_runs_one_by_one(arith_swarm, run_cli, tmp_path):
    from petals_ops.bench.runner import BenchParams, run_bench
    from petals_ops.client.options import ClientOptions
    from petals_ops.lab.tiny_model import ARITH_MODEL_DIR
    from tests.conftest import cli_env

    spec_path, sweep_dir = tmp_path / "grid.yaml", tmp_path / "sweep"
    spec_path.write_text(SPEC)
    plan = sweeps.plan_sweep(sweeps.load_spec(spec_path, {}))
    assert len(plan.configs) == 2 and len(plan.runs) == 4
    env = cli_env(PETALS_OPS_SWARM_DIR=arith_swarm.run_dir)
    proc = subprocess.Popen(_sweep_cmd(spec_path, sweep_dir), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    second = sweep_dir / sweeps.RUNS_DIR / plan.runs[1].name
    deadline = time.monotonic() + 240
    while not read_records(second):  # killed inside the second run
        if proc.poll() is not None:
            pytest.fail(f"the sweep ended before it was killed ({proc.returncode}): "
                        f"{proc.stderr.read()[-2000:]}")
        assert time.monotonic() < deadline, "no record in the second run in time"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stdout.close(), proc.stderr.close()
    assert not (sweep_dir / sweeps.RUNS_DIR / plan.runs[3].name / "records.jsonl").exists()

    resumed = run_cli("bench", "sweep", spec_path, "--sweep-dir", sweep_dir, "--timeout", "120", env=env,
                      timeout=400)
    assert resumed.returncode == 0, resumed.stderr
    assert "[run 4/4]" in resumed.stderr
    # the first run is only read, the second resumes after its record(s), the last two start
    assert f"{QUESTIONS} of {QUESTIONS} questions already done; 0 to run" in resumed.stderr
    assert f"0 of {QUESTIONS} questions already done; {QUESTIONS} to run" in resumed.stderr
    for run in plan.runs:  # every question once, through the swarm
        records = read_records(sweep_dir / sweeps.RUNS_DIR / run.name)
        assert sorted(r["id"] for r in records) == [f"arith-test:{i}" for i in range(1, QUESTIONS + 1)]
        assert all(r["error"] is None and r["backend"] == "petals" for r in records)

    # the same configurations run one by one (local backend: identical records to the swarm's)
    keys = ("i", "raw", "text", "answer", "correct", "category", "finish")
    for run in plan.runs:
        alone = run_bench(BenchParams(data="arith:test", limit=QUESTIONS, prompt_file=run.prompt.file,
                                      template=run.template, method=run.method,
                                      run_dir=str(tmp_path / run.name),
                                      client=ClientOptions(backend="local", model=str(ARITH_MODEL_DIR))))
        mine = sorted(read_records(sweep_dir / sweeps.RUNS_DIR / run.name), key=lambda r: r["id"])
        theirs = sorted(read_records(alone.run_dir), key=lambda r: r["id"])
        assert [[{k: p[k] for k in keys} for p in r["paths"]] for r in mine] == \
               [[{k: p[k] for k in keys} for p in r["paths"]] for r in theirs]
        assert [(r["vote"], r["prompt_id"], r.get("answers")) for r in mine] == \
               [(r["vote"], r["prompt_id"], r.get("answers")) for r in theirs]
        config = json.loads((sweep_dir / sweeps.RUNS_DIR / run.name / "config.json").read_text())
        assert config["prompt"]["template"]["answer_instruction"] == "Worked answers:"
        assert "+instr@" in config["prompt"]["id"] and config["prompt"]["exemplars"] == 2

    from petals_ops.cli.main import cli

    report = CliRunner().invoke(cli, ["bench", "sweep", "report", str(sweep_dir), "-o", "json"])
    assert report.exit_code == 0, report.output
    data = json.loads(report.output)
    assert [c["label"] for c in data["configs"]] == list(plan.configs)
    assert all(c["runs"] == 2 and c["n"] == QUESTIONS for c in data["configs"])
    (comp,) = data["comparisons"]
    assert comp["baseline"] == "multi/cot/shots=2" and data["correction"] == "holm" and 0 < comp["p"] <= 1
    assert (sweep_dir / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    assert "Holm" in (sweep_dir / "report.md").read_text()
