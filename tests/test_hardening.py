"""Hostile and careless inputs (issue 12): each case ends in one line, never a traceback, a leaked
secret or unbounded work. Fast: no swarm, no hosts (port 9 on loopback has nothing listening)."""

from __future__ import annotations

import json
import time

import pytest
import yaml

from tests.helpers import assert_one_line_error

BILLION_LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi")
)


def write(tmp_path, data, name="inv.yaml"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


# --- inventory YAML -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, needle",
    [
        (BILLION_LAUGHS, "expands to more than"),
        ("a: &a [*a]\n", "recursive"),
        ("a: " + "[" * 100_000 + "]" * 100_000 + "\n", "nests deeper"),
        ("a: " + "[" * 100 + "]" * 100 + "\n", "nests deeper"),
    ],
    ids=["billion-laughs", "recursive-alias", "deep-100000", "deep-100"],
)
def test_inventory_yaml_bombs_are_refused_quickly(tmp_path, run_cli, text, needle):
    path = write(tmp_path, text)
    started = time.monotonic()
    result = run_cli("plan", "-i", path, timeout=60)
    assert_one_line_error(result, str(path), needle, code=2)
    assert time.monotonic() - started < 30


def test_inventory_aliases_within_bounds_still_work(tmp_path):
    from petals_ops.fleet.inventory import load_inventory

    path = write(tmp_path, "server: &s {device: cpu, port: 4000}\n"
                           "hosts:\n  a: {gpus: 0, server: *s}\n"
                           "  b: {gpus: 0, server: {<<: *s, port: 5000}}\n")
    inv = load_inventory(path)
    assert inv.server_for("a").port == 4000 and inv.server_for("b").port == 5000


# --- secrets ------------------------------------------------------------------------------------------
TOKEN = "hf_" + "AbCdEfGhIjKlMnOpQrStUvWxYz01234567"
UNREACHABLE = {"a10-1": {"address": "127.0.0.1", "port": 9, "gpus": 0}}


@pytest.mark.parametrize(
    "server, needles",
    [
        ({"hf_token": TOKEN}, ["server.hf_token", "not hold the token"]),
        ({"hf_token": {"env": TOKEN}}, ["server.hf_token", "name of an environment variable"]),
        ({"public_name": TOKEN}, ["server.public_name", "looks like a Hugging Face token"]),
        ({"environment": {"HF_HOME_X": TOKEN}}, ["server.environment", "looks like a Hugging Face token"]),
        ({"extra_args": [f"--x={TOKEN}"]}, ["server.extra_args", "looks like a Hugging Face token"]),
    ],
    ids=["token-itself", "env-is-token", "public_name", "environment", "inside-an-arg"],
)
@pytest.mark.parametrize("command", ["plan", "up"])
def test_tokens_in_the_inventory_are_refused_and_never_printed(tmp_path, run_cli, server, needles, command):
    path = write(tmp_path, {"server": {"device": "cpu", **server}, "hosts": UNREACHABLE})
    result = run_cli(command, "-i", path, "-o", "json")
    assert_one_line_error(result, *needles, code=2)
    assert TOKEN[3:] not in result.stdout + result.stderr


def test_token_file_path_error_is_redacted(tmp_path, run_cli):
    path = write(tmp_path, {"server": {"device": "cpu", "hf_token": {"file": TOKEN}}, "hosts": UNREACHABLE})
    result = run_cli("up", "-i", path)
    assert_one_line_error(result, "cannot read token file", "hf_***", code=2)
    assert TOKEN[3:] not in result.stdout + result.stderr
    result = run_cli("plan", "-i", path)
    assert result.returncode == 0 and TOKEN[3:] not in result.stdout + result.stderr


def test_redact_and_click_usage_errors(run_cli):
    from petals_ops.util.errors import InputError, redact

    assert redact(f"a {TOKEN}, b hf_token hf_transfer") == "a hf_***, b hf_token hf_transfer"
    assert TOKEN not in InputError(f"bad {TOKEN}", fix=f"not {TOKEN}").one_line()
    result = run_cli("bench", "gsm8k", "--paths", TOKEN)
    assert result.returncode == 2 and TOKEN[3:] not in result.stderr, result.stderr


# --- host lists and option values: usage errors before any network work ------------------------------
@pytest.mark.parametrize("command", [["hosts", "check"], ["provision"], ["plan"], ["up"], ["restart"],
                                     ["down"], ["status"]])
