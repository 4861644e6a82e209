"""A real local swarm: coverage, token-exact generation, failures, and a clean shutdown."""

import json
import os
import signal
import time

import pytest

from petals_ops.lab import local_swarm
from petals_ops.util import procs
from petals_ops.util import tmpclean
from tests.helpers import assert_one_line_error


def status_json(run_cli, swarm_dir):
    result = run_cli("swarm", "status", "--swarm-dir", swarm_dir, "--output", "json", timeout=120)
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, json.loads(result.stdout)


def test_status_shows_every_block_served(run_cli, local_swarm):
    code, snap = status_json(run_cli, local_swarm.run_dir)
    assert code == 0
    cov = snap["coverage"]
    assert cov["blocks_total"] == 4 and cov["uncovered_blocks"] == [] and cov["fully_served"] is True
    assert cov["min_online_servers_per_block"] == 1
    assert [b["index"] for b in snap["blocks"]] == [0, 1, 2, 3]
    assert all(list(b["servers"].values()) == ["ONLINE"] for b in snap["blocks"])
    spans = sorted((s["start_block"], s["end_block"]) for s in snap["servers"])
    assert spans == [(0, 2), (2, 4)]
    for server in snap["servers"]:
        assert server["version"] and server["torch_dtype"] == "float32" and server["quant_type"] == "none"
        assert server["cache_tokens_left"] > 0 and server["throughput"] == 1.0


def test_status_with_explicit_peers_and_local_status(run_cli, local_swarm):
    result = run_cli("swarm", "status", "--initial-peers", *local_swarm.initial_peers,
                     "--model", local_swarm.model_dir, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "full forward pass: yes" in result.stdout
    result = run_cli("swarm", "local", "status", "--run-dir", local_swarm.run_dir, "--output", "json")
    assert result.returncode == 0, result.stderr
    state = json.loads(result.stdout)
    assert state["initial_peers"] == local_swarm.initial_peers
    assert [p["alive"] for p in state["processes"]] == [True, True, True]


def test_greedy_through_swarm_equals_in_process_transformers(local_swarm):
    """The swarm's greedy tokens equal BloomForCausalLM.generate on the same checkpoint, token for token."""
    import torch
    from transformers import AutoTokenizer, BloomForCausalLM

    from petals_ops.client import generation, loading

    prompt = "Q: A baker has 12 trays of 24 muffins. How many muffins are there?\nA:"
    with loading.load_swarm_model(local_swarm.model, local_swarm.initial_peers) as loaded:
        swarm = generation.generate(loaded, prompt, max_new_tokens=24)
    tokenizer = AutoTokenizer.from_pretrained(local_swarm.model_dir)
    reference = BloomForCausalLM.from_pretrained(local_swarm.model_dir, torch_dtype=torch.float32).eval()
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        expected = reference.generate(ids, max_new_tokens=24, do_sample=False)[0, ids.shape[1]:].tolist()
    assert len(expected) == 24
    assert swarm.new_token_ids[0] == expected


def test_generate_cli_streams_text(run_cli, local_swarm):
    result = run_cli("generate", "--swarm-dir", local_swarm.run_dir, "Q: 2+2?", "--max-new-tokens", 8,
                     timeout=120)
    assert result.returncode == 0, result.stderr
    assert "8 tokens in" in result.stderr and "petals" in result.stderr
    local = run_cli("generate", "--swarm-dir", local_swarm.run_dir, "Q: 2+2?", "--max-new-tokens", 8,
                    "--backend", "local", timeout=120)
    assert local.returncode == 0, local.stderr
    assert local.stdout == result.stdout  # greedy: same text from the swarm and in-process


def _live_processes_of(pgids, run_dir):
    """Every non-zombie process in the swarm's process groups or naming its run dir (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        if not procs.pid_alive(pid):
            continue
        try:
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode()
            pgid = os.getpgid(pid)
        except (FileNotFoundError, ProcessLookupError):
            continue
        if pgid in pgids or str(run_dir) in cmdline:
            found.append((pid, cmdline))
    return found


def test_lifecycle_failure_and_clean_down(run_cli, tmp_path, tiny_model_dir):
    """up via the CLI; a second up is refused; a killed server uncovers its blocks and generate fails
    fast naming them; down leaves no process of the swarm in the process table (p2pd included)."""
    run_dir = tmp_path / "swarm"
    up = run_cli("swarm", "local", "up", "--run-dir", run_dir, "--model-dir", tiny_model_dir, timeout=300)
    assert up.returncode == 0, up.stderr
    swarm = local_swarm.LocalSwarm.load(run_dir)
    assert up.stdout.split() == swarm.initial_peers
    try:
        again = run_cli("swarm", "local", "up", "--run-dir", run_dir, "--model-dir", tiny_model_dir)
        assert_one_line_error(again, "already running", code=2)

        pgids = {p.pgid for p in swarm.processes}
        p2pd = [pid for g in pgids for pid in procs.group_members(g)
                if "p2pd" in open(f"/proc/{pid}/cmdline").read()]
        assert len(p2pd) >= 3, "each process of the swarm runs a p2pd daemon in its group"

        victim = swarm.process("server-1")  # blocks 2:4
        os.killpg(victim.pgid, signal.SIGKILL)  # a crash: no OFFLINE announcement, the record must expire

        started = time.monotonic()
        failed = run_cli("generate", "--swarm-dir", run_dir, "hello", "--max-new-tokens", 4,
                         "--max-retries", 1, timeout=180)
        assert_one_line_error(failed, code=1)  # the dead server's record may still be listed: any clear line
        assert time.monotonic() - started < 150, "generate must give up in bounded time"

        deadline = time.monotonic() + 90  # records expire after 30 s (local swarm --expiration)
        while True:
            code, snap = status_json(run_cli, run_dir)
            if snap["coverage"]["uncovered_blocks"] == [2, 3]:
                break
            assert time.monotonic() < deadline, snap["coverage"]
            time.sleep(3)
        assert code == 1 and snap["coverage"]["fully_served"] is False

        failed = run_cli("generate", "--swarm-dir", run_dir, "hello", "--max-new-tokens", 4, timeout=120)
        assert_one_line_error(failed, "blocks 2:4", "no ONLINE server", code=1)
        sockets = tmpclean.hivemind_sockets_of(pid for g in pgids for pid in procs.group_members(g))
        assert any("p2pclient" in s for s in sockets) and any("p2pd" in s for s in sockets), sockets
    finally:
        down = run_cli("swarm", "local", "down", "--run-dir", run_dir, timeout=120)
    assert down.returncode == 0, down.stderr
    assert _live_processes_of(pgids, run_dir) == []
    assert [s for s in sockets if os.path.exists(s)] == [], "down removes the /tmp sockets of what it stopped"
    assert not (run_dir / "state.json").exists()


def _state(run_dir, processes, **extra):
    data = {"run_dir": str(run_dir), "model_dir": str(run_dir / "model"), "dht_prefix": "x-petals",
            "num_blocks": 4, "dht_port": 9, "initial_peers": [], "processes": processes, **extra}
    (run_dir / "state.json").write_text(json.dumps(data))


def _entry(name, pid, start_time, pgid=None):
    return {"name": name, "role": "server", "pid": pid, "pgid": pid if pgid is None else pgid,
            "log": "x.log", "start_time": start_time}


def test_down_signals_only_groups_this_swarm_started(run_cli, tmp_path):
    """Issue 23 #3: down once killed whatever group state.json named: a stranger's group (start time null
    or its real one with a foreign command line), init's, and its own. Identity is verified first."""
    import subprocess

    stranger = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        own = os.getpgrp()  # the test's group is also the group of the 'down' it starts
        _state(tmp_path, [
            _entry("server-0", stranger.pid, None),
            _entry("server-1", stranger.pid, procs.start_time(stranger.pid)),
            _entry("server-2", 1, procs.start_time(1)),
            _entry("dht", own, procs.start_time(own)),
        ])
        swarm = local_swarm.LocalSwarm.load(tmp_path)
        assert [p.running() for p in swarm.processes] == [False] * 4
        result = run_cli("swarm", "local", "down", "--run-dir", tmp_path, timeout=60)
        assert result.returncode == 0, result.stderr
        assert stranger.poll() is None, "a stranger's process group was signalled"
    finally:
        stranger.kill()
        stranger.wait()
    for bad in (0, -5):
        _state(tmp_path, [_entry("dht", bad, 1)])
        result = run_cli("swarm", "local", "down", "--run-dir", tmp_path, timeout=60)
        assert_one_line_error(result, "state.json is unreadable", f"group {bad}", code=1)
    for pgid in (0, 1, os.getpgrp(), os.getpid()):
        assert not procs.may_signal_group(pgid)
        try:
            procs.stop_group(pgid)
        except ValueError:
            continue
        raise AssertionError(f"stop_group({pgid}) did not refuse")


