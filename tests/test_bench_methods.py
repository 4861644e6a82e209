"""A bench method is one module plus its registration: this file is that module.

``FirstAgreement`` below is a method the rest of the code has never heard of: it samples paths a few at
a time and stops a question as soon as two paths agree (an adaptive sampling policy), answers with that
agreed answer (its aggregation), and reports two figures of its own. Registered here, it runs end to end
through the runner (local backend, the shipped arithmetic model), its records, the typed summary,
report.md, and ``bench report``, which runs in a fresh process where the method is not even registered:
the summary describes its figures itself. Nothing outside this file names it.

The last tests load run dirs written before methods had figures (tests/data/bench-run-v2: summary.json
without a ``figures`` list, records without ``rounds``).
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

from petals_ops.bench import report
from petals_ops.bench.figures import FigureSpec
from petals_ops.bench.methods import Method, MethodConfig, Parameter, register
from petals_ops.bench.records import RunSummary
from petals_ops.bench.runner import BenchParams, ExecOptions, run_bench
from petals_ops.bench.store import read_records
from petals_ops.client.options import ClientOptions
from petals_ops.lab.tiny_model import ARITH_MODEL_DIR
from petals_ops.util.errors import InputError

OLD_RUNS = Path(__file__).parent / "data" / "bench-run-v2"
QUESTIONS = 6
MAX_PATHS = 6
TOKENS = 40


def _first_repeat(answers):
    """The first answer given a second time (in path order), or None."""
    seen = set()
    for a in answers:
        if a is not None and a in seen:
            return a
        seen.add(a)
    return None


# --- the method: one module's worth -------------------------------------------------------------------

class FirstAgreement(Method):
    """Sample ``step`` paths at a time; the question is decided once two paths give the same answer."""

    name = "first-agreement"
    help = "sampled paths, a few at a time, until two agree"
    samples = True
    default_paths = 8
    parameters = (Parameter("step", int, 2, "paths per round"),)
    figures = (
        FigureSpec("paths_used", "paths per question", kind="number", column="paths/q", brief=True,
                   note="mean number of paths decoded per scored question"),
        FigureSpec("agreed", "questions decided by agreement", column="agreed",
                   note="share of scored questions where two paths agreed before the maximum"),
    )

    def validate(self, cfg):
        if cfg.param("step") < 1:
            raise InputError(f"--param step={cfg.param('step')} must be at least 1", fix="use --param step=2")

    def next_paths(self, cfg, paths):
        if _first_repeat([p.answer for p in paths]) is not None:
            return 0
        return cfg.param("step")

    def aggregate(self, paths):
        agreed = _first_repeat([p.answer for p in paths])
        return agreed if agreed is not None else super().aggregate(paths)

    def record_extras(self, paths, vote):
        return {"agreed": _first_repeat([p.answer for p in paths]) is not None}

    def summary_figures(self, records, cfg):
        if not records:
            return {"paths_used": None, "agreed": None}
        return {"paths_used": sum(len(r.paths) for r in records) / len(records),
                "agreed": sum(bool(r.extras["agreed"]) for r in records) / len(records)}


register(FirstAgreement())


# --- the tests ------------------------------------------------------------------------------------------

def _params(run_dir, method: MethodConfig) -> BenchParams:
    return BenchParams(data="arith:test", limit=QUESTIONS, run_dir=str(run_dir), method=method,
                       client=ClientOptions(backend="local", model=str(ARITH_MODEL_DIR)),
                       exec=ExecOptions(concurrency=2))


def _sampling(method: str, **kw) -> MethodConfig:
    return MethodConfig(method=method, paths=MAX_PATHS, temperature=1.0, max_new_tokens=TOKENS, **kw)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The new method (step 2) and SC with the same sampling and K, over the same questions."""
    root = tmp_path_factory.mktemp("methods")
    adaptive = run_bench(_params(root / "first-agreement",
                                 _sampling("first-agreement", params=(("step", 2),))))
    sc = run_bench(_params(root / "sc", _sampling("sc")))
    return adaptive, sc


