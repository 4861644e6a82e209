"""Property-based tests (issue 12, "beyond these cases"): for any input, our parsers return a valid result
or raise our one-line InputError, never another exception. Derandomised and small (CI has 2 cores)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from petals_ops.util.errors import InputError

FAST = settings(max_examples=60, deadline=5000, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# numbers and number-like text: long digit runs, exponents, separators, other scripts' digits
NUMBERISH = st.lists(st.sampled_from(list("0123456789-+.,$ eE_") + ["0" * 30, "inf", "nan", "٣", "１", "\n"]),
                     max_size=40).map("".join)
TEXT = st.one_of(NUMBERISH, st.text(max_size=200),
                 st.builds(lambda a, n, b: f"{a} The answer is {n}. {b}", st.text(max_size=40), NUMBERISH,
                           st.text(max_size=40)))
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                    lambda kids: (st.lists(kids, max_size=4)
                                  | st.dictionaries(st.text(max_size=10), kids, max_size=4)),
                    max_leaves=20)


_ROOT: list[str] = []


@pytest.fixture(scope="module", autouse=True)
def _scratch():
    """One scratch dir for the module's examples (hypothesis runs many per test), removed at the end."""
    import shutil

    _ROOT.append(tempfile.mkdtemp(prefix="petals-ops-prop-"))
    yield
    shutil.rmtree(_ROOT.pop(), ignore_errors=True)


def _file(data: bytes, name: str) -> Path:
    path = Path(tempfile.mkdtemp(dir=_ROOT[-1])) / name
    path.write_bytes(data)
    return path


# --- the number normaliser and the scorer ---------------------------------------------------------------
@FAST
@given(TEXT)
def test_normalize_number_never_raises(raw):
    from petals_ops.bench.extraction import normalize_number

    value = normalize_number(raw)
    assert value is None or normalize_number(value) == value  # normalised values are fixed points


@FAST
@given(TEXT, TEXT)
def test_scoring_a_path_never_raises(text, gold_text):
    from petals_ops.client.decoding import PathOutput
    from petals_ops.bench.extraction import extract_answer, parse_gold
    from petals_ops.bench.runner import score_path

    answer, how = extract_answer(text)
    assert how in ("answer_is", "last_number", "none") and (answer is None) == (how == "none")
    try:
        gold = parse_gold(f"rationale\n#### {gold_text}")
    except ValueError:
        gold = "4"
    scored = score_path(PathOutput(index=0, raw=text, text=text, tokens=1, finish="stop"), gold)
    assert scored.correct == (scored.answer is not None and scored.answer == gold)


# --- data and prompt loaders ---------------------------------------------------------------------------
GSM_LINE = st.builds(lambda q, a: json.dumps({"question": q, "answer": a}), st.text(max_size=30), TEXT)


@FAST
@given(st.lists(st.one_of(GSM_LINE, st.text(max_size=40), JSON.map(json.dumps)), max_size=5),
       st.binary(max_size=20))
def test_data_loader_gives_problems_or_input_error(lines, tail):
    from petals_ops.bench.data import load_jsonl

    path = _file("\n".join(lines).encode("utf-8", "surrogatepass") + tail, "data.jsonl")
    try:
        dataset = load_jsonl(path)
    except InputError:
        return
    assert dataset.problems and all(isinstance(p.gold, str) for p in dataset.problems)


@FAST
@given(st.lists(st.one_of(st.just("Q: 1+1?\nA: 1+1=2. The answer is 2."), st.just("BEGIN"), st.just("END"),
                          st.text(max_size=60)), max_size=6), st.binary(max_size=10))
def test_prompt_loader_gives_prompts_or_input_error(blocks, tail):
    from petals_ops.bench.prompts import load_prompt_file

    path = _file("\n\n".join(blocks).encode("utf-8", "surrogatepass") + tail, "prompt.txt")
    try:
        prompt = load_prompt_file(path)
    except InputError:
        return
    assert isinstance(prompt.render("2+2?"), str)


# --- the inventory loader ------------------------------------------------------------------------------
YAMLISH = st.lists(st.sampled_from(list("abhost:-[]{},&*!|>'\"#\n 0123456789")
                                   + ["  ", "server", "hosts", "gpus", "<<", "&a", "*a"]),
                   max_size=60).map("".join)
INVENTORY = st.fixed_dictionaries({}, optional={
    "server": st.dictionaries(st.sampled_from(["port", "device", "block_indices", "environment", "extra_args",
                                               "public_name", "hf_token", "num_blocks", "unknown"]),
                              JSON, max_size=3),
    "hosts": st.dictionaries(st.text(max_size=8), st.one_of(JSON, st.fixed_dictionaries(
        {}, optional={"gpus": JSON, "port": JSON, "server": JSON})), max_size=3),
    "ssh_config": JSON})


@FAST
@given(st.one_of(YAMLISH, INVENTORY.map(json.dumps)))
def test_inventory_loader_gives_inventory_or_input_error(text):
    from petals_ops.fleet.inventory import load_inventory

    path = _file(text.encode("utf-8", "surrogatepass"), "inv.yaml")
    try:
        inv = load_inventory(path)
    except InputError as e:
        assert "\n" not in e.one_line()
        return
    for name in inv.hosts:
        inv.server_for(name)


# --- the run-store readers -----------------------------------------------------------------------------
@FAST
@given(st.lists(st.one_of(st.binary(max_size=30), JSON.map(lambda v: json.dumps(v).encode())), max_size=6))
def test_record_readers_skip_what_they_cannot_read(lines):
    from petals_ops.bench.report import load_records
    from petals_ops.bench.store import latest_by_id, read_records

    run = _file(b"\n".join(lines) + b"\n", "records.jsonl").parent
    records = read_records(run)
    assert all(isinstance(r, dict) and isinstance(r["id"], str) for r in records)
    latest_by_id(records)
    assert all(r.id for r in load_records(run)) or True


@FAST
@given(st.one_of(JSON, st.dictionaries(st.sampled_from(["run_dir", "method", "n", "scored", "config", "paths",
                                                        "accuracy", "accuracy_wilson95", "maj_at_k",
                                                        "categories"]),
                                       JSON, max_size=10)))
def test_summary_loader_gives_a_summary_or_input_error(data):
    from petals_ops.bench.report import load_summary

    run = _file(json.dumps(data).encode(), "summary.json").parent
    try:
        summary = load_summary(run)
    except InputError:
        return
    assert isinstance(summary.run_dir, str)


@pytest.mark.parametrize("data", [b"\xff\xfe", b"[" * 50_000, b"1e999", b"NaN"])
def test_summary_loader_on_odd_bytes(data):
    from petals_ops.bench.report import load_summary

    run = _file(data, "summary.json").parent
    with pytest.raises(InputError):
        load_summary(run)
