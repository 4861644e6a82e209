"""``petals-ops doctor``'s findings as a pure function of a probed snapshot, our containers and a trace
(the real commands run against a real swarm in tests/test_probe_swarm.py and the loopback fleet in
tests/test_fleet.py)."""

from __future__ import annotations

from dataclasses import replace

from petals_ops.fleet.doctor import DoctorReport, diagnose
from petals_ops.fleet.status import ContainerStatus, join
from petals_ops.swarm.health import BootstrapPeer
from petals_ops.swarm.reachability import with_reachability
from petals_ops.swarm.trace import Hop, HopRow, RouteResult, TraceReport
from tests.test_reachability import A, B, C, reading, snapshot


def container(host, peer, running=True, error=None):
    return ContainerStatus(host=host, container="petals-server-0" if not error else "", running=running,
                           restart_count=0, exit_code=None if running else 137, peer_id=peer, error=error)


def kinds(findings):
    return [(f.severity, f.kind, f.subject) for f in findings]


def test_healthy_swarm_has_only_thin_blocks():
    snap = snapshot({C: "ONLINE"})
    probed = with_reachability(snap, {A: reading(True), B: reading(True), C: reading(True)}, [], 5.0)
    assert kinds(diagnose(probed)) == [("warning", "thin", "0:2")]
    report = DoctorReport("m-petals", diagnose(probed), checked=["x"])
    assert report.exit_code == 3 and report.to_dict()["exit_code"] == 3
    assert DoctorReport("m-petals", [], checked=["x"]).exit_code == 0


def test_unreachable_only_copy_zombies_skew_and_bootstrap():
    snap = snapshot({C: "OFFLINE"})
    servers = [replace(snap.servers[0], version="2.2.0", torch_dtype="bfloat16"),
               replace(snap.servers[1], version="2.1.0", torch_dtype="float16", quant_type="nf4"),
               snap.servers[2]]
    snap = replace(snap, servers=servers)
    dead = BootstrapPeer("/ip4/10.0.0.9/tcp/31337/p2p/QmDead", "QmDead", reading(False))
    probed = with_reachability(snap, {A: reading(True), B: reading(False)}, [dead], 5.0)
    ghost = "QmGhost" + "g" * 30
    containers = [container("a10-1", A), container("a10-2", B), container("a10-3", ghost),
                  container("a10-4", C, running=False),
                  container("a10-5", None, error="a10-5: connection refused")]
    findings = diagnose(probed, containers=containers)
    got = kinds(findings)
    assert got[:2] == [("critical", "uncovered", "2:4"), ("critical", "zombie", "a10-3/petals-server-0")]
    assert ("warning", "zombie", "a10-2/petals-server-0") in got  # ONLINE in the DHT, does not answer
    assert ("warning", "not_running", "a10-4/petals-server-0") in got
    assert ("warning", "host_unreachable", "a10-5") in got
    assert ("warning", "bootstrap_down", dead.address) in got
    assert ("warning", "version_skew", "2.1.0, 2.2.0") in got
    assert ("info", "dtype_skew", "bfloat16/none, float16/nf4") in got
    assert not any(k == "unreachable" for _, k, _ in got)  # B is named once, as our zombie
    by = {f.subject: f for f in findings}
    assert "held only by unreachable servers" in by["2:4"].message
    assert "absent from the DHT" in by["a10-3/petals-server-0"].message
    assert "restart --hosts a10-3" in by["a10-3/petals-server-0"].fix
    assert "behind 2.2.0" in by["2.1.0, 2.2.0"].message and "(ours, on a10-2)" in by["2.1.0, 2.2.0"].message
    assert DoctorReport("m-petals", findings, checked=[]).exit_code == 1
    # Without an inventory, the same unreachable server is a plain "unreachable" finding.
    alone = kinds(diagnose(probed, own_hosts={B: "local/server-1"}))
    assert ("warning", "unreachable", B) in alone and not any(k == "zombie" for _, k, _ in alone)
    # fleet status names the zombies too (the same join as `petals-ops status`).
    hosts = {r.host: r for r in join(["a10-2", "a10-3"], containers, probed)}
    assert "zombie" in hosts["a10-2"].error and hosts["a10-2"].rows[0].dht_state == "ONLINE (unreachable)"
    assert "zombie" in hosts["a10-3"].error and "absent from the DHT" in hosts["a10-3"].error


def test_slowest_hop_from_a_trace():
    hops = [HopRow(A, None, 0, 2, 0.05, 0.002, 0.048, 8), HopRow(B, None, 2, 4, 0.16, 0.081, 0.079, 8)]
    route = RouteResult([Hop(A, 0, 2), Hop(B, 2, 4)], hops=hops, step_seconds=0.23, steps=8)
    trace = TraceReport("m", "m-petals", 8, [route], 3.0)
    probed = with_reachability(snapshot({C: "ONLINE"}), {A: reading(True), B: reading(True),
                                                        C: reading(True)}, [], 5.0)
    slow = [f for f in diagnose(probed, trace=trace) if f.kind == "slowest_hop"]
    assert [(f.severity, f.subject) for f in slow] == [("info", B)]
    assert "blocks 2:4" in slow[0].message and "2:4" in slow[0].fix
    # Server time noise makes A the slowest hop: B, carrying most of the network time, is named too.
    noisy = [HopRow(A, None, 0, 2, 0.30, 0.002, 0.298, 8), HopRow(B, None, 2, 4, 0.16, 0.081, 0.079, 8)]
    trace = TraceReport("m", "m-petals", 8, [replace(route, hops=noisy)], 3.0)
    found = {f.kind: f for f in diagnose(probed, trace=trace) if f.kind.startswith("slowest")}
    assert found["slowest_hop"].subject == A and found["slowest_network_hop"].subject == B
    assert "98% of the route's network time" in found["slowest_network_hop"].message
