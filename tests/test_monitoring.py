"""Monitoring end to end: real local swarms, real exporter processes, a real Prometheus scraping them.

- static: promtool check config/rules, promtool unit tests of every alert, Grafana provisioning files;
- the shared healthy swarm: full coverage in Prometheus, promtool check metrics on a live scrape, every
  dashboard and rule expression runs against Prometheus and (dashboard) returns data;
- a swarm of our own that we damage: a server stopped -> uncovered blocks rise in Prometheus; its DHT
  stopped -> the exporter keeps serving with up 0 and counting errors; DHT back -> up 1 again.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from petals_ops.lab import local_swarm as ls
from petals_ops.util import procs
from petals_ops.util.fsutil import tail_lines
from petals_ops.lab.prometheus_lab import MONITORING, PROMTOOL

pytestmark = pytest.mark.swarm

RULES = MONITORING / "rules" / "petals_alerts.yml"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "petals-swarm.json"
DATASOURCE_UID = "petals-prometheus"


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], check=False, capture_output=True, text=True, timeout=120,
                          cwd=MONITORING)


def dashboard_exprs(gpu: bool | None = False, canary: bool = False) -> list[str]:
    """Every PromQL expression of the dashboard (``gpu``: only the GPU row's, False: all but those, None:
    all; ``canary``: only the canary row's, else all but those: the canary is off by default), with
    Grafana's variables given concrete values."""
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])
             if (gpu is None or ("_gpu_" in t["expr"]) == gpu) and ("petals_canary_" in t["expr"]) == canary]
    return [e.replace("$__rate_interval", "30s").replace("$model", ".*") for e in exprs]


def rule_exprs() -> dict[str, str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {r.get("alert") or r["record"]: r["expr"] for g in groups for r in g["rules"]}


# ---------------------------------------------------------------------------------------------- static
def test_promtool_config_and_rules():
    for args in (("check", "config", "prometheus.yml"), ("check", "rules", "rules/petals_alerts.yml")):
        result = promtool(*args)
        assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rule_unit_tests_cover_every_alert():
    result = promtool("test", "rules", "rules/petals_alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    tested = set(re.findall(r"alertname:\s*(\w+)",
                            (MONITORING / "rules" / "petals_alerts_test.yml").read_text()))
    assert set(rule_exprs()) <= tested, f"alerts without a unit test: {set(rule_exprs()) - tested}"


def test_grafana_provisioning_and_compose():
    ds = yaml.safe_load((MONITORING / "grafana/provisioning/datasources/prometheus.yml").read_text())
    (source,) = ds["datasources"]
    assert source["uid"] == DATASOURCE_UID and source["type"] == "prometheus"
    provider = yaml.safe_load(
        (MONITORING / "grafana/provisioning/dashboards/petals.yml").read_text())["providers"][0]
    compose = yaml.safe_load((MONITORING / "docker-compose.yml").read_text())
    mounts = {v.split(":")[1]: v.split(":")[0] for v in compose["services"]["grafana"]["volumes"]}
    assert (MONITORING / mounts[provider["options"]["path"]] / DASHBOARD.name).is_file()
    assert (MONITORING / mounts["/etc/grafana/provisioning"] / "datasources").is_dir()
    assert {"exporter", "prometheus", "grafana"} <= set(compose["services"])
    # The GPU exporter: a compose service for GPU hosts (profile gpu) and a Prometheus job scraping it.
    assert compose["services"]["dcgm-exporter"]["profiles"] == ["gpu"]
    assert "dcgm-exporter" in compose["services"]["dcgm-exporter"]["image"]
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert jobs["dcgm"]["file_sd_configs"][0]["files"] == ["targets/dcgm*.yml"]
    assert "./targets:/etc/prometheus/targets:ro" in compose["services"]["prometheus"]["volumes"]
    panels = json.loads(DASHBOARD.read_text())["panels"]
    assert any(p["type"] == "row" and "GPU" in p["title"] for p in panels)
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["id"] is None
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        if p["type"] != "row":
            assert (p["datasource"]["uid"] == DATASOURCE_UID and p["targets"]
                    and p.get("description")), p["title"]
            assert all(t["datasource"]["uid"] == DATASOURCE_UID for t in p["targets"])
    for var in dash["templating"]["list"]:
        assert var["datasource"]["uid"] == DATASOURCE_UID


