"""``petals-ops watch`` on the loopback fleet (real sshd, Docker engines, Petals CPU servers, the DHT), one
watch process for the module, run as an operator runs it (interval 3 s, K = 2 bad readings):

- a stopped container is restarted at the second bad reading, while a host whose sshd is down is reported
  unknown and never acted on;
- a frozen server (every process of its container SIGSTOPped: running for Docker, not answering the
  reachability probe, then gone from the DHT) is restarted after K readings; watch is killed (-9) in the
  middle of that restart and started again: the action is journaled as interrupted and not repeated on
  the spot (its backoff holds; only fresh readings after it lead to another restart);
- a second watch on the same inventory is refused; --dry-run on a healthy fleet proposes nothing; the
  metrics count what was done;
- a flapping server (its container stopped again after each restart) is restarted up to the hourly limit,
  then held back: the held-back gauge goes to 1 and the session's real Prometheus, scraping this watch with
  the shipped rules, has PetalsWatchRemediationFailing pending.

Every rule's edge cases (backoff, the per-pass cap, recreate and give up, spares) are the planner's unit
tests (tests/test_watch_planner.py); spares on real hosts are the rehearsal's (tests/test_rehearsal.py).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from petals_ops.fleet.watch.journal import records
from tests.conftest import cli_env
from tests.helpers import assert_one_line_error

TOKEN_ENV, TOKEN = "PETALS_OPS_TEST_HF_TOKEN", "hf_TESTtoken_9f8e7d6c5b4a"
A, B = "a10-1/petals-server-0", "a10-2/petals-server-0"
INTERVAL = 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class WatchProcess:
    def __init__(self, args: list[str], log):
        self.log = log
        self.proc = subprocess.Popen([sys.executable, "-m", "petals_ops.cli.main", "watch", *args],
                                     stdout=open(log, "a"), stderr=subprocess.STDOUT,  # noqa: SIM115
                                     env=cli_env(**{TOKEN_ENV: TOKEN}), start_new_session=True)

    def kill(self, sig=signal.SIGTERM, timeout: float = 60) -> int:
        """SIGTERM: to watch (it finishes its pass, closes its DHT client, exits); SIGKILL: to its whole
        process group, as systemd kills a unit's processes."""
        if self.proc.poll() is None:
            if sig == signal.SIGKILL:
                os.killpg(self.proc.pid, sig)
            else:
                os.kill(self.proc.pid, sig)
        return self.proc.wait(timeout)


@pytest.fixture(scope="module")
def watched(fleet_lab, tiny_model_dir, tmp_path_factory, run_cli):
    """a10-1 (0:2) and a10-2 (2:4) up, and a watch over them running in the background."""
    tmp = tmp_path_factory.mktemp("watch")
    data = fleet_lab.inventory(tiny_model_dir, port=fleet_lab.server_port(), token_env=TOKEN_ENV)
    path = fleet_lab.write_inventory(tmp / "petals-ops.yaml", data)

    class W:
        lab, dir, inventory = fleet_lab, tmp, path
        journal = tmp / "journal.jsonl"
        log = tmp / "watch.log"
        metrics = f"127.0.0.1:{free_port()}"
        args = ["-i", str(path), "--interval", f"{INTERVAL}s", "--bad-readings", "2", "--backoff", "30s",
                "--healthy-reset", "30s", "--startup-grace", "20s", "--stop-timeout", "15",
                "--journal", str(tmp / "journal.jsonl"),
                "--metrics-listen", metrics]
        proc: WatchProcess | None = None

        @classmethod
        def start(cls):
            cls.proc = WatchProcess(cls.args, cls.log)
            wait_for(lambda: any(r["type"] == "start" and r["pid"] == cls.proc.proc.pid
                                 for r in records(cls.journal)), 60, "watch to start")

        @classmethod
        def actions(cls, kind=None, key=None):
            return [r for r in records(cls.journal) if r["type"] == "action"
                    and (kind is None or r["kind"] == kind) and (key is None or r["key"] == key)]

        @classmethod
        def outcome(cls, action_id):
            return next((r for r in records(cls.journal) if r["type"] == "outcome" and r["id"] == action_id),
                        None)

        @classmethod
        def dht(cls, key):
            """The DHT state of ``key`` in watch's latest reading (kept beside whichever journal is in use,
            as WatchLoop names it)."""
            readings = cls.journal.with_name(cls.journal.name + ".readings.json")
            try:
                last = json.loads(readings.read_text())[-1]
            except (OSError, ValueError, IndexError):
                return None
            return next((s["dht"] for h in last["hosts"] for s in h["servers"]
                         if f"{s['host']}/{s['container']}" == key), None)

    result = run_cli("up", "-i", path, "--timeout", "300", "-o", "json", timeout=400,
                     env=cli_env(**{TOKEN_ENV: TOKEN}))
    assert result.returncode == 0, result.stderr + result.stdout
    W.start()
    try:
        yield W
    finally:
        if W.proc is not None:
            W.proc.kill()
        for host in ("a10-1", "a10-2"):
            if fleet_lab.hosts[host].sshd_pid is None:
                fleet_lab.start_sshd(host)
        fleet_lab.remove_containers()


