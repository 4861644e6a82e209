"""Reachability and next_pings, the pure parts: sanitizing what servers announce about their pings, the
snapshot with probe readings attached (coverage counts only reachable servers), the probe's cache, the
terminal lines. The real probes run against a real swarm in tests/test_probe_swarm.py."""

from __future__ import annotations

import math

from petals_ops.swarm.health import (MAX_NEXT_PINGS, BlockHealth, BootstrapPeer, Reachability, ServerRecord,
                                     SwarmSnapshot, next_pings_of)
from petals_ops.swarm.reachability import ReachabilityProbe, summary_lines, with_reachability

A, B, C = "QmA1" + "a" * 40, "QmB2" + "b" * 40, "QmC3" + "c" * 40


def snapshot(states=None) -> SwarmSnapshot:
    """4 blocks: A holds 0:2, B 2:4, C 2:4 (JOINING unless told otherwise)."""
    states = {A: "ONLINE", B: "ONLINE", C: "JOINING", **(states or {})}
    spans = {A: (0, 2), B: (2, 4), C: (2, 4)}
    servers = [ServerRecord(p, states[p], *spans[p], 10.0) for p in (A, B, C)]
    blocks = [BlockHealth(i, f"m.{i}", {p: states[p] for p in spans if spans[p][0] <= i < spans[p][1]})
              for i in range(4)]
    return SwarmSnapshot("m", "m-petals", 4, 1.0, 0.1, blocks, servers)


def reading(ok: bool, at: float = 100.0) -> Reachability:
    return Reachability(ok, 0.01 if ok else None, None if ok else "no answer to rpc_info in 5 s", at)


def test_next_pings_are_sanitized():
    hostile = {
        B: 0.012, C: math.inf,  # a failed ping: None
        "Qm<script>": 0.1, "x" * 65: 0.1, 7: 0.1, "": 0.1,  # not a peer id
        "QmNaN": math.nan, "QmNeg": -1.0, "QmBool": True, "QmStr": "1", "QmHuge": 1e9,
    }
    assert next_pings_of(hostile) == {B: 0.012, C: None, "QmHuge": None}
    assert next_pings_of(None) is None and next_pings_of([1, 2]) is None and next_pings_of("x") is None
    many = {f"Qm{a}{b}{c}": 0.001 for a in "abcdefghij" for b in "abcdefghij" for c in "abcdefghij"}
    kept = next_pings_of(many)
    assert len(kept) == MAX_NEXT_PINGS and list(kept) == sorted(kept)


def test_unreachable_server_counts_for_no_block_and_round_trips():
    snap = snapshot()
    boot = [BootstrapPeer("/ip4/127.0.0.1/tcp/1/p2p/QmD", "QmD", reading(False))]
    probed = with_reachability(snap, {A: reading(True), B: reading(False)}, boot, 5.0)
    assert snap.fully_served and not snap.probed  # the DHT's own view
    assert probed.probed and not probed.fully_served
    assert probed.uncovered_blocks == [2, 3] == probed.blocks_only_on_unreachable
    assert [s.peer_id for s in probed.unreachable_servers] == [B]
    assert [s.reachable for s in probed.servers] == [True, False, None]  # C is JOINING: not probed
    assert probed.blocks[2].announced_online == 1 and probed.blocks[2].online == 0
    data = probed.to_dict()
    assert [s["reachable"] for s in data["servers"]] == [True, False, None]
    assert data["coverage"]["unreachable_servers"] == [B]
    assert data["coverage"]["blocks_only_on_unreachable"] == [2, 3]
    assert (data["coverage"]["bootstrap_alive"], data["coverage"]["bootstrap_total"]) == (0, 1)
    assert data["bootstrap"][0]["alive"] is False
    assert SwarmSnapshot.from_dict(data) == probed
    # A second reachable copy of 2:4 (C ONLINE and answering) keeps the model served.
    healed = with_reachability(snapshot({C: "ONLINE"}), {A: reading(True), B: reading(False),
                                                       C: reading(True)}, [], 5.0)
    assert healed.fully_served and healed.min_online == 1 and not healed.blocks_only_on_unreachable
    lines = summary_lines(probed)
    assert lines[0].endswith(f"unreachable: {B}") and "DEGRADED: blocks 2:4" in lines[1]
    assert lines[2].startswith("bootstrap peers: 0/1 alive; DOWN /ip4/127.0.0.1/tcp/1/p2p/QmD")


class Recorded(ReachabilityProbe):
    """The cache's logic alone: answers from a table instead of the network (the real probes run in
    tests/test_probe_swarm.py)."""

    def __init__(self, answers, **kw):
        self.now = 1000.0
        super().__init__(None, clock=lambda: self.now, **kw)
        self.answers, self.asked = answers, []

    def _probe(self, peer_ids):
        self.asked.append(list(peer_ids))
        return {p: self.answers[p] for p in peer_ids if p in self.answers}