# ---------------------------------------------------------------------------------------- healthy swarm
def test_healthy_swarm_in_prometheus(local_swarm, prometheus, exporter_process, tmp_path):
    exporter = exporter_process(["--swarm-dir", local_swarm.run_dir, "--refresh", "1s"])
    exporter.wait_up()
    prometheus.set_targets([exporter.address])
    sel = f'{{instance="{exporter.address}"}}'
    prefix = local_swarm.dht_prefix

    # Full coverage, as Prometheus' HTTP API reports it.
    prometheus.wait_for(f"petals_model_fully_served{sel}", lambda r: r and r[0]["value"][1] == "1", 60)
    assert prometheus.value(f'petals_model_uncovered_blocks{{model="{prefix}"}}') == 0
    assert prometheus.value(f'petals_model_blocks{{model="{prefix}"}}') == local_swarm.num_blocks
    per_block = prometheus.query(f'petals_block_online_servers{{model="{prefix}"}}')
    assert sorted(int(r["metric"]["block"]) for r in per_block) == list(range(local_swarm.num_blocks))
    assert all(float(r["value"][1]) >= 1 for r in per_block)
    assert (prometheus.value(f'petals_model_servers{{model="{prefix}",state="ONLINE"}}')
            == len(local_swarm.servers))
    own = prometheus.query("petals_own_server_online")
    assert sorted(r["metric"]["host"] for r in own) == sorted(f"local/{p.name}" for p in local_swarm.servers)
    assert all(r["value"][1] == "1" for r in own)
    info = prometheus.query('petals_server_info{host="local/server-0"}')
    assert info and info[0]["metric"]["torch_dtype"] == "float32" and info[0]["metric"]["version"]

    # promtool lints a live scrape.
    scrape = exporter.metrics()
    result = subprocess.run([PROMTOOL, "check", "metrics"], check=False, input=scrape, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr

    # Every dashboard query runs and returns data; the model variable lists the swarm's model.
    # (The servers announce next_pings from their first ping of the next server on: wait for them.)
    prometheus.wait_for("petals_server_next_ping_seconds", bool, 60)
    time.sleep(3)  # a few samples, so rate() over the errors counter has two points
    for expr in dashboard_exprs():
        assert prometheus.query(expr), f"dashboard query returned no data: {expr}"
    models = prometheus.api("label/model/values", **{"match[]": "petals_model_blocks"})["data"]
    assert prefix in models
    # Every rule expression runs without error; the rules loaded into Prometheus evaluate cleanly.
    for expr in rule_exprs().values():
        prometheus.query(expr)
    groups = prometheus.api("rules")["data"]["groups"]
    assert {r["name"] for g in groups for r in g["rules"]} == set(rule_exprs())
    assert all(r["health"] in ("ok", "unknown") for g in groups for r in g["rules"]), groups
    # With one server per block, the thin-block alert's condition holds on this healthy swarm.
    assert prometheus.query(rule_exprs()["PetalsBlockSingleServer"])

    # Graceful stop on SIGTERM.
    assert exporter.stop(signal.SIGTERM) == 0
    assert "stopping the exporter" in exporter.log.read_text()


# ---------------------------------------------------------------------------------------- damaged swarm
@pytest.fixture(scope="module")
def damaged(swarm_factory, prometheus, tmp_path_factory):
    """A swarm of our own (2 servers) and an exporter on it, scraped by Prometheus; the tests damage it."""
    from petals_ops.lab.prometheus_lab import ExporterProcess

    swarm = swarm_factory()
    exporter = ExporterProcess(["--swarm-dir", swarm.run_dir, "--refresh", "1s"],
                               tmp_path_factory.mktemp("exporter") / "exporter.log")
    try:
        exporter.wait_up()
        prometheus.set_targets([exporter.address])
        yield swarm, exporter
    finally:
        exporter.stop()


def test_stopped_server_raises_uncovered_blocks(damaged, prometheus):
    swarm, exporter = damaged
    sel = f'{{instance="{exporter.address}",model="{swarm.dht_prefix}"}}'
    prometheus.wait_for(f"petals_model_uncovered_blocks{sel}", lambda r: r and r[0]["value"][1] == "0", 60)
    victim = swarm.servers[1]
    assert procs.stop_group(victim.pgid)  # SIGTERM: the server announces itself OFFLINE as it leaves
    lo, hi = map(int, victim.blocks.split(":"))
    prometheus.wait_for(f"petals_model_uncovered_blocks{sel}",
                        lambda r: r and float(r[0]["value"][1]) == hi - lo, 60)
    assert prometheus.value(f"petals_model_fully_served{sel}") == 0
    for b in range(lo, hi):
        assert prometheus.value(f'petals_block_online_servers{{model="{swarm.dht_prefix}",block="{b}"}}') == 0
    prometheus.wait_for(f'petals_own_server_online{{host="local/{victim.name}"}}',
                        lambda r: r and r[0]["value"][1] == "0", 60)
    # The conditions of the swarm alerts now hold (they fire once their "for" has passed).
    rules = rule_exprs()
    for name in ("PetalsModelNotFullyServed", "PetalsOwnServerNotOnline"):
        assert prometheus.query(rules[name]), name


def _restart_dht(swarm) -> None:
    """Start the swarm's DHT again on the same port with the same identity, so its multiaddr is unchanged."""
    dht = swarm.process("dht")
    log = Path(dht.log)
    before = len(tail_lines(log, 10_000))
    cmd = [sys.executable, "-m", "petals_ops.serve", "dht",
           "--host_maddrs", f"/ip4/127.0.0.1/tcp/{swarm.dht_port}",
           "--identity_path", str(Path(swarm.run_dir) / "dht.id")]
    popen = procs.spawn(cmd, log_path=log, cwd=swarm.run_dir)
    dht.pid = dht.pgid = popen.pid
    dht.start_time = procs.start_time(popen.pid)  # alive()/stop check it, to never signal a reused pid
    swarm.save()  # so the session's swarm_factory teardown stops the new DHT too
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if any(ls.PEERS_RE.search(line) for line in tail_lines(log, 10_000)[before:]):
            return
        assert dht.alive(), tail_lines(log, 5)
        time.sleep(0.3)
    raise AssertionError(f"the DHT did not restart: {tail_lines(log, 5)}")


def test_dht_outage_and_recovery(damaged, prometheus):
    swarm, exporter = damaged
    sel = f'{{instance="{exporter.address}"}}'
    errors_before = exporter.sample("petals_exporter_refresh_errors_total", source="swarm")
    # Every DHT node of the swarm goes: the exporter's DHT client is connected to the servers too, so
    # stopping only the bootstrap node would leave the DHT reachable (and the exporter rightly up).
    for p in swarm.processes:
        assert procs.stop_group(p.pgid), p.name

    # The exporter keeps serving: up 0, errors counted, snapshot aging; Prometheus still scrapes it.
    exporter.wait_for(lambda e: e.sample("petals_exporter_up") == 0, 60, "up 0 after the DHT stopped")
    exporter.wait_for(
        lambda e: e.sample("petals_exporter_refresh_errors_total", source="swarm") >= errors_before + 2,
        60, "errors counted")
    prometheus.wait_for(f"petals_exporter_up{sel}", lambda r: r and r[0]["value"][1] == "0", 30)
    prometheus.wait_for('up{job="petals-exporter"}', lambda r: r and r[0]["value"][1] == "1", 30)
    prometheus.wait_for('increase(petals_exporter_refresh_errors_total{source="swarm"}[1m])',
                        lambda r: r and float(r[0]["value"][1]) > 0, 30)
    assert exporter.sample("petals_model_blocks") == swarm.num_blocks  # the latest snapshot is still served
    rules = rule_exprs()
    assert prometheus.query(rules["PetalsExporterDown"])
    prometheus.wait_for(rules["PetalsExporterStale"], bool, 30)  # > 3 refresh periods without a walk

    # The DHT comes back on the same address: a fresh probe finds it and up returns to 1 (with no servers).
    _restart_dht(swarm)
    exporter.wait_for(lambda e: e.sample("petals_exporter_up") == 1, 120, "up 1 after the DHT came back")
    prometheus.wait_for(f"petals_exporter_up{sel}", lambda r: r and r[0]["value"][1] == "1", 30)
    assert exporter.sample("petals_model_uncovered_blocks") == swarm.num_blocks
    assert exporter.proc.poll() is None


def test_local_swarm_restarted_on_a_new_port(damaged):
    """Issue 23 #7: the local swarm stopped and started again (a new DHT port, new peers): the exporter
    monitoring it (no --initial-peers) re-reads its state and recovers, as docs/monitoring.md says."""
    swarm, exporter = damaged
    old_peers = ls.LocalSwarm.load(swarm.run_dir).initial_peers
    ls.down(swarm.run_dir)
    exporter.wait_for(lambda e: e.sample("petals_exporter_up") == 0, 60, "up 0 after down")
    again = ls.up(swarm.run_dir, model_dir=swarm.model_dir, timeout=240)
    assert again.initial_peers != old_peers
    exporter.wait_for(lambda e: e.sample("petals_exporter_up") == 1
                      and e.sample("petals_model_uncovered_blocks") == 0, 120, "up 1 on the new swarm")
    assert exporter.proc.poll() is None


def test_inventory_containers_exported(local_swarm, exporter_process, tmp_path):
    """--inventory: the fleet's real status code runs each refresh; an unreachable host shows up as such."""
    with __import__("socket").socket() as s:  # a port nobody listens on: ssh is refused at once
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(
        f"known_hosts: {tmp_path / 'known_hosts'}\n"
        "server: {model: bigscience/bloom, new_swarm: true}\n"
        f"hosts:\n  dead-1: {{address: 127.0.0.1, port: {closed}, user: root, gpus: 1}}\n"
    )
    exporter = exporter_process(["--swarm-dir", local_swarm.run_dir, "--refresh", "1s",
                                 "--inventory", inventory])
    exporter.wait_up()
    exporter.wait_for(lambda e: e.sample("petals_container_inspect_success", host="dead-1") == 0, 60,
                      "the unreachable host reported")
    assert exporter.sample("petals_fleet_up") == 1  # the status call worked; the host did not
    assert exporter.sample("petals_container_running", host="dead-1") is None
    assert exporter.sample("petals_model_fully_served") == 1
    result = subprocess.run([PROMTOOL, "check", "metrics"], check=False, input=exporter.metrics(),
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert exporter.stop() == 0


def test_inventory_errors_are_one_line(local_swarm, run_cli, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("hosts: {a10-1: {adress: 1.2.3.4}}\n")
    result = run_cli("exporter", "--swarm-dir", local_swarm.run_dir, "--listen", "127.0.0.1:0",
                     "--inventory", bad, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------- GPU health
def test_gpu_metrics_dashboard_and_alerts_in_prometheus(prometheus, tmp_path):
    """No GPU here: the exposition is what the exporter renders for nvidia-smi outputs kept in
    tests/data/nvidia-smi (a healthy A10, two A100s one of them full, a GPU fallen off the bus), served by a
    plain HTTP server. Prometheus scrapes it: the dashboard's GPU row has data, the GPU alerts go pending."""
    import http.server
    import threading

    from prometheus_client import CollectorRegistry, generate_latest

    from petals_ops.fleet.gpu import parse_query
    from petals_ops.monitoring.collector import SwarmCollector
    from petals_ops.monitoring.refresher import ExporterState

    data = Path(__file__).parent / "data" / "nvidia-smi"
    gpus = (parse_query("a10-1", (data / "healthy_a10.txt").read_text(), 0, expected=1),
            parse_query("a100-1", (data / "healthy_2xa100_one_full.txt").read_text(), 0, expected=2),
            parse_query("a10-2", (data / "fallen_off_bus.txt").read_text(), 15, expected=1))
    registry = CollectorRegistry(auto_describe=False)
    state = ExporterState(refresh_interval=30, containers=(), gpus=gpus, fleet_ok=True)
    registry.register(SwarmCollector(lambda: state))
    body = generate_latest(registry)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        prometheus.set_targets([f"127.0.0.1:{server.server_address[1]}"])
        prometheus.wait_for("petals_gpu_lost", lambda r: bool(r), 30)
        time.sleep(3)  # a few samples
        for expr in dashboard_exprs(gpu=True):
            assert prometheus.query(expr), f"dashboard GPU query returned no data: {expr}"
        lost = prometheus.query(rule_exprs()["PetalsGpuFallenOffBus"])
        assert [(r["metric"]["host"], r["metric"]["bus_id"]) for r in lost] == [("a10-2", "0000:00:1E.0")]
        missing = prometheus.query(rule_exprs()["PetalsGpuMissing"])
        assert [r["metric"]["host"] for r in missing] == ["a10-2"]
        full = prometheus.query(rule_exprs()["PetalsGpuOutOfMemory"])
        assert [(r["metric"]["host"], r["metric"]["gpu"]) for r in full] == [("a100-1", "0")]

        def pending(result):
            names = {a["labels"]["alertname"] for a in result["data"]["alerts"]
                     if a["state"] in ("pending", "firing")}
            return {"PetalsGpuFallenOffBus", "PetalsGpuMissing", "PetalsGpuOutOfMemory"} <= names

        deadline = time.monotonic() + 30
        while not pending(prometheus.api("alerts")) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert pending(prometheus.api("alerts")), prometheus.api("alerts")
    finally:
        server.shutdown()
        server.server_close()