def test_stopped_container_restarted_and_unreadable_host_left_alone(watched):
    w = watched
    wait_for(lambda: w.dht(A) == "ONLINE" and w.dht(B) == "ONLINE", 90, "both servers ONLINE in watch's view")
    w.lab.stop_sshd("a10-1")  # a10-1's server still serves: only its host cannot be read
    try:
        client = w.lab.docker("a10-2")
        stopped = time.time()
        client.containers.get("petals-server-0").stop(timeout=10)
        action = wait_for(lambda: w.actions("restart", B), 60, "watch to restart a10-2's server")[0]
        done = wait_for(lambda: w.outcome(action["id"]), 60, "the restart's outcome")
        assert done["outcome"] == "ok", done
        # exited, or (caught while stopping) running and announced OFFLINE
        assert action["t"] > stopped and ("exited" in action["reason"] or "OFFLINE" in action["reason"])
        assert "(2 readings)" in action["reason"]  # K = 2: the second pass that saw it acted
        reading = next(r for r in records(w.journal)
                       if r["type"] == "reading" and r["id"] == action["reading"])
        assert "connection refused" in reading["unknown_hosts"]["a10-1"]
        assert client.containers.get("petals-server-0").status == "running"
        peer = client.containers.get("petals-server-0").labels["io.petals-ops.peer-id"]
        wait_for(lambda: w.dht(B) == "ONLINE", 120, "a10-2 ONLINE again (same peer id)")
        assert client.containers.get("petals-server-0").labels["io.petals-ops.peer-id"] == peer
        wait_for(lambda: "a10-1: unknown this pass, not acted on" in w.log.read_text(), 30, "the log line")
    finally:
        w.lab.start_sshd("a10-1")
    assert not [r for r in w.actions() if r["key"].startswith("a10-1/")], "acted on an unreadable host"


def test_frozen_server_restarted_and_kill_9_mid_action_repeats_nothing(watched):
    w = watched
    client = w.lab.docker("a10-1")
    container = client.containers.get("petals-server-0")
    wait_for(lambda: w.dht(A) == "ONLINE", 90, "a10-1 ONLINE")
    pids = [int(row[1]) for row in container.top()["Processes"]]
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)  # frozen: Docker says running, its DHT record expires (30 s here)
    frozen = time.time()
    action = wait_for(lambda: w.actions("restart", A), 150, "watch to restart the frozen server")[0]
    # seen by the reachability probe (no answer) or, once its record expired, by the DHT (a zombie)
    assert action["t"] > frozen and "(2 readings)" in action["reason"]
    assert "does not answer" in action["reason"] or "zombie" in action["reason"], action
    # the restart waits --stop-timeout (15 s) for the frozen server before SIGKILL: kill watch meanwhile
    assert w.outcome(action["id"]) is None
    assert w.proc.kill(signal.SIGKILL) == -signal.SIGKILL
    w.start()
    interrupted = wait_for(lambda: w.outcome(action["id"]), 30, "the interrupted action's outcome")
    assert interrupted["outcome"] == "interrupted"
    assert f"action {action['id']} was interrupted" in w.log.read_text()
    # The new watch does not redo it on the spot: the interrupted restart counts as an attempt, so its
    # backoff (30 s) holds; only then, if the readings still say so (the engine may have dropped the
    # restart with watch's connection), is it restarted again.
    wait_for(lambda: w.dht(A) == "ONLINE", 200, "a10-1 ONLINE again")
    again = w.actions("restart", A)[1:]
    assert all(r["t"] >= action["t"] + 29 for r in again), (action, again)
    if again:
        assert "restart held back (backoff" in w.log.read_text()
    assert client.containers.get("petals-server-0").labels["io.petals-ops.peer-id"] == \
        container.labels["io.petals-ops.peer-id"]


