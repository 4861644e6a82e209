"""Reachability on a real swarm of our own (issue 19): a frozen server is "unreachable" everywhere we show
state (`swarm status`, the exporter's metrics, the map page in Chromium, an alert pending in a real
Prometheus) and recovers after SIGCONT with nothing of ours restarted; a dead initial peer shows as a
bootstrap peer down (liveness 0, alert pending) while the swarm keeps working.

One swarm (2 servers, blocks 0:2 and 2:4) that only this module mutates, one exporter on it given a dead
initial peer besides the real one; one test carries all the checks, so the slow setup is paid once.
"""

from __future__ import annotations

import json
import time

import pytest

from petals_ops.lab import netem

pytestmark = pytest.mark.swarm

PROBE = ["--probe-timeout", "2s"]
# A well-formed initial peer nobody listens on (port 9, discard): a bootstrap node that is down.
DEAD_PEER = "/ip4/127.0.0.1/tcp/9/p2p/QmXpZBvo9uYvxGVfs2uAzi3TsSfKpqv9jhjZv2AEtBvQcL"


@pytest.fixture(scope="module")
def probed_swarm(swarm_factory):
    """2 servers (0:2, 2:4), each the only copy of its blocks; this module freezes and thaws server-1.
    Records live 300 s (the local swarm's default is 30 s), so a frozen server stays ONLINE in the DHT
    through the checks, as it does for petals' default 240 s in a real swarm."""
    return swarm_factory(server_settings={"expiration": 300})


def _status(run_cli, swarm, *extra):
    return run_cli("swarm", "status", "--swarm-dir", swarm.run_dir, *PROBE, *extra, timeout=180)


def reachable(exporter) -> dict[str, float]:
    """peer id -> petals_server_reachable, from one scrape."""
    from prometheus_client.parser import text_string_to_metric_families

    return {s.labels["peer_id"]: s.value for f in text_string_to_metric_families(exporter.metrics())
            for s in f.samples if s.name == "petals_server_reachable"}