def test_cache_reuses_answers_for_ttl_and_reprobes_failures():
    probe = Recorded({A: (True, 0.01, None), B: (False, None, "refused\nby\x1b[31m peer")}, timeout=2, ttl=25)
    first = probe.servers([A, B, C])
    assert probe.asked == [[A, B, C]] and probe.probed_last == 3
    assert first[A].reachable and first[A].latency == 0.01 and first[A].probed_at == 1000.0
    assert not first[B].reachable and first[B].error == "refused by?[31m peer"  # one sanitized line
    assert first[C].error == "no answer"
    probe.now += 10
    second = probe.servers([A, B])
    assert probe.asked[-1] == [B] and second[A] is first[A]  # A from the cache, B (failed) probed again
    probe.now += 20  # A's reading is 30 s old: probed again
    probe.servers([A])
    assert probe.asked[-1] == [A]
    assert set(probe._cache) == {A}  # servers gone from the DHT are forgotten


def test_exporter_renders_reachability_bootstrap_and_next_pings():
    """The exporter's families and /map.json for a probed snapshot (pure renders of one state)."""
    from dataclasses import replace

    from prometheus_client import CollectorRegistry, generate_latest

    from petals_ops.monitoring.collector import SwarmCollector
    from petals_ops.monitoring.map_state import map_json
    from petals_ops.monitoring.refresher import ExporterState

    snap = snapshot({C: "ONLINE"})
    pings = {B: 0.012, C: None, "QmElsewhere": 0.5}  # a peer serving no block of this model: not exported
    snap = replace(snap, servers=[replace(snap.servers[0], next_pings=pings), *snap.servers[1:]])
    boot = [BootstrapPeer("/ip4/127.0.0.1/tcp/1/p2p/QmD", "QmD", reading(True)),
            BootstrapPeer("/ip4/127.0.0.1/tcp/2/p2p/QmE", "QmE", reading(False))]
    probed = with_reachability(snap, {A: reading(True), B: reading(False), C: reading(True)}, boot, 5.0)
    state = ExporterState(refresh_interval=1.0, snapshots=(probed,), up=True, probe_timeout=5.0,
                          probe_seconds=0.2, probed_servers=3)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SwarmCollector(lambda: state))
    text = generate_latest(registry).decode()
    assert f'petals_server_reachable{{host="",model="m-petals",peer_id="{B}"}} 0.0' in text
    assert f'petals_server_reachable{{host="",model="m-petals",peer_id="{A}"}} 1.0' in text
    assert f'petals_server_probe_latency_seconds{{host="",model="m-petals",peer_id="{A}"}} 0.01' in text
    assert f'peer_id="{B}"}} 0.01' not in text  # no latency without an answer
    assert 'petals_model_unreachable_servers{model="m-petals"} 1.0' in text
    assert 'petals_block_online_servers{block="2",model="m-petals"} 1.0' in text  # C only: B unreachable
    assert 'petals_bootstrap_peer_alive{address="/ip4/127.0.0.1/tcp/2/p2p/QmE",peer_id="QmE"} 0.0' in text
    assert f'next_peer_id="{B}",peer_id="{A}"}} 0.012' in text
    assert f'next_peer_id="{C}",peer_id="{A}"}} +Inf' in text
    assert "QmElsewhere" not in text
    assert "petals_exporter_probed_servers 3.0" in text
    page = map_json(state, now=2.0)
    servers = {s["peer_id"]: s for s in page["models"][0]["servers"]}
    assert servers[B]["reachable"] is False and servers[B]["cells"] == "..XX" and servers[B]["probe_error"]
    assert servers[A]["next_pings"] == [[B, 12.0], [C, None], ["QmElsewhere", 500.0]]
    assert page["models"][0]["unreachable_servers"] == 1
    assert [b["alive"] for b in page["exporter"]["bootstrap"]] == [True, False]


def test_probes_go_to_the_dht_process_in_small_chunks_all_in_flight():
    """hivemind's pipe into the DHT process broke (EAGAIN, the DHT process died) on one call carrying 400
    peer ids (benchmarks/bench_exporter.py --probes): calls carry at most PROBE_CHUNK, and all are sent
    before any is awaited (one timeout in all). The DHT stand-in records calls; the real one runs in
    tests/test_probe_swarm.py and the benchmark."""
    from petals_ops.client import door

    events = []

    class Future:
        def __init__(self, keys):
            self.keys = keys

        def result(self, timeout):
            events.append(("wait", len(self.keys)))
            return {k: (False, None, "x") for k in self.keys}

    class Dht:
        def run_coroutine(self, call, return_future=False):
            assert return_future
            events.append(("send", len(call.args[0])))
            return Future(call.args[0])

    keys = [f"Qm{i}" for i in range(100)]
    answers = door.probe_servers(Dht(), keys, 5.0)
    assert set(answers) == set(keys)
    sends = [n for kind, n in events if kind == "send"]
    assert max(sends) <= door.PROBE_CHUNK and sum(sends) == 100
    assert [kind for kind, _ in events] == ["send"] * len(sends) + ["wait"] * len(sends)
    assert door.probe_servers(Dht(), [], 5.0) == {}