@pytest.mark.parametrize("hosts", ["", ",,,", " , "])
def test_empty_host_list_is_a_usage_error(tmp_path, run_cli, command, hosts):
    """--hosts '' once meant every host: 'down' stopped the whole fleet."""
    path = write(tmp_path, {"hosts": UNREACHABLE})
    assert_one_line_error(run_cli(*command, "-i", path, "--hosts", hosts), "--hosts", "names no host", code=2)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["bench", "gsm8k", "--request-timeout", "0"], "--request-timeout"),
        (["bench", "gsm8k", "--request-timeout", "-1"], "--request-timeout"),
        (["bench", "gsm8k", "--request-timeout", "nan"], "--request-timeout"),
        (["generate", "x", "--max-new-tokens", "-5"], "--max-new-tokens"),
        (["generate", "x", "--sample", "--temperature", "nan"], "--temperature"),
        (["swarm", "local", "up", "--timeout", "0"], "--timeout"),
        (["swarm", "local", "up", "--timeout", "-5"], "--timeout"),
        (["up", "--timeout", "nan"], "--timeout"),
        (["restart", "--timeout", "-5"], "--timeout"),
        (["logs", "a10-1", "--tail", "-5"], "--tail"),
        (["demo", "--servers", "0"], "--servers"),
        (["logs"], "Missing argument"),
    ],
)
def test_values_that_cannot_work_are_one_line_usage_errors(tmp_path, run_cli, args, needle):
    """Checked by click before anything connects (generate once spent 10-17 s connecting first)."""
    started = time.monotonic()
    result = run_cli(*args, env=None, timeout=60)
    line = assert_one_line_error(result, needle, code=2)
    assert "--help" in line and time.monotonic() - started < 20


# Every command of the CLI with one bad input each: one line naming the input, exit 2, before any work.
# The files are made in tmp_path: "inv.yaml" (one unreachable host), "afile" (a plain file).
BAD_INPUT_PER_COMMAND = {
    "model tiny": (["model", "tiny", "d", "--layers", "0"], "--layers 0"),
    "swarm local up": (["swarm", "local", "up", "--servers", "0"], "--servers 0"),
    "swarm local down": (["swarm", "local", "down", "--swarm-dir", "afile"], "'afile' is a file"),
    "swarm local status": (["swarm", "local", "status", "-o", "yaml"], "'yaml' is not one of"),
    "swarm local fault": (["swarm", "local", "fault", "1", "explode"], "fault 'explode' is unknown"),
    "swarm status": (["swarm", "status", "--initial-peers", "garbage", "--model", "x"],
                     "--initial-peers garbage"),
    "swarm trace": (["swarm", "trace", "--steps", "0"], "--steps 0"),
    "generate": (["generate", "x", "--top-k", "-1"], "--top-k"),
    "demo": (["demo", "--work-dir", "afile"], "'afile' is a file"),
    "exporter": (["exporter", "--listen", "nonsense"], "--listen 'nonsense'"),
    "bench gsm8k": (["bench", "gsm8k", "--data", "nosuch.jsonl"], "--data nosuch.jsonl"),
    "bench report": (["bench", "report", "nosuchdir"], "nosuchdir has no summary.json"),
    "bench errors": (["bench", "errors", "nosuchdir"], "nosuchdir has no summary.json"),
    "bench sweep run": (["bench", "sweep", "nosuch.yaml"], "sweep spec nosuch.yaml does not exist"),
    "bench sweep report": (["bench", "sweep", "report", "nosuchdir"], "nosuchdir is not a sweep dir"),
    "tune gsm8k": (["tune", "gsm8k", "--pre-seq-len", "0"], "--pre-seq-len 0"),
    "hosts check": (["hosts", "check", "-i", "missing.yaml"], "inventory missing.yaml"),
    "provision": (["provision", "-i", "inv.yaml", "--hosts", "zz"], "zz is neither in the inventory"),
    "plan": (["plan", "-i", "inv.yaml", "--as-model", "nonsense"], "--as-model nonsense"),
    "up": (["up", "-i", "inv.yaml", "--hosts", "zz"], "zz is neither in the inventory"),
    "down": (["down", "-i", "inv.yaml", "--hosts", "zz"], "zz is neither in the inventory"),
    "status": (["status", "-i", "inv.yaml", "--hosts", "zz"], "zz is neither in the inventory"),
    "restart": (["restart", "-i", "inv.yaml", "--hosts", "zz"], "zz is neither in the inventory"),
    "logs": (["logs", "zz", "-i", "inv.yaml"], "host zz is neither in the inventory"),
    "doctor": (["doctor", "--probe-timeout", "nonsense"], "--probe-timeout 'nonsense'"),
    "watch": (["watch", "-i", "inv.yaml", "--interval", "nonsense"], "--interval 'nonsense'"),
}


def _cli_commands() -> set[str]:
    import click

    from petals_ops.cli.main import cli

    def walk(command, path):
        if isinstance(command, click.Group):
            return {name for sub, c in command.commands.items() for name in walk(c, [*path, sub])}
        return {" ".join(path)}

    return walk(cli, [])


def test_every_command_has_a_bad_input_case():
    """A new command gets a row in BAD_INPUT_PER_COMMAND, or this fails."""
    assert _cli_commands() == set(BAD_INPUT_PER_COMMAND)


@pytest.mark.parametrize("command", sorted(BAD_INPUT_PER_COMMAND))
def test_each_commands_bad_input_is_one_line(tmp_path, run_cli, monkeypatch, command):
    args, needle = BAD_INPUT_PER_COMMAND[command]
    write(tmp_path, {"hosts": UNREACHABLE})
    (tmp_path / "afile").write_text("")
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(run_cli(*args, timeout=60), needle, code=2)


