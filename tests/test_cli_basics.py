"""The CLI's contract without a swarm: fast --help everywhere, one-line errors for bad input."""

import json
import subprocess
import sys

import pytest

from tests.helpers import assert_one_line_error

HEAVY = ("torch", "transformers", "hivemind", "petals", "matplotlib")  # every --help, bench's included


def test_help_of_every_command_imports_nothing_heavy():
    """Walk every command and group, ask for --help in one process, then check sys.modules."""
    code = f"""
import sys, click
from click.testing import CliRunner
from petals_ops.cli.main import cli
paths = []
def walk(cmd, path):
    paths.append(path)
    if isinstance(cmd, click.Group):
        for name, sub in cmd.commands.items():
            walk(sub, path + [name])
walk(cli, [])
runner = CliRunner()
for path in paths:
    result = runner.invoke(cli, path + ["--help"])
    assert result.exit_code == 0, (path, result.output)
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r})
print(len(paths), heavy)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    count, heavy = out.stdout.split(" ", 1)
    assert int(count) >= 8
    assert heavy.strip() == "[]", f"--help imported heavy modules: {heavy}"


def test_model_dir_that_is_not_a_model(run_cli, tmp_path):
    bogus = tmp_path / "not-a-model"
    bogus.mkdir()
    (bogus / "readme.txt").write_text("hello")
    result = run_cli("swarm", "local", "up", "--run-dir", tmp_path / "run", "--model-dir", bogus)
    assert_one_line_error(result, str(bogus), "not a model directory", code=2)


def test_servers_zero(run_cli, tmp_path, tiny_model_dir):
    result = run_cli("swarm", "local", "up", "--run-dir", tmp_path, "--model-dir", tiny_model_dir,
                     "--servers", "0")
    assert_one_line_error(result, "--servers 0", code=2)


def test_more_servers_than_blocks(run_cli, tmp_path, tiny_model_dir):
    result = run_cli("swarm", "local", "up", "--run-dir", tmp_path, "--model-dir", tiny_model_dir,
                     "--servers", "9")
    assert_one_line_error(result, "--servers 9", "4 blocks", code=2)


def test_busy_port(run_cli, tmp_path, tiny_model_dir):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli("swarm", "local", "up", "--run-dir", tmp_path, "--model-dir", tiny_model_dir,
                         "--dht-port", port)
    assert_one_line_error(result, f"--dht-port {port}", "busy", code=2)
    assert not (tmp_path / "state.json").exists()


def test_unknown_initial_peers(run_cli, tiny_model_dir):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    peer = f"/ip4/127.0.0.1/tcp/{port}/p2p/QmVps96LJCPSMA1wjMA6Y12BKZ97g7mi3q3iaoZtecjt3Y"
    result = run_cli("swarm", "status", "--initial-peers", peer, "--model", tiny_model_dir, timeout=90)
    assert_one_line_error(result, "cannot reach the swarm", peer, code=1)


def test_malformed_initial_peers(run_cli, tiny_model_dir):
    result = run_cli("swarm", "status", "--initial-peers", "localhost:31337", "--model", tiny_model_dir)
    assert_one_line_error(result, "localhost:31337", "/ip4/HOST/tcp/PORT/p2p/PEER_ID", code=2)


def test_no_local_swarm_running(run_cli, tmp_path):
    result = run_cli("swarm", "status", "--swarm-dir", tmp_path)
    assert_one_line_error(result, "no local swarm is running", str(tmp_path), code=1)
    result = run_cli("swarm", "local", "down", "--run-dir", tmp_path)
    assert result.returncode == 0 and "nothing to stop" in result.stderr


@pytest.mark.parametrize("args,needle", [(["--layers", "0"], "--layers 0"),
                                         (["--hidden", "30"], "--hidden 30")])
def test_tiny_model_bad_shape(run_cli, tmp_path, args, needle):
    result = run_cli("model", "tiny", tmp_path / "m", *args)
    assert_one_line_error(result, needle, code=2)


def test_tiny_model_is_deterministic_for_a_seed(run_cli, tmp_path):
    from safetensors.numpy import load_file

    paths = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        result = run_cli("model", "tiny", tmp_path / name, "--seed", seed, "--layers", 2)
        assert result.returncode == 0, result.stderr
        paths[name] = tmp_path / name
    a, b, c = (load_file(paths[n] / "model.safetensors") for n in "abc")
    assert sorted(a) == sorted(b) and all(k.startswith(("h.", "word_embeddings", "ln_f")) for k in a)
    assert {k.split(".")[1] for k in a if k.startswith("h.")} == {"0", "1"}  # keys Petals loads: h.{i}.*
    assert all((a[k] == b[k]).all() for k in a)
    assert any((a[k] != c[k]).any() for k in a)
    assert (paths["a"] / "tokenizer.json").read_bytes() == (paths["b"] / "tokenizer.json").read_bytes()
    meta = json.loads((paths["a"] / "petals_ops.json").read_text())
    assert meta["dht_prefix"] == "tiny-bloom-petals" and meta["num_blocks"] == 2
    again = run_cli("model", "tiny", tmp_path / "a")
    assert_one_line_error(again, "already holds a model", code=2)


def test_missing_model_dir(run_cli, tmp_path):
    result = run_cli("swarm", "local", "up", "--swarm-dir", tmp_path / "run",
                     "--model-dir", tmp_path / "no" / "such")
    assert_one_line_error(result, "no/such", "not a directory", code=2)


def test_negative_top_k_is_a_usage_error(run_cli, tiny_model_dir):
    result = run_cli("generate", "--backend", "local", "--model", tiny_model_dir, "--sample",
                     "--top-k", "-3", "x")
    assert result.returncode == 2 and "Traceback" not in result.stderr and "--top-k" in result.stderr


def test_stale_state_never_signals_a_reused_pid(tmp_path):
    """A state file from before a reboot names a pid now used by an unrelated process group: the swarm
    counts as not running, and down must not signal that group."""
    import subprocess

    from petals_ops.lab import local_swarm
    from petals_ops.util import procs

    stranger = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        swarm = local_swarm.LocalSwarm(
            run_dir=str(tmp_path), model_dir=str(tmp_path / "model"), dht_prefix="x", num_blocks=4,
            dht_port=1,
            processes=[local_swarm.SwarmProcess(name="dht", role="dht", pid=stranger.pid, pgid=stranger.pid,
                                                log="dht.log",
                                                start_time=procs.start_time(stranger.pid) - 1)],
        )
        swarm.save()
        assert not local_swarm.LocalSwarm.load(tmp_path).any_alive()
        local_swarm.down(tmp_path)
        assert stranger.poll() is None, "down killed a process that was not the swarm's"
    finally:
        stranger.kill()
        stranger.wait()


def test_interrupted_model_build_is_rebuilt(tmp_path):
    from petals_ops.lab import local_swarm
    from petals_ops.client.models import resolve_model

    half = tmp_path / "model"
    half.mkdir()
    (half / "config.json").write_text("{}")  # what a Ctrl-C during save_pretrained leaves
    path = local_swarm._tiny_model_in(tmp_path)
    assert resolve_model(str(path)).num_blocks == 4
    assert not (tmp_path / "model.building").exists()
