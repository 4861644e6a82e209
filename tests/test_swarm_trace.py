"""``petals-ops swarm trace`` (petals_ops.swarm.trace): route enumeration and attribution math as pure
functions, then the real command on the shared delayed swarm (0, 0 and 80 ms emulated round trips)."""

from __future__ import annotations

import json

import pytest

from petals_ops.client.canary import CanaryRun, HopStep
from petals_ops.swarm import trace
from petals_ops.swarm.health import BlockHealth, ServerRecord, SwarmSnapshot
from petals_ops.util.errors import InputError, OpsError

PEERS = {name: f"Qm{name * 4}{'Z' * 40}" for name in "ABCDEF"}


def _snapshot(spans, num_blocks=4, states=None) -> SwarmSnapshot:
    states = states or {}
    servers = [ServerRecord(PEERS[n], states.get(n, "ONLINE"), a, b, 1.0) for n, a, b in spans]
    blocks = [BlockHealth(i, f"m.{i}", {s.peer_id: s.state for s in servers
                                        if s.start_block <= i < s.end_block}) for i in range(num_blocks)]
    return SwarmSnapshot("m", "m-petals", num_blocks, 0.0, 0.0, blocks, servers)


def _names(route) -> list[str]:
    by_peer = {p: n for n, p in PEERS.items()}
    return [f"{by_peer[h.peer_id]}{h.start}:{h.end}" for h in route]


def test_routes_are_chains_petals_would_take_fewest_hops_first_and_bounded():
    snap = _snapshot([("A", 0, 2), ("B", 2, 3), ("C", 3, 4), ("D", 0, 4), ("E", 1, 4), ("F", 2, 4)],
                     states={"F": "JOINING"})
    routes = [_names(r) for r in trace.enumerate_routes(snap, max_routes=10)]
    # A then D is no route: pinned to {A, D} petals would run D alone (D also holds A's first block);
    # F is not ONLINE; E is entered at block 2, where A stops.
    assert routes == [["D0:4"], ["A0:2", "E2:4"], ["A0:2", "B2:3", "C3:4"]]
    assert [_names(r) for r in trace.enumerate_routes(snap, max_routes=1)] == [["D0:4"]]
    through_b = trace.enumerate_routes(snap, through=[PEERS["B"]])
    assert [_names(r) for r in through_b] == [["A0:2", "B2:3", "C3:4"]]
    assert trace.enumerate_routes(_snapshot([("A", 0, 2)]), max_routes=4) == []  # blocks 2:4 uncovered
    # many replicas: bounded, distinct
    wide = _snapshot([(n, 0, 2) for n in "ABC"] + [(n, 2, 4) for n in "DEF"])
    found = trace.enumerate_routes(wide, max_routes=16)
    assert len(found) == 9 and len({tuple(_names(r)) for r in found}) == 9


def test_named_routes_and_servers_resolve_or_fail_in_one_line():
    snap = _snapshot([("A", 0, 2), ("B", 2, 4), ("D", 0, 4)])
    assert trace.resolve_peer("QmBBBB", snap) == PEERS["B"]  # a prefix
    assert trace.resolve_peer(PEERS["A"], snap) == PEERS["A"]
    with pytest.raises(InputError, match="too short"):
        trace.resolve_peer("QmB", snap)
    with pytest.raises(InputError, match="no ONLINE server"):
        trace.resolve_peer("QmCCCC", snap)
    with pytest.raises(InputError, match="3 ONLINE servers"):
        trace.resolve_peer("ZZZZ", snap)  # a suffix they share
    assert _names(trace.route_from_peers([PEERS["B"], PEERS["A"]], snap)) == ["A0:2", "B2:4"]
    with pytest.raises(InputError, match="do not form a chain"):
        trace.route_from_peers([PEERS["A"], PEERS["D"]], snap)
    routes = trace.plan_routes(snap, routes=[["QmDDDD"]])
    assert [_names(r) for r in routes] == [["D0:4"]]
    with pytest.raises(OpsError, match="have no ONLINE server"):
        trace.plan_routes(_snapshot([("A", 0, 2)]))
    for kwargs, needle in (({"steps": 0}, "--steps 0"), ({"max_routes": 17}, "--max-routes 17"),
                           ({"timeout": 0}, "--timeout 0")):
        args = {"steps": 8, "max_routes": 4, "timeout": 60.0, **kwargs}
        with pytest.raises(InputError, match=needle):
            trace.check_bounds(**args)


