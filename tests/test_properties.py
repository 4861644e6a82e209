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
    typed = [r.id for r in load_records(run)]  # the latest typed record of each question, once
    assert len(typed) == len(set(typed)) and set(typed) <= {r["id"] for r in records}
    assert all(isinstance(rid, str) for rid in typed)


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


# --- what remote peers announce, the swarm's state, model files, option values (issue 23) -------------
ANNOUNCED = st.one_of(st.text(max_size=60), st.sampled_from(
    ["\x1b[2J", "\x1b]8;;http://e/\x1b\\x\x1b]8;;\x1b\\", "[link=http://e]x[/link]", "[bold]x", ":smile:",
     "\u202e", "\x9b31m", "\r", "x" * 500]))
SERVER_FIELDS = st.fixed_dictionaries({}, optional={
    "start_block": JSON, "end_block": JSON, "throughput": JSON, "cache_tokens_left": JSON,
    "version": st.one_of(ANNOUNCED, JSON), "torch_dtype": JSON, "quant_type": JSON,
    "public_name": st.one_of(ANNOUNCED, JSON), "using_relay": JSON, "inference_rps": JSON,
    "forward_rps": JSON, "network_rps": JSON})


@FAST
@given(st.lists(st.tuples(st.sampled_from(["QmA", "QmB", "QmC"]), st.sampled_from(["ONLINE", "JOINING", "x"]),
                          SERVER_FIELDS), max_size=6), st.integers(1, 6))
def test_any_announced_server_records_give_a_sane_snapshot(entries, num_blocks):
    from types import SimpleNamespace as NS

    from petals_ops.client.models import ModelRef
    from petals_ops.swarm.health import MAX_ANNOUNCED_CHARS, build_snapshot

    keys = ("start_block", "end_block", "throughput", "cache_tokens_left", "version", "torch_dtype",
            "quant_type", "public_name", "using_relay", "inference_rps", "forward_rps", "network_rps")
    blocks = [NS(uid=f"m.{i}", servers={}) for i in range(num_blocks)]
    for i, (peer, state, fields) in enumerate(entries):
        blocks[i % num_blocks].servers[peer] = NS(state=NS(name=state), **{k: fields.get(k) for k in keys})
    snap = build_snapshot(ModelRef("m", "m", num_blocks), blocks, taken_at=0.0, walk_seconds=0.0)
    for s in snap.servers:
        assert 0 <= s.start_block < s.end_block <= num_blocks and s.state in ("ONLINE", "JOINING", "OFFLINE")
        assert s.public_name is None or len(s.public_name) <= MAX_ANNOUNCED_CHARS
    assert json.dumps(snap.to_dict(), default=str)


@FAST
@given(st.one_of(JSON, st.integers(), st.floats(), st.text(max_size=10)))
def test_a_block_count_is_a_bounded_whole_number_or_refused(value):
    from petals_ops.client.models import MAX_BLOCKS, check_num_blocks

    try:
        count = check_num_blocks(value, "the record")
    except InputError as e:
        assert "\n" not in e.one_line()
        return
    assert type(count) is int and 1 <= count <= MAX_BLOCKS


@FAST
@given(ANNOUNCED)
def test_announced_text_is_inert_on_a_terminal(text):
    import io

    from rich.console import Console

    from petals_ops.util.safe_text import inert, inert_text, printable

    import unicodedata

    hidden = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}  # controls, format characters, unassigned...
    assert not {unicodedata.category(ch) for ch in printable(text)} & hidden
    buf = io.StringIO()
    console = Console(file=buf, width=100, color_system=None, legacy_windows=False)
    console.print(inert(text))
    console.print(inert_text(text))
    assert "\x1b" not in buf.getvalue() and "\u202e" not in buf.getvalue()


STATE = st.one_of(JSON, st.fixed_dictionaries(
    {"run_dir": st.just("/tmp/x"), "model_dir": st.just("/tmp/x/m"), "dht_prefix": st.just("p"),
     "num_blocks": JSON, "dht_port": JSON},
    optional={"processes": st.lists(st.one_of(JSON, st.fixed_dictionaries(
        {"name": st.just("dht"), "role": st.just("dht"), "pid": JSON, "pgid": JSON, "log": st.just("l")},
        optional={"start_time": JSON})), max_size=3), "initial_peers": JSON}))


@FAST
@given(STATE)
def test_swarm_state_loads_or_is_one_line(data):
    from petals_ops.lab.local_swarm import LocalSwarm
    from petals_ops.util.errors import OpsError

    run = _file(json.dumps(data).encode(), "state.json").parent
    try:
        swarm = LocalSwarm.load(run)
    except OpsError as e:
        assert "\n" not in e.one_line() and "state.json" in e.one_line()
        return
    assert all(type(p.pgid) is int and p.pgid >= 1 for p in swarm.processes)


@FAST
@given(st.one_of(JSON, st.fixed_dictionaries({}, optional={"n_layer": JSON, "num_hidden_layers": JSON,
                                                          "hidden_size": JSON})),
       st.one_of(JSON, st.fixed_dictionaries({}, optional={"dht_prefix": st.one_of(JSON, st.just("p"))})))
def test_model_dir_files_resolve_or_are_one_line(config, meta):
    from petals_ops.client.models import MAX_BLOCKS, resolve_model

    model = _file(json.dumps(config).encode(), "config.json").parent
    (model / "petals_ops.json").write_text(json.dumps(meta))
    (model / "model.safetensors").write_bytes(b"")
    try:
        ref = resolve_model(str(model))
    except InputError as e:
        assert "\n" not in e.one_line()
        return
    assert type(ref.num_blocks) is int and 1 <= ref.num_blocks <= MAX_BLOCKS
    assert isinstance(ref.dht_prefix, str)


@FAST
@given(st.one_of(st.text(max_size=30), st.from_regex(r"\d{1,30}(\.\d{1,5})?(ms|s|m|h)?", fullmatch=True)))
def test_option_values_parse_or_are_one_line(text):
    from petals_ops.lab.target import split_peers
    from petals_ops.monitoring.server import MAX_REFRESH, parse_duration, parse_listen

    for parse in (parse_duration, parse_listen, lambda t: split_peers([t])):
        try:
            value = parse(text)
        except InputError as e:
            assert "\n" not in e.one_line()
            continue
        if parse is parse_duration:
            assert 0.1 <= value <= MAX_REFRESH


def test_fuzzer_short_run():
    """benchmarks/fuzz_parsers.py, every target in one atheris process for 20 s (its corpus is
    tests/data/fuzz_corpus): a finding prints the crashing input and fails here."""
    import subprocess
    import sys

    pytest.importorskip("atheris", reason="atheris has a wheel for CPython 3.11 on x86_64 only")
    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, str(repo / "benchmarks" / "fuzz_parsers.py"), "--all", "20"],
                            capture_output=True, text=True, timeout=300, cwd=repo)
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    assert "targets clean in one run" in result.stdout