# --- library logging ----------------------------------------------------------------------------------
@pytest.fixture
def not_ssh_port():
    """A loopback port that accepts and answers garbage: paramiko logs a traceback per attempt."""
    import socket
    import threading

    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(5)
    server.close()


@pytest.mark.parametrize("command", [["hosts", "check"], ["status", "-o", "json"],
                                     ["up", "--no-wait", "-o", "json"]])
def test_unreachable_host_prints_no_library_traceback(tmp_path, run_cli, not_ssh_port, command):
    path = write(tmp_path, {"server": {"device": "cpu"},
                            "hosts": {"a": {"address": "127.0.0.1", "port": not_ssh_port, "gpus": 0}}})
    result = run_cli(*command, "-i", path, timeout=120)
    assert_one_line_error(result, "SSH protocol banner", code=1)
    assert result.stderr.count("\n") == 1, result.stderr


# --- bench files: one-line errors, never a traceback ---------------------------------------------------
def test_deeply_nested_data_line_is_one_line(tmp_path, run_cli):
    data = tmp_path / "deep.jsonl"
    # under the 100,000-character bound of a line, so what is refused is the depth
    data.write_text("[" * 40_000 + "]" * 40_000 + "\n")
    result = run_cli("bench", "gsm8k", "--data", data, "--swarm-dir", tmp_path / "none",
                     "--run-dir", tmp_path / "run")
    assert_one_line_error(result, str(data), "nested deeper", code=2)


def _summary() -> dict:
    """A real bench summary, shaped as the bench writes it (made here, not read from a run dir)."""
    return {"run_dir": "r", "method": "cot", "paths": 1, "n": 1, "scored": 1, "errors": 0, "correct": 1,
            "accuracy": 1.0, "accuracy_wilson95": [0.2, 1.0], "tokens": 5, "wall_seconds_total": 1.0,
            "tokens_per_second": 5.0, "backend": "local", "invalid_path_rate": 0.0,
            "finish_reasons": {"stop": 1}, "extraction": {"answer_is": 1}, "servers_served": {},
            "categories": {},
            "config": {"model": {"name": "m", "dht_prefix": "p"}, "prompt": {"id": "p@1", "exemplars": 2},
                       "data": {"source": "demo", "sha256": "0" * 64, "offset": 0, "limit": None,
                                "sample": None},
                       "method": {"method": "cot"}}}


@pytest.mark.parametrize(
    "summary, needle",
    [
        ([], "not a JSON object"),
        ({}, "lacks"),
        ({"run_dir": ".", "method": "cot", "n": 1, "scored": 1, "config": {}}, "config.model"),
        ({**_summary(), "config": 5}, "its config is int"),
        ({**_summary(), "n": "x"}, "its n is str"),
        ({**_summary(), "accuracy_wilson95": [1]}, "accuracy_wilson95"),
        ({**_summary(), "maj_at_k": [1]}, "maj_at_k"),
    ],
    ids=["list", "empty", "no-model", "config-int", "n-str", "wilson", "maj"],
)
@pytest.mark.parametrize("command", ["report", "errors"])
def test_bad_summary_is_one_line(tmp_path, run_cli, summary, needle, command):
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps(summary))
    args = (["bench", "report", run, "--out", tmp_path / "out"] if command == "report"
            else ["bench", "errors", run])
    assert_one_line_error(run_cli(*args), "summary.json", "not a bench summary", needle, code=2)


def test_a_good_summary_still_reports(tmp_path):
    from petals_ops.bench.records import RunSummary
    from petals_ops.bench.report import _markdown

    assert "cot" in _markdown([RunSummary.from_dict(_summary())], "p.png", "t")


def _record(qid: str) -> dict:
    """A whole question's record, shaped as the runner writes it."""
    path = {"i": 0, "answer": "4", "how": "answer_is", "correct": True, "finish": "stop", "tokens": 5,
            "text": "2+2=4. The answer is 4.", "raw": "2+2=4. The answer is 4.", "category": "correct"}
    return {"id": qid, "line": 1, "question": "2+2?", "gold": "4", "prompt_id": "p@1", "method": "cot",
            "backend": "local", "prompt_tokens": 10, "paths": [path], "vote": "4", "correct": True,
            "tokens": 5, "seconds": 0.1, "attempts": 1, "failures": [], "servers": [], "batches": [1],
            "error": None, "finished_at": 1.0}


@pytest.mark.parametrize("garbage", [b"\xff\xfe\x00garbage\n", b"[" * 100_000 + b"]" * 100_000 + b"\n",
                                     b"[]\n", b'{"id": 5}\n', b'{"id": "q:9", "error": null}\n', b"1e999\n"])