def test_attribution_from_measured_hops():
    """Medians per hop over the decoding steps (the prefill apart), a hop's network as its fastest
    rpc_info, the rest inferred, the client's share per step, and the slowest hop's evidence."""
    a, b = PEERS["A"], PEERS["B"]
    hops = [HopStep(0, a, 0, 2, 0.5, True), HopStep(0, b, 2, 4, 0.5, True)]  # prefill: ignored
    for step, (sa, sb) in enumerate([(0.010, 0.090), (0.012, 0.095), (0.011, 0.300)], 1):
        hops += [HopStep(step, a, 0, 2, sa, True), HopStep(step, b, 2, 4, sb, True)]
    hops.insert(3, HopStep(1, b, 2, 4, 1.0, False))  # a failed attempt at b, retried
    run = CanaryRun(prompt_tokens=5, step_seconds=[0.110, 0.120, 0.320], prefill_seconds=1.0, hops=hops,
                    failures=[b], round_trips={a: [0.003, 0.002], b: [0.081, 0.080, 0.09]})
    route = [trace.Hop(a, 0, 2), trace.Hop(b, 2, 4)]
    result = trace.summarize(route, run, public_names={a: "alpha"})
    ha, hb = result.hops
    assert (ha.peer_id, ha.public_name, ha.blocks, ha.steps) == (a, "alpha", "0:2", 3)
    assert ha.seconds == pytest.approx(0.011) and hb.seconds == pytest.approx(0.095)
    assert hb.network_seconds == pytest.approx(0.080) and hb.server_seconds == pytest.approx(0.015)
    assert hb.failures == 1 and result.retries == 1
    assert result.step_seconds == pytest.approx(0.120) and result.steps_per_second == pytest.approx(1 / 0.12)
    # per step: 0.110-0.100, 0.120-0.107, 0.320-0.311 -> median 0.010 (the failed attempt counts as time)
    assert result.client_seconds == pytest.approx(0.009, abs=0.002)
    assert result.network_share(b) == pytest.approx(0.080 / 0.082)
    report = trace.TraceReport("m", "m-petals", 3, [result, trace.RouteResult(route, error="boom")], 1.0)
    slowest = report.slowest_hop
    assert slowest.hop.peer_id == b and slowest.route == 0
    assert "blocks 2:4" in slowest.evidence and "80 ms (measured)" in slowest.evidence
    assert "98% of the route's network time" in slowest.evidence
    data = report.to_dict()
    assert data["slowest_hop"]["peer_id"] == b and data["routes"][1]["ok"] is False
    assert set(data["measured"]) >= {"seconds", "network_seconds", "server_seconds"}
    assert trace.shares([1.0, None]) == {} and trace.shares([0.0, 0.0]) == {}
    with pytest.raises(OpsError, match="every traced route"):
        failed = [trace.RouteResult(route, error="x")]
        trace.require_some_route(trace.TraceReport("m", "m-petals", 3, failed, 1.0))


@pytest.mark.swarm
def test_trace_names_the_delayed_server_and_attributes_its_delay(run_cli, delayed_swarm):
    """0, 0 and 80 ms on the three servers: the delayed one is the slowest hop, its measured network
    carries at least 80% of the route's network time, and at least 80% of the 80 ms injected per step
    shows at that hop beyond what the other hops take."""
    from petals_ops.client import door
    from petals_ops.monitoring.refresher import local_identities

    swarm_dir = delayed_swarm.run_dir
    result = run_cli("swarm", "trace", "--swarm-dir", swarm_dir, "--steps", "8", "--output", "json",
                     timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    (route,) = report["routes"]
    assert route["ok"] and route["steps"] == 8 and route["steps_per_second"] > 0
    hops = route["hops"]
    assert [h["blocks"] for h in hops] == [p.blocks for p in delayed_swarm.servers]
    delayed_peer = door.peer_id_of_identity(local_identities(swarm_dir)["local/server-2"].read_bytes())
    slow = next(h for h in hops if h["peer_id"] == delayed_peer)
    others = [h for h in hops if h is not slow]
    print(json.dumps(hops, indent=1))
    assert report["slowest_hop"]["peer_id"] == delayed_peer
    assert slow["network_share"] >= 0.8
    assert slow["network_seconds"] - max(h["network_seconds"] for h in others) >= 0.8 * 0.080
    assert slow["seconds"] - min(h["seconds"] for h in others) >= 0.8 * 0.080