def test_the_sampling_policy_decides_how_many_paths_each_question_gets(runs):
    adaptive, sc = runs
    records, sc_records = read_records(adaptive.run_dir), {r["id"]: r for r in read_records(sc.run_dir)}
    assert len(records) == QUESTIONS and all(r["error"] is None for r in records)
    for r in records:
        full = sc_records[r["id"]]
        answers = [p["answer"] for p in r["paths"]]
        # rounds of `step` paths, never past the maximum, stopped at the first round with an agreement
        assert r["rounds"] == [2] * (len(answers) // 2) and sum(r["rounds"]) == len(answers) <= MAX_PATHS
        before_last = answers[:-2]
        assert _first_repeat(before_last) is None
        assert r["agreed"] == (_first_repeat(answers) is not None)
        assert r["agreed"] or len(answers) == MAX_PATHS
        # path i is sampled with its own seed: up to its stop, the same path SC decoded as its path i
        # (``raw`` runs on until its whole batch stops, so it depends on the batch)
        assert [p["i"] for p in r["paths"]] == list(range(len(answers)))
        assert [p["text"] for p in r["paths"]] == [p["text"] for p in full["paths"][:len(answers)]]
        # its aggregation: the agreed answer
        assert r["vote"] == (_first_repeat(answers) if r["agreed"] else r["vote"])
    used = Counter(len(r["paths"]) for r in records)
    assert set(used) != {MAX_PATHS}, used  # some question was decided early (the model often agrees)


def test_the_summary_is_typed_and_carries_the_methods_figures(runs):
    adaptive, _ = runs
    s = adaptive.summary
    assert isinstance(s, RunSummary) and s.method == "first-agreement" and s.scored == QUESTIONS
    records = read_records(adaptive.run_dir)
    assert s.figure("paths_used") == pytest.approx(sum(len(r["paths"]) for r in records) / QUESTIONS)
    assert s.figure("agreed") == sum(r["agreed"] for r in records) / QUESTIONS
    assert s.config["method"]["params"] == {"step": 2}  # the method's settings are part of the run's identity
    on_disk = json.loads((adaptive.run_dir / "summary.json").read_text())
    assert on_disk["paths_used"] == s.figure("paths_used")
    assert [f["key"] for f in on_disk["figures"]] == ["paths_used", "agreed"]
    assert report.load_summary(adaptive.run_dir) == s  # what is read back is what was written
    assert "paths per question" in report.brief(s)


def test_report_md_and_the_terminal_table_render_the_figures(runs):
    adaptive, sc = runs
    text = (adaptive.run_dir / "report.md").read_text()
    paths_used = f"{adaptive.summary.figure('paths_used'):.2f}"
    assert f"- paths per question: {paths_used}" in text
    assert "questions decided by agreement: share of scored questions where two paths agreed" in text
    both = [adaptive.summary, sc.summary]
    headers, rows = report.headers(both), report.table_rows(both)
    assert {"paths/q", "agreed", "maj@1", "maj@K"} <= set(headers)
    assert all(len(r) == len(headers) for r in rows)
    assert rows[0][headers.index("paths/q")] == paths_used and rows[1][headers.index("paths/q")] == ""
    assert rows[1][headers.index("maj@K")] != "" and rows[0][headers.index("maj@K")] == ""


def test_bench_report_in_a_process_that_never_registered_the_method(runs, run_cli, tmp_path):
    adaptive, sc = runs
    out = run_cli("bench", "report", sc.run_dir, adaptive.run_dir, "--out", tmp_path / "r", "-o", "json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    mine = data["runs"][1]
    assert mine["method"] == "first-agreement"
    assert mine["paths_used"] == pytest.approx(adaptive.summary.figure("paths_used"))
    assert data["runs"][0]["maj_at_k"] == sc.summary.figure("maj_at_k")
    (pair,) = data["pairs"]
    assert pair["n"] == QUESTIONS
    table = run_cli("bench", "report", sc.run_dir, adaptive.run_dir, "--out", tmp_path / "r2")
    assert table.returncode == 0, table.stderr
    assert "paths/q" in table.stdout and "first-agreement" in table.stdout
    assert "paths per question" in (tmp_path / "r2" / "report.md").read_text()


def test_the_cli_runs_a_registered_method_with_its_settings(tmp_path):
    """In this process the method is registered: ``bench gsm8k --method first-agreement --param step=3``."""
    from click.testing import CliRunner

    from petals_ops.cli.main import cli

    run_dir = tmp_path / "cli"
    args = ["bench", "gsm8k", "--data", "arith:test", "--limit", "2", "--backend", "local", "--model",
            str(ARITH_MODEL_DIR), "--method", "first-agreement", "--paths", "6", "--param", "step=3",
            "--max-new-tokens", str(TOKENS), "--run-dir", str(run_dir)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "paths per question" in result.output
    assert all(set(r["rounds"]) == {3} for r in read_records(run_dir))
    for bad, needle in ((["--param", "step=x"], "is not a int"), (["--param", "window=2"], "not a setting"),
                        (["--param", "step=0"], "must be at least 1")):
        result = CliRunner().invoke(cli, [*args[:-2], "--run-dir", str(tmp_path / "bad"), *bad])
        assert result.exit_code == 2 and needle in result.output, result.output


# --- run dirs written before methods described their figures ------------------------------------------

def test_old_run_dirs_load_typed_and_report(run_cli, tmp_path):
    for name in ("sc", "cot"):
        shutil.copytree(OLD_RUNS / name, tmp_path / name)
    sc, records = report.load_run(tmp_path / "sc")
    assert "figures" not in json.loads((tmp_path / "sc" / "summary.json").read_text())
    # its figures, described by the registered method of that name
    assert [f.key for f in sc.figures] == ["maj_at_k", "pass_at_k", "agreement"]
    assert list(sc.figure("maj_at_k")) == ["1", "2", "3"] and sc.run_dir == str(tmp_path / "sc")
    assert records and all(r.rounds == [] and len(r.paths) == 3 for r in records)
    cot, _ = report.load_run(tmp_path / "cot")
    assert cot.figures == () and cot.method == "cot"
    result = run_cli("bench", "report", tmp_path / "cot", tmp_path / "sc", "--out", tmp_path / "r")
    assert result.returncode == 0, result.stderr
    assert "maj@1" in result.stdout and "maj@K" in result.stdout
    text = (tmp_path / "r" / "report.md").read_text()
    assert "- maj@k: maj@1" in text and "- agreement with the vote:" in text


@pytest.mark.parametrize("figures, value, needle", [
    ("x", None, "figures is not a list"),
    ([{"key": "paths_used"}], 1.0, "needs a key and a label"),
    ([{"key": "paths_used", "label": "p", "kind": "pie"}], 1.0, "kind 'pie'"),
    ([{"key": "paths_used", "label": "p", "brief": "yes"}], 1.0, "wrong type"),
    ([{"key": "paths_used", "label": "p", "kind": "curve"}], {"k": 1}, "paths_used is not a mapping"),
    ([{"key": "paths_used", "label": "p"}], "many", "paths_used is not a number"),
])
def test_a_summary_with_bad_figures_is_a_one_line_error(run_cli, tmp_path, figures, value, needle):
    from tests.helpers import assert_one_line_error

    shutil.copytree(OLD_RUNS / "cot", tmp_path / "cot")
    path = tmp_path / "cot" / "summary.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "figures": figures, "paths_used": value}))
    assert_one_line_error(run_cli("bench", "report", tmp_path / "cot", "--out", tmp_path / "r"),
                          "not a bench summary", needle, code=2)