@pytest.mark.parametrize("content, needle", [
    ("[]", "not an object"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('{"num_blocks": -3}', "num_blocks is -3"),
    ('{"num_blocks": "four"}', "num_blocks is 'four'"),
    ('{"processes": {"a": 1}}', "processes is"),
    ('{"processes": [[1, 2]]}', "processes[0] is a list"),
    ('{"processes": [{"pid": "12"}]}', "processes[0].pid"),
    ("\xff\xfe{", "unreadable"),
], ids=["list", "deep", "negative-blocks", "text-blocks", "processes-dict", "process-list", "pid-text",
        "binary"])
@pytest.mark.parametrize("command", [["swarm", "local", "down"], ["swarm", "local", "status"],
                                     ["swarm", "status"]])
def test_wrong_shape_state_is_one_line(run_cli, tmp_path, content, needle, command):
    """Issue 23 #10: a damaged or hand-edited state.json is one line, never a traceback."""
    (tmp_path / "state.json").write_bytes(content.encode("latin-1"))
    result = run_cli(*command, "--swarm-dir", tmp_path, timeout=60)
    assert_one_line_error(result, "state.json is unreadable", needle, code=1)


def test_up_down_leaves_no_multiprocessing_dirs(run_cli, tmp_path, tiny_model_dir):
    """Issue 23 #14: each up/down cycle left three /tmp/pymp-* dirs (a process stopped by a signal never
    removes its own). The swarm's processes get a TMPDIR of their own, which down removes."""
    run_dir = tmp_path / "swarm"
    up = run_cli("swarm", "local", "up", "--run-dir", run_dir, "--model-dir", tiny_model_dir,
                 "--servers", 1, timeout=300)
    assert up.returncode == 0, up.stderr
    tmp = tmpclean.swarm_tempdir(str(run_dir.resolve()))
    try:
        deadline = time.monotonic() + 30
        while not [d for d in os.listdir(tmp) if d.startswith("pymp-")]:
            assert time.monotonic() < deadline, os.listdir(tmp)  # the swarm's pymp-* dirs are there
            time.sleep(0.5)
    finally:
        down = run_cli("swarm", "local", "down", "--run-dir", run_dir, timeout=120)
    assert down.returncode == 0, down.stderr
    assert not os.path.exists(tmp)
