"""The exporter without a swarm: CLI behaviour, rendering, naming conventions, promtool on the output."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from petals_ops.util.errors import InputError
from petals_ops.monitoring.collector import SwarmCollector
from petals_ops.monitoring.refresher import ExporterState
from petals_ops.monitoring.server import parse_duration, parse_listen
from petals_ops.swarm.health import BlockHealth, ServerRecord, SwarmSnapshot
from petals_ops.lab.prometheus_lab import PROMTOOL

HEAVY = ("torch", "transformers", "hivemind", "petals")
FAKE_PEER = "/ip4/127.0.0.1/tcp/9/p2p/QmXnTFvGexkbhYVWAP95ZsSKJCG5j2xAi4vktJyRsfhnJY"


def snapshot(taken_at: float) -> SwarmSnapshot:
    servers = [
        ServerRecord("QmA", "ONLINE", 0, 2, 12.5, cache_tokens_left=4096, version="2.2.0.post1",
                     torch_dtype="float32", quant_type="none", public_name="a10-1", using_relay=False),
        ServerRecord("QmB", "OFFLINE", 2, 4, 3.0, cache_tokens_left=None, version="2.2.0.post1",
                     torch_dtype="bfloat16", quant_type="nf4", public_name=None, using_relay=True),
        ServerRecord("QmC", "JOINING", 1, 3, 7.0, cache_tokens_left=0),
    ]
    blocks = [
        BlockHealth(0, "m-petals.0", {"QmA": "ONLINE"}),
        BlockHealth(1, "m-petals.1", {"QmA": "ONLINE", "QmC": "JOINING"}),
        BlockHealth(2, "m-petals.2", {"QmB": "OFFLINE", "QmC": "JOINING"}),
        BlockHealth(3, "m-petals.3", {"QmB": "OFFLINE"}),
    ]
    return SwarmSnapshot("m", "m-petals", 4, taken_at, 0.01, blocks, servers)


def samples(text: str) -> dict[tuple, float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def exposition(state: ExporterState) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SwarmCollector(lambda: state))
    return generate_latest(registry).decode()


def test_help_does_not_import_heavy_modules():
    code = (
        "import sys\n"
        "from petals_ops.cli.main import cli\n"
        "for args in (['--help'], ['exporter', '--help']):\n"
        "    try:\n"
        "        cli(args, prog_name='petals-ops')\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0, e.code\n"
        f"print('HEAVY', [m for m in {HEAVY!r} if m in sys.modules])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert "exporter" in result.stdout and "--refresh" in result.stdout
    assert "HEAVY []" in result.stdout


@pytest.mark.parametrize("args, needle", [
    (["--listen", "nonsense"], "--listen 'nonsense' is not HOST:PORT"),
    (["--listen", "127.0.0.1:99999"], "is not HOST:PORT"),
    (["--listen", "203.0.113.7:9469"], "cannot listen there"),
    (["--refresh", "soon"], "--refresh 'soon' is not a duration"),
    (["--refresh", "1" + "0" * 23 + "h"], "is longer than 86400 s"),  # killed the refresher thread
    (["--refresh", "9" * 5000], "is longer than"),
    (["--canary-every", "soon"], "--canary-every 'soon' is not a duration"),
    (["--canary-every", "5m"], "--canary-every needs the checkpoint of bigscience/bloom"),  # a hub name
])
def test_bad_options_give_one_line(run_cli, args, needle):
    result = run_cli("exporter", "--initial-peers", FAKE_PEER, "--model", "bigscience/bloom", *args,
                     timeout=60)
    assert result.returncode == 2, result.stderr
    assert needle in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_busy_port_gives_one_line(run_cli):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        result = run_cli("exporter", "--initial-peers", FAKE_PEER, "--model", "bigscience/bloom",
                         "--listen", f"127.0.0.1:{port}", timeout=60)
    assert result.returncode == 2
    assert f"--listen 127.0.0.1:{port}: cannot listen there" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_no_local_swarm_gives_one_line(run_cli, tmp_path):
    result = run_cli("exporter", "--swarm-dir", tmp_path / "none", timeout=60)
    assert result.returncode == 1
    assert "no local swarm is running" in result.stderr and "Traceback" not in result.stderr


def test_parsers():
    assert parse_listen("127.0.0.1:9469") == ("127.0.0.1", 9469)
    assert parse_listen(":9469") == ("0.0.0.0", 9469)
    assert parse_listen("[::1]:9469") == ("::1", 9469)
    assert [parse_duration(t) for t in ("30s", "2m", "500ms", "1.5", "1h")] == [30, 120, 0.5, 1.5, 3600]
    for bad in ("", "30x", "-1s", "0s"):
        with pytest.raises(InputError):
            parse_duration(bad)


def test_render_values_and_conventions():
    now = time.time()
    state = ExporterState(
        refresh_interval=30, snapshots=(snapshot(now - 5),), own_hosts={"QmA": "a10-1", "QmGone": "a10-9"},
        up=True, refresh_seconds=0.25, last_success=now - 5, refreshes=7, errors={"swarm": 2, "fleet": 0},
    )
    text = exposition(state)
    got = samples(text)
    m = (("model", "m-petals"),)
    assert got[("petals_model_blocks", m)] == 4
    assert got[("petals_model_uncovered_blocks", m)] == 2  # blocks 2 and 3: no ONLINE server
    assert got[("petals_model_min_online_servers", m)] == 0
    assert got[("petals_model_fully_served", m)] == 0
    assert got[("petals_model_servers", m + (("state", "JOINING"),))] == 1
    assert got[("petals_block_online_servers", (("block", "1"), ("model", "m-petals")))] == 1
    a = (("host", "a10-1"), ("model", "m-petals"), ("peer_id", "QmA"))  # public_name: on the info metric only
    assert got[("petals_server_state", a + (("state", "ONLINE"),))] == 1
    assert got[("petals_server_state", a + (("state", "OFFLINE"),))] == 0
    assert got[("petals_server_first_block", a)] == 0 and got[("petals_server_last_block", a)] == 1
    assert got[("petals_server_throughput_tokens_per_second", a)] == 12.5
    assert got[("petals_server_cache_left_tokens", a)] == 4096
    info = dict(a + (("public_name", "a10-1"), ("quant_type", "none"), ("torch_dtype", "float32"),
                     ("using_relay", "false"),
                     ("version", "2.2.0.post1")))
    assert got[("petals_server_info", tuple(sorted(info.items())))] == 1
    b = (("host", ""), ("model", "m-petals"), ("peer_id", "QmB"))
    assert ("petals_server_cache_left_tokens", b) not in got  # unknown, not 0
    assert not [k for k in got if k[0] != "petals_server_info" and "public_name" in dict(k[1])]
    assert got[("petals_own_server_online", (("host", "a10-1"), ("peer_id", "QmA")))] == 1
    # absent = not ONLINE
    assert got[("petals_own_server_online", (("host", "a10-9"), ("peer_id", "QmGone")))] == 0
    assert got[("petals_exporter_up", ())] == 1
    assert got[("petals_exporter_refresh_errors_total", (("source", "swarm"),))] == 2
    assert got[("petals_exporter_refreshes_total", ())] == 7
    assert 4 < got[("petals_exporter_snapshot_age_seconds", ())] < 60
    # no inventory, no container metrics
    assert not any(name.startswith("petals_container") for name, _ in got)
    for family in text_string_to_metric_families(text):
        assert family.name.startswith("petals_"), family.name
        assert family.documentation, family.name
        if family.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples)


def test_render_before_first_refresh_and_promtool(tmp_path):
    state = ExporterState(refresh_interval=30)
    got = samples(exposition(state))
    assert got[("petals_exporter_up", ())] == 0
    assert ("petals_exporter_last_success_timestamp_seconds", ()) not in got
    path = tmp_path / "metrics.txt"
    full = ExporterState(refresh_interval=30, snapshots=(snapshot(time.time()),), own_hosts={"QmA": "a10-1"},
                         up=True, refresh_seconds=0.1, last_success=time.time(), refreshes=1)
    for st in (state, full):
        path.write_text(exposition(st))
        result = subprocess.run([PROMTOOL, "check", "metrics"], check=False, input=path.read_text(),
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


def test_container_metrics_from_fleet_statuses():
    from petals_ops.fleet import status

    CS = status.ContainerStatus
    containers = (
        CS(host="a10-1", container="petals-server", running=True, restart_count=3, exit_code=0,
           peer_id="QmA", error=None),
        CS(host="a10-2", container="petals-server", running=False, restart_count=5, exit_code=137,
           peer_id=None, error=None),
        CS(host="a10-3", container="petals-server", running=False, restart_count=0, exit_code=None,
           peer_id=None, error="ssh: connection refused"),
    )
    state = ExporterState(refresh_interval=30, snapshots=(snapshot(time.time()),), own_hosts={"QmA": "a10-1"},
                          containers=containers, fleet_ok=True, up=True, last_success=time.time())
    got = samples(exposition(state))
    c1, c2, c3 = ((("container", "petals-server"), ("host", h)) for h in ("a10-1", "a10-2", "a10-3"))
    assert got[("petals_fleet_up", ())] == 1
    assert got[("petals_container_running", c1)] == 1 and got[("petals_container_running", c2)] == 0
    assert got[("petals_container_restarts_total", c2)] == 5
    assert got[("petals_container_last_exit_code", c2)] == 137
    assert got[("petals_container_inspect_success", c3)] == 0 and ("petals_container_running", c3) not in got


def test_refresher_keeps_the_servers_of_an_unreachable_host():
    """A host that stops answering keeps its peer -> host entries, so its servers' online metric stays
    (at 0)."""
    from petals_ops.fleet.status import ContainerStatus, FleetReading
    from petals_ops.client.models import ModelRef
    from petals_ops.monitoring.refresher import Refresher

    def status(host, peer_id=None, error=None):
        return ContainerStatus(host, "" if error else "petals-server-0", not error, 0, None, peer_id, error)

    rounds = [[status("a10-1", "QmA"), status("a10-2", "QmB")],
              [status("a10-1", "QmA"), status("a10-2", error="refused")]]
    refresher = Refresher([FAKE_PEER], [ModelRef("m", "m-petals", 4)], interval=30, inventory=object(),
                          read_fleet=lambda inv: FleetReading(tuple(rounds.pop(0))))
    refresher._walk_swarm = lambda: [snapshot(time.time())]  # no swarm here: QmB is OFFLINE in it
    assert refresher.refresh_once().own_hosts == {"QmA": "a10-1", "QmB": "a10-2"}
    assert refresher.refresh_once().own_hosts == {"QmA": "a10-1", "QmB": "a10-2"}
    assert samples(exposition(refresher.state))[("petals_own_server_online",
                                                 (("host", "a10-2"), ("peer_id", "QmB")))] == 0


def _fake_refresher(interval: float = 0.2):
    """A Refresher with the DHT walk replaced by a fixed snapshot (no swarm in this module)."""
    from petals_ops.client.models import ModelRef
    from petals_ops.monitoring.refresher import Refresher

    refresher = Refresher([FAKE_PEER], [ModelRef("m", "m-petals", 4)], interval=interval)
    refresher._walk_swarm = lambda: [snapshot(time.time())]
    return refresher


def test_idle_connections_are_bounded_and_dropped(monkeypatch):
    """Issue 23 #7: 200 idle connections once held 205 threads, for ever. Each connection now gets a read
    timeout and at most MAX_CONNECTIONS threads exist; a scrape is served once the idle ones are dropped."""
    import threading
    import urllib.request

    from petals_ops.monitoring import server

    monkeypatch.setattr(server._QuietHandler, "timeout", 1.0)
    exporter = server.start_exporter(_fake_refresher(), "127.0.0.1:0", process_metrics=False)
    idle = []
    try:
        before = threading.active_count()
        for _ in range(200):
            idle.append(socket.create_connection(exporter.address, timeout=5))
        time.sleep(0.5)
        assert threading.active_count() <= before + server.MAX_CONNECTIONS
        time.sleep(1.5)  # past the read timeout: every idle connection is closed by the server
        assert all(s.recv(1) == b"" for s in idle)
        assert threading.active_count() <= before + 2
        body = urllib.request.urlopen(f"http://127.0.0.1:{exporter.address[1]}/metrics", timeout=10).read()
        assert b"petals_model_blocks" in body
    finally:
        for s in idle:
            s.close()
        exporter.close()


def test_a_dead_refresher_stops_the_exporter():
    """Issue 23 #7: a refresher thread that dies must not leave the HTTP side serving a frozen state."""
    from petals_ops.monitoring import server
    from petals_ops.util.errors import OpsError

    refresher = _fake_refresher()
    refresher._run = lambda: None  # the thread ends at once, as if an exception had killed it
    exporter = server.start_exporter(refresher, "127.0.0.1:0", process_metrics=False)
    started = time.monotonic()
    with pytest.raises(OpsError, match="refresher thread stopped"):
        server.run_until_signalled(exporter)
    assert time.monotonic() - started < 10
    huge = _fake_refresher(interval=1e30)  # a wait past time_t's range: the thread stays alive
    huge.start()
    time.sleep(0.5)
    assert huge.alive() and huge._thread.is_alive() and huge.state.refreshes == 1
    huge.stop(5)
    with pytest.raises(InputError):
        _fake_refresher(interval=float("nan"))