def test_frozen_server_and_dead_bootstrap_peer(probed_swarm, run_cli, exporter_process, prometheus, browser,
                                              artefacts_dir):
    swarm = probed_swarm
    victim = swarm.servers[1]
    lo, hi = map(int, victim.blocks.split(":"))
    exporter = exporter_process([
        "--initial-peers", swarm.initial_peers[0], "--initial-peers", DEAD_PEER, "--model", swarm.model_dir,
        "--refresh", "1s", *PROBE, "--probe-ttl", "0s"])
    exporter.wait_up()
    prometheus.set_targets([exporter.address])

    # Healthy: both servers answer; the real initial peer is alive, the dead one is down.
    now = exporter.wait_for(lambda e: len(r := reachable(e)) == 2 and set(r.values()) == {1.0} and r,
                            90, "both servers reachable")
    frozen_peer = next(p for p in now if exporter.sample("petals_server_first_block", peer_id=p) == lo)
    assert exporter.sample("petals_bootstrap_peer_alive", address=swarm.initial_peers[0]) == 1
    assert exporter.sample("petals_bootstrap_peer_alive", address=DEAD_PEER) == 0
    assert exporter.sample("petals_model_fully_served") == 1  # the swarm itself keeps working
    prometheus.wait_for('ALERTS{alertname="PetalsBootstrapPeerDown"}',
                        lambda r: r and r[0]["metric"]["address"] == DEAD_PEER, 60)
    page = browser.page()
    page.navigate(f"http://{exporter.address}/")
    both = "document.querySelectorAll('tr.srv[data-reachable=true]').length === 2"
    page.wait_for(both, 30, "2 reachable rows")
    assert page.eval("document.getElementById('bootstrap').dataset.down") == "1"
    assert DEAD_PEER in page.eval("document.getElementById('bootstrap').textContent")

    netem.apply_fault(swarm, victim.name, "freeze")
    try:
        frozen_at = time.monotonic()
        exporter.wait_for(lambda e: reachable(e).get(frozen_peer) == 0.0, 60, "the frozen server unreachable")
        print(f"frozen server unreachable in the exporter after {time.monotonic() - frozen_at:.1f} s "
              "(probe timeout 2 s, refresh 1 s, plus the DHT walk)")
        exporter.wait_for(lambda e: e.sample("petals_model_uncovered_blocks") == hi - lo, 30, "uncovered")
        assert exporter.sample("petals_model_fully_served") == 0
        assert exporter.sample("petals_model_unreachable_servers") == 1
        # The DHT still lists it ONLINE: the lie the probe sees through.
        assert exporter.sample("petals_server_state", peer_id=frozen_peer, state="ONLINE") == 1
        prometheus.wait_for('ALERTS{alertname="PetalsServerUnreachable"}',
                            lambda r: r and r[0]["metric"]["peer_id"] == frozen_peer
                            and r[0]["metric"]["alertstate"] == "pending", 60)
        row = f"tr.srv[data-peer='{frozen_peer}']"
        page.wait_for(f"document.querySelector(\"{row}\").dataset.reachable === 'false'", 30, "unreachable")
        assert page.eval(f"document.querySelectorAll(\"{row} td.c.X\").length") == hi - lo
        assert "unreachable" in page.eval(f"document.querySelector(\"{row} .st-UNREACHABLE\").textContent")
        assert page.eval("[...document.querySelectorAll('td.cov.uncovered')].map(td => +td.dataset.block)") \
            == list(range(lo, hi))
        page.screenshot(artefacts_dir / "probe-frozen-server.png")

        # swarm status: JSON and table say unreachable; it held the only copy of lo:hi -> exit 1.
        result = _status(run_cli, swarm, "-o", "json")
        assert result.returncode == 1, result.stderr
        data = json.loads(result.stdout)
        server = next(s for s in data["servers"] if s["peer_id"] == frozen_peer)
        assert server["state"] == "ONLINE" and server["reachable"] is False
        assert server["reachability"]["error"]
        assert data["coverage"]["unreachable_servers"] == [frozen_peer]
        assert data["coverage"]["uncovered_blocks"] == data["coverage"]["blocks_only_on_unreachable"] \
            == list(range(lo, hi))
        table = _status(run_cli, swarm)
        assert table.returncode == 1
        assert "ONLINE (unreachable)" in table.stdout and f"unreachable: {frozen_peer}" in table.stdout
        assert f"DEGRADED: blocks {lo}:{hi} are held only by unreachable servers" in table.stdout
    finally:
        netem.apply_fault(swarm, victim.name, "thaw")

    # Thawed: reachable again everywhere, nothing of ours restarted.
    exporter.wait_for(lambda e: reachable(e).get(frozen_peer) == 1.0
                      and e.sample("petals_model_fully_served") == 1, 60, "recovered in the exporter")
    page.wait_for(both, 30, "page recovered")
    prometheus.wait_for('ALERTS{alertname="PetalsServerUnreachable"}', lambda r: not r, 60)
    assert exporter.proc.poll() is None and all(p.alive() for p in swarm.processes)


def test_doctor_names_the_delayed_server_as_the_slowest_hop(run_cli, delayed_swarm):
    """0, 0 and 80 ms on three servers (the session's read-only delayed swarm): doctor --trace names the
    delayed one as the slowest hop, with swarm trace's evidence, and finds nothing else but thin blocks."""
    from petals_ops.client import door
    from petals_ops.monitoring.refresher import local_identities

    result = run_cli("doctor", "--swarm-dir", delayed_swarm.run_dir, "--trace", "--trace-steps", "12",
                     "-o", "json", timeout=300)
    assert result.returncode == 3, result.stderr  # thin blocks (one copy each): a warning
    report = json.loads(result.stdout)
    delayed = door.peer_id_of_identity(
        local_identities(delayed_swarm.run_dir)["local/server-2"].read_bytes())
    slow = {f["kind"]: f for f in report["findings"] if f["kind"] in ("slowest_hop", "slowest_network_hop")}
    print(json.dumps(list(slow.values()), indent=1))
    # The delayed server is the slowest hop; on a loaded machine another hop's server time can exceed its
    # 80 ms, and then doctor names it as the hop carrying most of the network time.
    named = slow.get("slowest_network_hop", slow["slowest_hop"])
    assert named["subject"] == delayed, report
    assert f"blocks {delayed_swarm.servers[2].blocks}" in named["message"]
    assert {f["kind"] for f in report["findings"]} <= {"thin", "slowest_hop", "slowest_network_hop"}, report