def test_second_watch_refused_dry_run_and_metrics(watched, run_cli):
    w = watched
    env = cli_env(**{TOKEN_ENV: TOKEN})
    second = run_cli("watch", "-i", w.inventory, "--once", "--journal", w.dir / "other.jsonl", env=env)
    assert_one_line_error(second, "another 'petals-ops watch' is running on inventory", code=1)
    dry = run_cli("watch", "-i", w.inventory, "--dry-run", "--interval", "1s", "--bad-readings", "2",
                  "--journal", w.journal, env=env, timeout=120)
    assert dry.returncode == 0 and "no remediations" in dry.stdout, dry.stdout + dry.stderr
    text = urllib.request.urlopen(f"http://{w.metrics}/metrics", timeout=10).read().decode()
    metrics = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("petals_ops_watch_")}
    assert metrics['petals_ops_watch_actions_total{kind="restart",outcome="ok"}'] >= 1
    assert metrics['petals_ops_watch_actions_total{kind="restart",outcome="interrupted"}'] == 1
    assert time.time() - metrics["petals_ops_watch_last_pass_timestamp_seconds"] < 10 * INTERVAL
    assert metrics["petals_ops_watch_interval_seconds"] == INTERVAL
    assert metrics["petals_ops_watch_hosts_unknown"] == 0
    assert metrics["petals_ops_watch_servers_given_up"] == 0
    # nothing secret in the journal or the log
    assert TOKEN not in w.journal.read_text() and TOKEN not in w.log.read_text()


def test_flapping_server_held_back_at_the_hourly_limit_and_alert_pending(watched, prometheus):
    w = watched
    w.proc.kill()  # this module's watch: restarted with a limit of 2 actions per server per hour
    w.journal = w.dir / "flap.jsonl"  # a fresh journal: the earlier tests' actions do not count
    w.args = ["-i", str(w.inventory), "--interval", f"{INTERVAL}s", "--bad-readings", "2", "--backoff", "1s",
              "--healthy-reset", "1h", "--max-per-server-per-hour", "2", "--stop-timeout", "15",
              "--journal", str(w.journal), "--metrics-listen", w.metrics]
    w.start()
    prometheus.set_targets([w.metrics])
    try:
        client = w.lab.docker("a10-2")
        for n in (1, 2):  # stopped, restarted; stopped, restarted
            wait_for(lambda: client.containers.get("petals-server-0").status == "running", 60, "running")
            client.containers.get("petals-server-0").stop(timeout=10)
            action = wait_for(lambda: w.actions("restart", B)[n - 1:], 60, f"restart {n} of a10-2")[0]
            assert wait_for(lambda: w.outcome(action["id"]), 60, "its outcome")["outcome"] == "ok"
        wait_for(lambda: client.containers.get("petals-server-0").status == "running", 60, "running")
        client.containers.get("petals-server-0").stop(timeout=10)  # the third time: held back
        wait_for(lambda: "held back (rate limit: 2 actions in the last hour (max 2))" in w.log.read_text(),
                 60, "watch to hold the flapping server back")
        held = wait_for(lambda: prometheus.value("petals_ops_watch_servers_held_back"), 30,
                        "Prometheus to scrape servers_held_back > 0")
        assert held == 1
        alert = 'ALERTS{alertname="PetalsWatchRemediationFailing",alertstate="pending"}'
        wait_for(lambda: prometheus.value(alert), 30, "PetalsWatchRemediationFailing pending")
        time.sleep(2 * INTERVAL)
        assert len(w.actions()) == 2, w.actions()  # nothing more: no recreate, no restart
        assert client.containers.get("petals-server-0").status == "exited"
    finally:
        prometheus.set_targets([])