def test_records_with_garbage_lines_are_read_and_resumed(tmp_path, run_cli, garbage):
    """Garbage appended to records.jsonl is skipped by the readers (its question counts as not done)."""
    from petals_ops.bench import store
    from petals_ops.bench.records import is_record
    from petals_ops.bench.report import load_records

    run = tmp_path / "run"
    config = _summary()["config"]
    s = store.RunStore(run)
    s.open(config)
    for qid in ("q:1", "q:2"):
        s.append(_record(qid))
    s.close()
    with open(run / "records.jsonl", "ab") as f:
        f.write(garbage)
    assert [r.id for r in load_records(run)] == ["q:1", "q:2"]
    s = store.RunStore(run)
    try:
        existing = s.open(config)  # what a resume skips: the records the reports can read
        assert sorted(k for k, r in existing.items() if is_record(r)) == ["q:1", "q:2"]
    finally:
        s.close()
    (run / "summary.json").write_text(json.dumps({**_summary(), "run_dir": str(run), "n": 2, "scored": 2,
                                                  "correct": 2}))
    result = run_cli("bench", "errors", run, "-o", "json")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert {row["id"] for row in json.loads(result.stdout)} == {"q:1", "q:2"}


def test_bench_errors_lists_a_path_with_a_number_past_the_int_limit(tmp_path, run_cli):
    """Issue 23.9: 5,000 digits in a path's text (and its answer) made ``bench errors`` raise."""
    from petals_ops.bench import store

    huge = "9" * 5000
    run = tmp_path / "run"
    s = store.RunStore(run)
    s.open(_summary()["config"])
    record = _record("q:1")
    text = f"{huge} + 1 = 5. 2 + 2 = 5. The answer is {huge}."
    record["paths"][0].update(text=text, raw=text, answer=huge, correct=False, category="arithmetic_slip")
    s.append({**record, "correct": False, "vote": huge})
    s.close()
    (run / "summary.json").write_text(json.dumps({**_summary(), "correct": 0, "accuracy": 0.0}))
    result = run_cli("bench", "errors", run, "-o", "json")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    (row,) = json.loads(result.stdout)
    assert row["answer"] == huge and row["slip"] == "2 + 2 = 5" and row["slip_true_value"] == "4"
    table = run_cli("bench", "errors", run)
    assert table.returncode == 0 and "arithmetic_slip" in table.stdout, table.stderr


def test_bad_config_json_on_resume_is_one_line(tmp_path):
    from petals_ops.bench import store
    from petals_ops.util.errors import InputError

    for text in ("[]", "[" * 100_000 + "]" * 100_000):
        run = tmp_path / str(len(text))
        run.mkdir()
        (run / "config.json").write_text(text)
        with pytest.raises(InputError, match="config.json is unreadable"):
            store.RunStore(run).open({"a": 1})


