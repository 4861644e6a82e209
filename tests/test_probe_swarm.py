"""Reachability on a real swarm of our own (issue 19): a frozen server is "unreachable" everywhere we show
state, and recovers after SIGCONT with nothing of ours restarted.

One swarm (2 servers, blocks 0:2 and 2:4) that only this module mutates; one real-swarm test carries all
the checks that need the frozen server, so the (slow) setup is paid once.
"""

from __future__ import annotations

import json

import pytest

from petals_ops.lab import netem

pytestmark = pytest.mark.swarm

PROBE = ["--probe-timeout", "2s"]


@pytest.fixture(scope="module")
def probed_swarm(swarm_factory):
    """2 servers (0:2, 2:4), each the only copy of its blocks; this module freezes and thaws server-1.
    Records live 300 s (the local swarm's default is 30 s), so a frozen server stays ONLINE in the DHT
    through the checks, as it does for petals' default 240 s in a real swarm."""
    return swarm_factory(server_settings={"expiration": 300})


def _status(run_cli, swarm, *extra):
    return run_cli("swarm", "status", "--swarm-dir", swarm.run_dir, *PROBE, *extra, timeout=180)


def test_frozen_server_is_unreachable_then_recovers(probed_swarm, run_cli):
    swarm = probed_swarm
    victim = swarm.servers[1]
    lo, hi = map(int, victim.blocks.split(":"))
    healthy = _status(run_cli, swarm, "-o", "json")
    assert healthy.returncode == 0, healthy.stderr
    data = json.loads(healthy.stdout)
    assert [s["reachable"] for s in data["servers"]] == [True, True]
    assert all(s["reachability"]["latency"] < 2 for s in data["servers"])
    assert data["coverage"]["bootstrap_alive"] == data["coverage"]["bootstrap_total"] == 1
    frozen_peer = next(s["peer_id"] for s in data["servers"] if s["start_block"] == lo)

    netem.apply_fault(swarm, victim.name, "freeze")
    try:
        # swarm status: JSON and table say unreachable; the server held the only copy of lo:hi -> exit 1.
        result = _status(run_cli, swarm, "-o", "json")
        assert result.returncode == 1, result.stderr
        data = json.loads(result.stdout)
        by_peer = {s["peer_id"]: s for s in data["servers"]}
        assert by_peer[frozen_peer]["state"] == "ONLINE"  # the DHT still says so: the lie we see through
        assert by_peer[frozen_peer]["reachable"] is False
        assert by_peer[frozen_peer]["reachability"]["error"]
        assert data["coverage"]["unreachable_servers"] == [frozen_peer]
        assert data["coverage"]["uncovered_blocks"] == list(range(lo, hi))
        assert data["coverage"]["blocks_only_on_unreachable"] == list(range(lo, hi))
        table = _status(run_cli, swarm)
        assert table.returncode == 1
        assert "ONLINE (unreachable)" in table.stdout and f"unreachable: {frozen_peer}" in table.stdout
        assert f"DEGRADED: blocks {lo}:{hi} are held only by unreachable servers" in table.stdout
    finally:
        netem.apply_fault(swarm, victim.name, "thaw")

    # Thawed: reachable again, nothing restarted.
    again = _status(run_cli, swarm, "-o", "json")
    assert again.returncode == 0, again.stderr
    assert [s["reachable"] for s in json.loads(again.stdout)["servers"]] == [True, True]
    assert all(p.alive() for p in swarm.processes)
