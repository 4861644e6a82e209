"""Hostile and careless inputs (issue 12): each case ends in one line, never a traceback, a leaked
secret or unbounded work. Fast: no swarm, no hosts (port 9 on loopback has nothing listening)."""

from __future__ import annotations

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
                           "hosts:\n  a: {gpus: 0, server: *s}\n  b: {gpus: 0, server: {<<: *s, port: 5000}}\n")
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
    from petals_ops.errors import InputError, redact

    assert redact(f"a {TOKEN}, b hf_token hf_transfer") == "a hf_***, b hf_token hf_transfer"
    assert TOKEN not in InputError(f"bad {TOKEN}", fix=f"not {TOKEN}").one_line()
    result = run_cli("bench", "gsm8k", "--paths", TOKEN)
    assert result.returncode == 2 and TOKEN[3:] not in result.stderr, result.stderr


# --- host lists and option values: usage errors before any network work ------------------------------
@pytest.mark.parametrize("command", [["hosts", "check"], ["provision"], ["plan"], ["up"], ["restart"], ["down"],
                                     ["status"]])
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


@pytest.mark.parametrize("command", [["hosts", "check"], ["status", "-o", "json"], ["up", "--no-wait", "-o", "json"]])
def test_unreachable_host_prints_no_library_traceback(tmp_path, run_cli, not_ssh_port, command):
    path = write(tmp_path, {"server": {"device": "cpu"},
                            "hosts": {"a": {"address": "127.0.0.1", "port": not_ssh_port, "gpus": 0}}})
    result = run_cli(*command, "-i", path, timeout=120)
    assert_one_line_error(result, "SSH protocol banner", code=1)
    assert result.stderr.count("\n") == 1, result.stderr
