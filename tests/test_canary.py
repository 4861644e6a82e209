"""The exporter's canary (petals_ops.monitoring.canary): its metrics as a pure rendering, then a real
exporter running it every 10 s on the shared delayed swarm, scraped by a real Prometheus."""

from __future__ import annotations

import subprocess
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from petals_ops.client.models import ModelRef
from petals_ops.lab.prometheus_lab import PROMTOOL
from petals_ops.monitoring.canary import CanaryState, check_canary, render_canary
from petals_ops.swarm.trace import HopRow
from petals_ops.util.errors import InputError
from tests.test_monitoring import dashboard_exprs


def _samples(families) -> dict:
    from prometheus_client import CollectorRegistry, generate_latest

    class Fixed:
        def collect(self):
            return families

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Fixed())
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(generate_latest(registry).decode()) for s in f.samples}


def test_canary_metrics_render_each_state():
    assert render_canary(None, {}) == []  # off by default: no series at all
    fresh = CanaryState(model="m-petals", interval=300, slo=0.5)
    names = {name for name, _ in _samples(render_canary(fresh, {}))}
    assert names == {"petals_canary_interval_seconds", "petals_canary_slo_steps_per_second",
                     "petals_canary_runs_total"}
    hop = HopRow("QmA", None, 0, 2, 0.12, 0.08, 0.04, 8)
    ran = CanaryState(model="m-petals", interval=300, slo=0.5, runs={"success": 3, "failure": 1},
                      last_run=100.0, last_success=90.0, ok=False, steps_per_second=0.0, duration=2.5,
                      retries=2, hops=(hop,), last_error="boom")
    got = _samples(render_canary(ran, {"QmA": "a10-1"}))
    m = (("model", "m-petals"),)
    assert got[("petals_canary_up", m)] == 0 and got[("petals_canary_steps_per_second", m)] == 0
    assert got[("petals_canary_runs_total", m + (("result", "failure"),))] == 1
    assert got[("petals_canary_last_success_timestamp_seconds", m)] == 90
    key = (("host", "a10-1"), ("model", "m-petals"), ("peer_id", "QmA"))
    assert got[("petals_canary_hop_seconds", key)] == 0.12
    assert got[("petals_canary_hop_network_seconds", key)] == 0.08
    assert got[("petals_canary_retries", m)] == 2


def test_canary_needs_a_local_checkpoint_and_a_timeout_within_its_period(tmp_path):
    with pytest.raises(InputError, match="needs the checkpoint"):
        check_canary(ModelRef("bigscience/bloom", "bigscience/bloom-petals", 70), 300, 60)
    with pytest.raises(InputError, match="longer than --canary-every"):
        check_canary(ModelRef(name="x", dht_prefix="x", num_blocks=4, path=str(tmp_path)), 30, 60)


@pytest.mark.swarm
def test_exporter_canary_on_the_delayed_swarm(delayed_swarm, prometheus, exporter_process):
    """The canary every 10 s: a successful run, three hops with the 80 ms server's network the largest,
    a clean exposition, and in Prometheus the SLO alert pending (an objective of 1000 steps/s)."""
    from petals_ops.monitoring.refresher import local_identities

    exporter = exporter_process(["--swarm-dir", delayed_swarm.run_dir, "--refresh", "1s",
                                 "--canary-every", "10s", "--canary-timeout", "8s", "--canary-slo", "1000"])
    exporter.wait_for(lambda e: (e.sample("petals_canary_runs_total", result="success") or 0) >= 1, 180,
                      "a successful canary run")
    scrape = exporter.metrics()
    samples = {(s.name, s.labels.get("host")): s.value
               for f in text_string_to_metric_families(scrape) for s in f.samples}
    hosts = set(local_identities(delayed_swarm.run_dir))
    network = {h: v for (name, h), v in samples.items() if name == "petals_canary_hop_network_seconds"}
    assert set(network) == hosts
    assert max(network, key=network.get) == "local/server-2" and network["local/server-2"] >= 0.064
    assert samples[("petals_canary_steps_per_second", None)] > 0
    assert samples[("petals_canary_up", None)] == 1
    assert time.time() - samples[("petals_canary_last_run_timestamp_seconds", None)] < 120
    lint = subprocess.run([PROMTOOL, "check", "metrics"], input=scrape, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr

    prometheus.set_targets([exporter.address])
    prometheus.wait_for("petals_canary_steps_per_second", lambda r: bool(r), 60)
    time.sleep(3)  # a few samples, for increase()
    for expr in dashboard_exprs(gpu=None, canary=True):  # the dashboard's canary row has data
        assert prometheus.query(expr), f"dashboard canary query returned no data: {expr}"

    def pending():
        return any(a["labels"]["alertname"] == "PetalsCanarySlow" and a["state"] in ("pending", "firing")
                   for a in prometheus.api("alerts")["data"]["alerts"])

    deadline = time.monotonic() + 30
    while not pending() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert pending(), prometheus.api("alerts")