def test_plot_of_runs_without_scored_questions_warns_nothing(tmp_path):
    import warnings

    from petals_ops.bench.records import RunSummary
    from petals_ops.bench.report import plot

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plot([RunSummary.from_dict({**_summary(), "accuracy": None, "scored": 0})], tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 0


def test_maj_at_k_plot_draws_k_in_order_and_names_the_data(tmp_path):
    """Issue 23.16: summary.json keeps k as string keys sorted as strings, so the curve went 1, 10, 2, ...
    and the title said GSM8K whatever the data. What is drawn is read back from the figure."""
    import matplotlib.pyplot as plt

    from petals_ops.bench import report
    from petals_ops.bench.records import RunSummary
    from petals_ops.util.fsutil import write_json_atomic

    curve = {str(k): round(0.5 + k / 40, 4) for k in range(1, 11)}  # rises with k
    data = {**_summary(), "method": "sc", "paths": 10, "maj_at_k": curve}
    data["config"]["data"]["source"] = "arith:test"
    data["categories"] = {"counts": {"wrong_answer": 1, "correct": 7, "arithmetic_slip": 2}}
    run = tmp_path / "run"
    run.mkdir()
    write_json_atomic(run / "summary.json", data)
    assert list(json.loads((run / "summary.json").read_text())["maj_at_k"])[:3] == ["1", "10", "2"]
    summary = report.load_summary(run)
    fig = report.figure([summary, RunSummary.from_dict({**_summary(), "run_dir": "cot"})])
    try:
        ax = fig.axes[0]
        (line,) = ax.lines[:1]
        assert list(line.get_xdata()) == list(range(1, 11))
        assert list(line.get_ydata()) == [100 * curve[str(k)] for k in range(1, 11)]
        assert ax.get_title().startswith("arith:test") and "GSM8K" not in ax.get_title()
        assert ax.get_xlim() == (0.5, 10.5)
    finally:
        plt.close(fig)
    row = report.table_rows([summary])[0]
    assert (row[6], row[7]) == ("52.5%", "75.0%")  # maj@1 and maj@K (K = 10, not 9)
    text = report._markdown([summary], "p.png", "t")
    assert "maj@1 52.5%, maj@2 55.0%" in text and text.index("maj@9 ") < text.index("maj@10 ")
    # the error analysis table in the documented category order, not summary.json's alphabetical one
    assert text.index("| correct |") < text.index("| arithmetic_slip |") < text.index("| wrong_answer |")
    report.plot([summary], tmp_path / "maj.png")  # looked at by eye when written: a rising line 1..10


def _consistent_run(run) -> None:
    """A run dir as the bench leaves it: config, one record and a summary that agree."""
    from petals_ops.bench import store

    s = store.RunStore(run)
    s.open(_summary()["config"])
    s.append(_record("q:1"))
    s.close()
    (run / "summary.json").write_text(json.dumps({**_summary(), "run_dir": str(run)}))


def test_report_out_into_a_run_dir_is_refused(tmp_path, run_cli):
    """Issue 23.15: 'bench report A B --out A' overwrote run A's own report.md and plot."""
    a, b = tmp_path / "a", tmp_path / "b"
    for run in (a, b):
        _consistent_run(run)
    (a / "report.md").write_text("run A's own report\n")
    line = assert_one_line_error(run_cli("bench", "report", a, b, "--out", a), code=2)
    assert "is a bench run dir" in line and "--out" in line
    assert (a / "report.md").read_text() == "run A's own report\n" and not (a / "maj_at_k.png").exists()
    assert run_cli("bench", "report", a, b, "--out", tmp_path / "cmp").returncode == 0


@pytest.fixture
def odd_paths(tmp_path):
    """Paths that exist but are no regular file, and what the error must call them."""
    import os

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    loop = tmp_path / "loop"
    loop.symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(loop)
    return [(fifo, "is a FIFO"), (loop, "is a symlink loop"), ("/dev/null", "is a character device")]


@pytest.mark.parametrize("option", ["--data", "--prompt-file", "--tuned-prompts", "--inventory"])
def test_a_fifo_a_symlink_loop_or_dev_null_is_named_for_what_it_is(tmp_path, run_cli, odd_paths, option):
    """Issue 23.15: each was reported as "does not exist"."""
    for path, what in odd_paths:
        if option == "--inventory":
            args = ["status", "--inventory", path]
        else:
            args = ["bench", "gsm8k", "--backend", "local", "--model", "nowhere", option, path,
                    "--run-dir", tmp_path / "run"]
        line = assert_one_line_error(run_cli(*args, timeout=60), str(path), what, code=2)
        assert "does not exist" not in line
    assert not (tmp_path / "run").exists()


def test_the_lock_names_the_job_that_holds_the_run_dir(tmp_path):
    """Issue 23.15: a bench holding a run dir was called "another tune run" by tune (and the reverse)."""
    from petals_ops.bench import store
    from petals_ops.tune.store import TuneStore
    from petals_ops.util.errors import OpsError

    run = tmp_path / "run"
    bench = store.RunStore(run)
    bench.open({"a": 1})
    try:
        with pytest.raises(OpsError, match=r"another bench \(pid \d+\) is running"):
            TuneStore(run).open({"a": 1})
    finally:
        bench.close()
    tune = TuneStore(run)
    tune.open({"a": 1})
    try:
        with pytest.raises(OpsError, match=r"another tune run \(pid \d+\) is running"):
            store.RunStore(run).open({"a": 1})
    finally:
        tune.close()
    (run / ".lock").write_text("1\n")  # a lock of an older version (pid only) held by a live process
    with pytest.raises(OpsError, match=r"another process \(pid 1\) is running"):
        store.RunStore(run).open({"a": 1})


def test_nan_in_a_summary_is_shown_as_n_a(tmp_path, run_cli):
    """Issue 23.15: NaN (JSON allows it) was shown as 'nan%'."""
    from petals_ops.bench import report

    run = tmp_path / "run"
    _consistent_run(run)
    text = (run / "summary.json").read_text().replace('"accuracy": 1.0', '"accuracy": NaN')
    text = text.replace('"invalid_path_rate": 0.0', '"invalid_path_rate": Infinity')
    assert "NaN" in text and "Infinity" in text
    (run / "summary.json").write_text(text)
    summary = report.load_summary(run)
    assert report.table_rows([summary])[0][4] == "n/a"
    result = run_cli("bench", "report", run, "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    written = (tmp_path / "out" / "report.md").read_text()
    assert "nan%" not in result.stdout + written and "inf%" not in written and "n/a" in result.stdout


@pytest.mark.swarm
@pytest.mark.parametrize("backend", ["petals", "local"])
def test_generate_into_a_closed_pipe_is_not_blamed_on_the_swarm(local_swarm, backend):
    """Issue 23.15: 'generate | head -c1' said "generation through the swarm failed: Broken pipe"."""
    import subprocess
    import sys

    from tests.conftest import cli_env

    args = ["generate", "Q: 1 + 1?", "--swarm-dir", local_swarm.run_dir, "--max-new-tokens", "24",
            "--backend", backend]
    reader = subprocess.Popen([sys.executable, "-m", "petals_ops.cli.main", *map(str, args)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env())
    reader.stdout.read(1)
    reader.stdout.close()  # what 'head -c1' does
    _, err = reader.communicate(timeout=300)
    err = err.decode()
    assert "swarm" not in err and "error:" not in err and "Traceback" not in err, err
    assert reader.returncode == 1, (reader.returncode, err)  # click's quiet exit on EPIPE


# --- /tmp leftovers -----------------------------------------------------------------------------------
def test_failed_p2pd_start_leaves_no_socket_in_tmp(run_cli):
    """A swarm that cannot be reached made hivemind leave /tmp/hivemind-p2pd-*.sock behind each time."""
    from petals_ops.util import tmpclean

    before = tmpclean.hivemind_sockets()
    result = run_cli("swarm", "status", "--initial-peers", PEER_ON_PORT_9, "--model", "bigscience/bloom",
                     timeout=120)
    assert_one_line_error(result, "cannot reach the swarm", code=1)
    # sockets of other processes may come and go meanwhile: only dead ones that are new count
    assert {p for p in tmpclean.hivemind_sockets() - before if not tmpclean._listened_on(p)} == set()


def test_multiprocessing_tempdir_is_removed(tmp_path):
    import subprocess
    import sys

    code = ("import multiprocessing.util, os; from petals_ops.util import tmpclean; "
            "d = multiprocessing.util.get_temp_dir(); "
            "tmpclean.remove_multiprocessing_tempdir(); print(d, os.path.exists(d)); os._exit(0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60).stdout.split()
    assert out[0].startswith("/tmp/pymp-") or "pymp-" in out[0]
    assert out[1] == "False"


PEER_ON_PORT_9 = "/ip4/127.0.0.1/tcp/9/p2p/QmS9KwZptnVdB9FFV7uGgaTq4sEKBwcYeKZDfSpyKDUd1g"


def test_an_unexpected_scoring_error_is_that_questions_error_record(tmp_path, monkeypatch):
    """Fault injection: the scorer is hardened, so no real completion makes it raise any more; a scorer that
    raises on one question stands in for the next unknown bug. The run must go on and record it."""
    from petals_ops.bench import runner
    from petals_ops.bench.methods import MethodConfig
    from petals_ops.bench.store import read_records
    from petals_ops.client.options import ClientOptions
    from petals_ops.lab.tiny_model import ARITH_MODEL_DIR

    real_score = runner.score_path
    calls = []

    def flaky_score(path, gold):
        calls.append(gold)
        if len(calls) == 2:
            raise ArithmeticError("boom in the scorer")
        return real_score(path, gold)

    monkeypatch.setattr(runner, "score_path", flaky_score)
    params = runner.BenchParams(data="arith:test", limit=3, run_dir=str(tmp_path / "run"),
                                client=ClientOptions(backend="local", model=str(ARITH_MODEL_DIR)),
                                method=MethodConfig(method="cot", paths=1, max_new_tokens=24),
                                exec=runner.ExecOptions(concurrency=1))
    runner.run_bench(params)
    records = read_records(tmp_path / "run")
    assert len(records) == 3
    errors = [r for r in records if r["error"]]
    assert len(errors) == 1 and "boom in the scorer" in errors[0]["error"] and errors[0]["attempts"] == 1
    assert all(r["paths"] for r in records if not r["error"])


# --- issue 23 #2: untrusted text on terminals ----------------------------------------------------------
def test_untrusted_text_is_inert_in_tables_errors_and_info(capsys):
    """One helper (petals_ops.util.safe_text) makes announced or remote text inert wherever it is shown:
    tables (markup, emoji codes and control characters), one-line errors and info lines."""
    from petals_ops.util.errors import OpsError
    from petals_ops.util.output import info, render_table
    from petals_ops.util.safe_text import inert, printable

    evil = ("\x1b]8;;http://evil.example/\x1b\\x\x1b]8;;\x1b\\ [link=http://evil.example/]y[/link] :smile:"
            "\u202e\r")
    from petals_ops.cli.terminal import terminal

    render_table(["name", evil], [[evil, "a\nb"]], title=evil)
    info(f"peer said {evil}")
    terminal.table(["name", evil], [[evil, "a\nb"]], title=evil)
    terminal.echo(evil)
    terminal.info(evil)
    out = capsys.readouterr()
    for text in (out.out, out.err, OpsError(f"bad {evil}", fix=evil).one_line()):
        assert not any(ch in text for ch in "\x1b\u202e\r"), repr(text)
    assert "[link=http://evil.example/]y[/link]" in out.out and ":smile:" in out.out and "😄" not in out.out
    assert printable("ok é 宽") == "ok é 宽" and printable("a\tb\nc", keep_newlines=True) == "a\tb\nc"
    assert printable("x" * 50, limit=10) == "x" * 9 + "…" and printable(None) == ""
    assert inert("[b]x[/b]") == "\\[b]x\\[/b]"


# --- issue 23 #10: seeds, symlink loops, wrong-shape model files ----------------------------------------
@pytest.mark.parametrize("args", [
    ["generate", "x", "--sample", "--seed", str(2**64)],
    ["tune", "gsm8k", "--seed", str(2**64)],
    ["bench", "gsm8k", "--seed", str(2**64)],
    ["bench", "gsm8k", "--sample-seed", str(2**70)],
    ["model", "tiny", "d", "--seed", "-1"],
], ids=["generate", "tune", "bench", "bench-sample", "model-tiny"])
def test_out_of_range_seeds_are_usage_errors(run_cli, args):
    assert_one_line_error(run_cli(*args, timeout=60), "seed", "is not in the range", code=2)


@pytest.mark.parametrize("args", [
    ["swarm", "local", "up", "--run-dir", "loop"],
    ["swarm", "local", "down", "--run-dir", "loop"],
    ["swarm", "status", "--swarm-dir", "loop"],
    ["exporter", "--swarm-dir", "loop"],
    ["bench", "gsm8k", "--backend", "local", "--model", "bigscience/bloom", "--run-dir", "loop"],
    ["bench", "report", "loop"],
    ["tune", "gsm8k", "--run-dir", "loop/sub"],
    ["model", "tiny", "loop"],
    ["demo", "--work-dir", "loop"],
], ids=lambda a: "-".join(a[:2]))
def test_symlink_loop_dirs_are_one_line(run_cli, tmp_path, monkeypatch, args):
    (tmp_path / "loop").symlink_to(tmp_path / "pool")
    (tmp_path / "pool").symlink_to(tmp_path / "loop")
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(run_cli(*args, timeout=60), "symlink loop", code=2)


@pytest.mark.parametrize("file, content, needle", [
    ("config.json", "[]", "config.json holds a list"),
    ("config.json", "[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ("config.json", '{"n_layer": -3}', "gives -3 blocks"),
    ("config.json", '{"n_layer": "four"}', "gives 'four' blocks"),
    ("config.json", '{"n_layer": 3000000}', "gives 3000000 blocks"),
    ("config.json", '{"n_layer": 2.5}', "gives 2.5 blocks"),
    ("petals_ops.json", '["x"]', "petals_ops.json holds a list"),
    ("petals_ops.json", '{"dht_prefix": {"a": 1}}', "is not a string"),
], ids=["list", "deep", "negative", "text", "huge", "float", "meta-list", "meta-prefix"])
def test_wrong_shape_model_files_are_one_line(run_cli, tmp_path, file, content, needle):
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"")
    (model / "config.json").write_text('{"n_layer": 2}')
    (model / "petals_ops.json").write_text('{"dht_prefix": "m-petals"}')
    (model / file).write_text(content)
    result = run_cli("swarm", "status", "--initial-peers", PEER_ON_PORT_9, "--model", model, timeout=60)
    assert_one_line_error(result, needle, code=2)


# --- issue 23 #14: temp litter --------------------------------------------------------------------------
def test_a_killed_runs_leftovers_are_removed_at_the_next_start(tmp_path, run_cli):
    """kill -9 of a bench or tune left its p2pd socket in /tmp, and a tune its '.loss.png.*.png' in the
    run dir: the next command removes dead sockets of ours (older than a minute, nobody listening), and
    opening a run dir (its lock held) removes the half-written files of atomic writes."""
    import os
    import socket
    import uuid

    from petals_ops.tune.store import TuneStore

    def sock(listen: bool, age: float):
        path = f"/tmp/hivemind-p2pd-hardening-{uuid.uuid4().hex[:8]}.sock"
        s = socket.socket(socket.AF_UNIX)
        s.bind(path)
        if listen:
            s.listen()
        else:
            s.close()
        os.utime(path, (time.time() - age, time.time() - age))
        return path, s

    dead, _ = sock(False, 120)
    fresh, _ = sock(False, 0)  # may be a daemon that has not listened yet: kept
    alive, server = sock(True, 120)
    try:
        result = run_cli("swarm", "local", "status", "--swarm-dir", tmp_path / "none", timeout=60)
        assert result.returncode == 1
        assert not os.path.exists(dead) and os.path.exists(fresh) and os.path.exists(alive)
    finally:
        server.close()
        for path in (dead, fresh, alive):
            if os.path.exists(path):
                os.unlink(path)

    run = tmp_path / "tune"
    run.mkdir()
    litter = [run / ".loss.png.a1b2c3d4.png", run / ".checkpoint.pt.x_y9z8w7.tmp",
              run / ".tune.json.k2j3h4g5.tmp"]
    for path in litter:
        path.write_bytes(b"half")
    keep = [run / "notes.txt", run / ".hidden", run / "loss.png"]
    for path in keep:
        path.write_bytes(b"x")
    store = TuneStore(run)
    store.open({"model": "m", "seed": 0})
    store.close()
    assert [p for p in litter if p.exists()] == [] and all(p.exists() for p in keep)


# --- issue 23 #17: library log lines ---------------------------------------------------------------------
LIBRARY_PROBE = """
import logging, sys, warnings
from petals_ops.util.output import quiet_library_logging, raise_log_level
quiet_library_logging(debug=sys.argv[1] == "debug")  # what the CLI does first
from petals_ops.client import door  # petals' import puts hivemind's handler on the root logger at INFO
raise_log_level("petals")  # what loading the client does
for name in ("petals.client.routing", "hivemind.p2p", "transformers.modeling_utils", "asyncio", "filelock"):
    logging.getLogger(name).warning("LIBRARY-LINE from %s", name)
door.hivemind.get_logger("petals.client.inference_session").warning("LIBRARY-LINE via hivemind")
warnings.warn("LIBRARY-LINE as a warning", FutureWarning)
logging.getLogger("petals_ops.exporter").warning("OUR-LINE")
"""


@pytest.mark.parametrize("mode", ["quiet", "debug"])
def test_library_log_lines_stay_off_the_terminal(mode):
    """With a frozen server, generate printed a petals [WARN] line: the CLI's quieting was undone by
    petals' import (hivemind's handler on the root logger) and by the client setting petals' level to
    WARNING. Now no library record or warning reaches stderr without --debug; ours still do."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", LIBRARY_PROBE, mode], capture_output=True, text=True,
                            timeout=180)
    assert result.returncode == 0, result.stderr
    if mode == "quiet":
        assert "LIBRARY-LINE" not in result.stderr, result.stderr
        assert "OUR-LINE" in result.stderr
    else:
        assert result.stderr.count("LIBRARY-LINE") >= 5, result.stderr


# --- issue 23 #13: unbounded inputs ---------------------------------------------------------------------
def test_a_huge_question_line_is_refused_before_it_is_parsed(tmp_path, run_cli):
    """A 20 MB question line cost 4.3 GB in 19 s before it was refused: lines and files of --data are
    bounded before parsing (the error says the bound), and so is --prompt-file."""
    import json
    import tracemalloc

    from petals_ops.bench.data import MAX_LINE_CHARS, load_jsonl
    from petals_ops.util.errors import InputError

    path = tmp_path / "huge.jsonl"
    ok = json.dumps({"question": "1+1?", "answer": "1+1=2\n#### 2"})
    path.write_text(ok + "\n" + json.dumps({"question": "x" * 20_000_000, "answer": "#### 1"}) + "\n")
    tracemalloc.start()
    try:
        with pytest.raises(InputError, match=f"huge.jsonl:2 is 20,000,0[0-9,]+ characters long; .* at most "
                                             f"{MAX_LINE_CHARS:,}"):
            load_jsonl(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 200 * 2**20, f"{peak / 2**20:.0f} MiB to refuse a 20 MB line"
    started = time.monotonic()
    result = run_cli("bench", "gsm8k", "--backend", "local", "--model", "bigscience/bloom", "--data", path,
                     "--run-dir", tmp_path / "run", timeout=120)
    assert_one_line_error(result, "huge.jsonl:2", "at most", code=2)
    assert time.monotonic() - started < 60
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Q: 1?\nA: 1.\n" * 200_000)
    result = run_cli("bench", "gsm8k", "--backend", "local", "--model", "bigscience/bloom", "--prompt-file",
                     prompt, "--run-dir", tmp_path / "run2", timeout=120)
    assert_one_line_error(result, "--prompt-file", "at most", code=2)


@pytest.mark.parametrize("args, needle", [
    (["--servers", "2", "--replicas", "1000"], "would start 2000 server processes"),
    (["--servers", "4", "--replicas", "17"], "would start 68 server processes"),
])
def test_local_swarm_size_is_bounded(run_cli, tmp_path, args, needle):
    """swarm local up --replicas N had no bound nor memory check ('model tiny' had one)."""
    result = run_cli("swarm", "local", "up", "--run-dir", tmp_path / "s", *args, timeout=60)
    assert_one_line_error(result, needle, "at most", code=2)
    assert not (tmp_path / "s").exists(), "refused before the run dir is touched"


def test_dead_multiprocessing_dirs_of_killed_processes_are_removed(tmp_path, monkeypatch):
    """A process killed with kill -9 leaves its pymp-* dir with a listener socket nobody answers: removed
    at the next command; a dir whose listener is alive, an empty one and a young one are kept."""
    import os
    import socket
    import tempfile

    from petals_ops.util import tmpclean

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead, live, empty, young = (tmp_path / f"pymp-{name}" for name in ("dead", "live", "empty", "young"))
    for d in (dead, live, empty, young):
        d.mkdir()
    closed = socket.socket(socket.AF_UNIX)
    closed.bind(str(dead / "listener-a"))
    closed.close()  # the socket file stays, nobody listens: what a killed process leaves
    young_closed = socket.socket(socket.AF_UNIX)
    young_closed.bind(str(young / "listener-c"))
    young_closed.close()
    with socket.socket(socket.AF_UNIX) as listening:
        listening.bind(str(live / "listener-b"))
        listening.listen()
        for d in (dead, live, empty):
            os.utime(d, (time.time() - 120, time.time() - 120))
        assert tmpclean.remove_dead_multiprocessing_dirs(min_age=60) == [str(dead)]
    assert not dead.exists() and live.exists() and empty.exists() and young.exists()
