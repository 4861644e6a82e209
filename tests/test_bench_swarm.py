"""The bench against real local swarms (tiny model, random weights: machinery, not accuracy)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from petals_ops.util import procs
from petals_ops.bench.store import read_records
from tests.conftest import cli_env

pytestmark = pytest.mark.swarm
TOKENS = "8"


def _env(swarm) -> dict:
    return cli_env(PETALS_OPS_SWARM_DIR=swarm.run_dir)


def _bench(run_cli, swarm, run_dir, *args, timeout=300):
    return run_cli("bench", "gsm8k", "--run-dir", run_dir, "--max-new-tokens", TOKENS, *args,
                   env=_env(swarm), timeout=timeout)


def _ids(run_dir) -> Counter:
    return Counter(r["id"] for r in read_records(run_dir) if not r.get("error"))


def _sessions_seen(swarm) -> Counter:
    """Inference sessions the swarm's servers opened and closed so far (their own log lines)."""
    seen = Counter()
    for server in swarm.servers:
        text = Path(server.log).read_text(errors="replace")
        seen.update(open=text.count("rpc_inference.open("), close=text.count("rpc_inference.close("))
    return seen


def test_cot_and_sc_swarm_equal_local_and_report(run_cli, local_swarm, tmp_path):
    runs = {}
    before = _sessions_seen(local_swarm)
    for method, extra in (("cot", ()), ("sc", ("--paths", "4"))):
        for backend in ("petals", "local"):
            run_dir = tmp_path / f"{method}-{backend}"
            # through the swarm the three questions run at once (sessions share one client), locally
            # one after the other: the records must not tell
            conc = "3" if backend == "petals" else "1"
            result = _bench(run_cli, local_swarm, run_dir, "--limit", "3", "--method", method,
                            "--backend", backend, "--concurrency", conc, *extra)
            assert result.returncode == 0, result.stderr
            assert "report: " in result.stdout and "tokens/s" in result.stdout
            records = sorted(read_records(run_dir), key=lambda r: r["id"])  # in the order they finished
            assert [r["id"] for r in records] == ["gsm8k_demo:1", "gsm8k_demo:2", "gsm8k_demo:3"]
            assert all(r["error"] is None and len(r["paths"]) == (1 if method == "cot" else 4)
                       for r in records)
            runs[method, backend] = records
            summary = json.loads((run_dir / "summary.json").read_text())
            assert summary["n"] == summary["scored"] == 3 and summary["errors"] == 0
            assert summary["tokens"] == sum(r["tokens"] for r in records) > 0
            assert 0 <= summary["accuracy_wilson95"][0] <= summary["accuracy_wilson95"][1] <= 1
            assert ((run_dir / "report.md").is_file()
                    and (run_dir / "maj_at_k.png").read_bytes()[:4] == b"\x89PNG")
            if backend == "petals":  # the route's servers are recorded and are the swarm's
                peers = {s["peer_id"] for s in summary["swarm"]}
                assert set(summary["servers_served"]) and set(summary["servers_served"]) <= peers
            if method == "sc":
                assert list(summary["maj_at_k"]) == ["1", "2", "3", "4"]
                assert records[0]["batches"] == [4]  # K paths, one inference session
    # greedy completions (and, with the same per-path seeds, sampled ones) from the swarm equal the
    # local backend
    for method in ("cot", "sc"):
        swarm_texts = [[p["raw"] for p in r["paths"]] for r in runs[method, "petals"]]
        local_texts = [[p["raw"] for p in r["paths"]] for r in runs[method, "local"]]
        assert swarm_texts == local_texts
    # every session the client opened was ended on the servers (ended in the background, all at once)
    deadline = time.monotonic() + 60
    while (seen := _sessions_seen(local_swarm))["open"] != seen["close"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert seen["open"] == seen["close"], seen
    assert seen["open"] - before["open"] >= 2 * 6  # 6 sessions through the swarm, 2 servers each
    sampled = [p["raw"] for p in runs["sc", "petals"][0]["paths"]]
    assert len(set(sampled)) > 1  # the paths really are different samples
    assert all(p["tokens"] <= int(TOKENS) for r in runs["sc", "petals"] for p in r["paths"])

    # the same command again: nothing to do, nothing appended
    again = _bench(run_cli, local_swarm, tmp_path / "cot-petals", "--limit", "3")
    assert again.returncode == 0 and "3 of 3 questions already done; 0 to run" in again.stderr
    assert len(read_records(tmp_path / "cot-petals")) == 3
    # a different config on that run dir: refused in one line, exit 2
    other = _bench(run_cli, local_swarm, tmp_path / "cot-petals", "--limit", "3", "--max-new-tokens", "9")
    assert other.returncode == 2 and other.stderr.strip().startswith("error: ")
    assert "different config" in other.stderr and "max_new_tokens 8 -> 9" in other.stderr

    report = run_cli("bench", "report", tmp_path / "sc-petals", tmp_path / "cot-petals",
                     "--out", tmp_path / "cmp")
    assert report.returncode == 0, report.stderr
    text = (tmp_path / "cmp" / "report.md").read_text()
    assert "sc-petals" in text and "cot-petals" in text and (tmp_path / "cmp" / "maj_at_k.png").is_file()


def _popen_bench(swarm, run_dir, *args) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "petals_ops.cli.main", "bench", "gsm8k", "--run-dir", str(run_dir), *args]
    return subprocess.Popen(cmd, env=_env(swarm), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_records(run_dir: Path, n: int, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(read_records(run_dir)) >= n:
            return
        if proc.poll() is not None:
            pytest.fail(f"bench exited early ({proc.returncode}): {proc.stderr.read()[-2000:]}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail("no records in time")


def test_kill_9_then_resume_runs_every_question_once(run_cli, local_swarm, tmp_path):
    run_dir = tmp_path / "killed"
    args = ("--limit", "6", "--method", "sc", "--paths", "2", "--max-new-tokens", "12", "--timeout", "60")
    proc = _popen_bench(local_swarm, run_dir, *args)
    _wait_for_records(run_dir, 1, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stdout.close(), proc.stderr.close()
    before = len(read_records(run_dir))
    assert 1 <= before < 6, "the bench was not killed mid-run"
    result = run_cli("bench", "gsm8k", "--run-dir", run_dir, *args, env=_env(local_swarm), timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"{before} of 6 questions already done" in result.stderr
    assert _ids(run_dir) == Counter({f"gsm8k_demo:{i}": 1 for i in range(1, 7)})
    assert len(read_records(run_dir)) == 6


def test_run_completes_when_a_replica_server_stops_mid_run(swarm_factory, tmp_path):
    swarm = swarm_factory(servers=2, replicas=2)
    run_dir = tmp_path / "failover"
    args = ("--limit", "5", "--max-new-tokens", "12", "--retries", "4", "--backoff", "0.5",
            "--client-retries", "1", "--request-timeout", "15", "--timeout", "120")
    proc = _popen_bench(swarm, run_dir, *args)
    try:
        _wait_for_records(run_dir, 1, proc)
        served = read_records(run_dir)[0]["servers"]
        # stop a server that has just served (its peer id is in its log), so the next sessions must avoid it
        victim = next(p for p in swarm.servers if any(peer in Path(p.log).read_text() for peer in served))
        victim_peer = next(peer for peer in served if peer in Path(victim.log).read_text())
        assert procs.stop_group(victim.pgid)
        stopped_after = len(read_records(run_dir))
        _out, err = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    records = read_records(run_dir)
    assert _ids(run_dir) == Counter({f"gsm8k_demo:{i}": 1 for i in range(1, 6)})
    assert all(r["error"] is None for r in records), [r["failures"] for r in records]
    later = records[stopped_after + 1:]  # the question in flight at the stop may have finished on the victim
    assert later and all(victim_peer not in r["servers"] for r in later)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["errors"] == 0 and summary["scored"] == 5


def test_timeout_gives_error_records_and_exit_3(run_cli, local_swarm, tmp_path):
    run_dir = tmp_path / "slow"
    result = run_cli("bench", "gsm8k", "--run-dir", run_dir, "--limit", "1", "--max-new-tokens", "400",
                     "--timeout", "0.5", "--retries", "1", "--backoff", "0.1", env=_env(local_swarm),
                     timeout=200)
    assert result.returncode == 3, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(
        "error: 1 of 1 questions ended in an error record")
    (record,) = read_records(run_dir)
    assert (record["error"].startswith("QuestionTimeout") and record["attempts"] == 2
            and len(record["failures"]) == 2)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["errors"] == 1 and summary["scored"] == 0 and summary["accuracy"] is None
