"""Reachability: do the servers the DHT lists as ONLINE answer, and are the swarm's bootstrap peers alive?

A server's DHT record is its own claim: a server behind a broken NAT or firewall, or a hung process, stays
ONLINE in the DHT until its record expires (240 s with petals' defaults), while no client gets through.
So, like petals' own health monitor, we call each ONLINE server's ``rpc_info`` (the first thing a client
asks a server) from our DHT node, all at once, each bounded by a timeout, and ping each initial peer
(a DHT ping after dialing its address). The readings go onto the snapshot (:func:`with_reachability`):
each ServerRecord gets ``reachability`` (``server.reachable is False``: did not answer), each block counts
only reachable servers as ONLINE, and ``snapshot.bootstrap`` lists the initial peers' liveness.

A :class:`ReachabilityProbe` keeps a cache: a server that answered is not probed again for ``ttl``
seconds (a long-running caller with a short refresh probes each server at most once per ttl); one that
did not is probed again at every call, so its recovery shows at the next refresh. The probes run in the
probe's DHT process (``door.probe_servers``), so a frozen server costs wall time (the timeout), not CPU.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Callable, Collection, Sequence

from petals_ops.client.models import ModelRef
from petals_ops.swarm.health import (BootstrapPeer, Reachability, SwarmProbe, SwarmSnapshot,
                                     format_block_ranges)
from petals_ops.util.errors import OpsError, one_line

DEFAULT_TIMEOUT = 5.0  # seconds a probe waits for an answer (petals' health monitor uses 5 s too)
DEFAULT_TTL = 25.0  # seconds a reachable reading is reused (below the exporter's default 30 s refresh)
MAX_ERROR_CHARS = 160


def _reading(answer: tuple | None, now: float) -> Reachability:
    ok, latency, error = answer if answer is not None else (False, None, "no answer")
    return Reachability(reachable=bool(ok), latency=latency if ok else None,
                        error=None if ok else one_line(error or "no answer", MAX_ERROR_CHARS), probed_at=now)


def with_reachability(snap: SwarmSnapshot, readings: dict[str, Reachability],
                      bootstrap: Sequence[BootstrapPeer], timeout: float) -> SwarmSnapshot:
    """``snap`` with each ONLINE server's reading attached and each block counting only reachable servers
    (pure). A server without a reading keeps ``reachability=None`` (not probed: counted as announced)."""
    unreachable = {p for p, r in readings.items() if not r.reachable}
    servers = [replace(s, reachability=readings.get(s.peer_id)) if s.state == "ONLINE" else s
               for s in snap.servers]
    blocks = [replace(b, unreachable=tuple(sorted(p for p, st in b.servers.items()
                                                  if st == "ONLINE" and p in unreachable)))
              for b in snap.blocks]
    return replace(snap, servers=servers, blocks=blocks, probe_timeout=float(timeout),
                   bootstrap=list(bootstrap))


class ReachabilityProbe:
    """Probes servers and initial peers through a :class:`SwarmProbe`'s DHT node, with a cache."""

    def __init__(self, swarm_probe: SwarmProbe, *, timeout: float = DEFAULT_TIMEOUT, ttl: float = DEFAULT_TTL,
                 clock: Callable[[], float] = time.time):
        self.swarm_probe = swarm_probe
        self.timeout = float(timeout)
        self.ttl = float(ttl)
        self.clock = clock
        self._cache: dict[str, Reachability] = {}
        self.probed_last = 0  # servers actually probed by the latest call (the rest came from the cache)

    def _probe(self, peer_ids: list[str]) -> dict:
        from petals_ops.client import door

        try:
            return door.probe_servers(self.swarm_probe.dht, peer_ids, self.timeout)
        except OpsError:
            raise
        except Exception as e:  # noqa: BLE001  the DHT client's process failed us: one line, not a traceback
            raise OpsError(f"probing {len(peer_ids)} servers through the DHT client failed "
                           f"({one_line(e, 200)})",
                           fix="retry; 'petals-ops swarm status --no-probe' shows the DHT's view") from e

    def servers(self, peer_ids: Sequence[str]) -> dict[str, Reachability]:
        """A reading per peer id: from the cache if it answered less than ``ttl`` s ago, else probed now."""
        now = self.clock()
        out = {p: r for p in dict.fromkeys(peer_ids)
               if (r := self._cache.get(p)) is not None and r.reachable and now - r.probed_at < self.ttl}
        todo = [p for p in dict.fromkeys(peer_ids) if p not in out]
        answers = self._probe(todo) if todo else {}
        now = self.clock()
        for p in todo:
            out[p] = self._cache[p] = _reading(answers.get(p), now)
        for p in [p for p in self._cache if p not in out]:  # forget servers that left
            del self._cache[p]
        self.probed_last = len(todo)
        return out

    def bootstrap(self) -> list[BootstrapPeer]:
        """Every initial peer, pinged now (a handful: never cached)."""
        from petals_ops.client import door

        addresses = list(dict.fromkeys(self.swarm_probe.initial_peers))
        try:
            answers = door.ping_dht_peers(self.swarm_probe.dht, addresses, self.timeout)
        except OpsError:
            raise
        except Exception as e:  # noqa: BLE001
            raise OpsError(f"pinging the initial peers through the DHT client failed ({one_line(e, 200)})",
                           fix="retry; 'petals-ops swarm status --no-probe' shows the DHT's view") from e
        now = self.clock()
        return [BootstrapPeer(address=a, peer_id=a.rsplit("/p2p/", 1)[-1],
                              reachability=_reading(answers.get(a), now)) for a in addresses]

    def apply(self, snaps: Sequence[SwarmSnapshot], *, only: Collection[str] | None = None,
              bootstrap: bool = True) -> list[SwarmSnapshot]:
        """The snapshots (of one swarm: several models) with readings attached; a server serving several
        models is probed once. ``only``: probe these peers only (``up``'s wait: our servers, not a public
        swarm's hundreds); ``bootstrap``: also ping the initial peers."""
        online = [s.peer_id for snap in snaps for s in snap.servers
                  if s.state == "ONLINE" and (only is None or s.peer_id in only)]
        readings = self.servers(online)
        bootstrap = self.bootstrap() if bootstrap else []
        return [with_reachability(snap, readings, bootstrap, self.timeout) for snap in snaps]


def probe_snapshot(initial_peers: Sequence[str], model: ModelRef, *,
                   timeout: float = DEFAULT_TIMEOUT) -> SwarmSnapshot:
    """One snapshot with every ONLINE server and initial peer probed (for commands: ``swarm status``,
    ``doctor``); a short-lived DHT node."""
    with SwarmProbe(initial_peers, model) as probe:
        snap = probe.snapshot()
        return ReachabilityProbe(probe, timeout=timeout, ttl=0).apply([snap])[0]


def summary_lines(snap: SwarmSnapshot) -> list[str]:
    """What the probes found, for people (``swarm status``): unreachable servers, the blocks only they
    hold, the initial peers' liveness. Peer ids and addresses only: no announced string."""
    if not snap.probed:
        return ["reachability: not probed (--no-probe): ONLINE is what servers announce"]
    bad = snap.unreachable_servers
    probed = sum(s.reachable is not None for s in snap.servers)
    line = (f"reachability: {probed - len(bad)}/{probed} ONLINE servers answered rpc_info within "
            f"{snap.probe_timeout:g} s")
    lines = [line + (f"; unreachable: {', '.join(s.peer_id for s in bad)}" if bad else "")]
    if snap.blocks_only_on_unreachable:
        lines.append(f"DEGRADED: blocks {format_block_ranges(snap.blocks_only_on_unreachable)} are held only "
                     "by unreachable servers")
    dead = [p for p in snap.bootstrap if not p.alive]
    lines.append(f"bootstrap peers: {len(snap.bootstrap) - len(dead)}/{len(snap.bootstrap)} alive"
                 + "".join(f"; DOWN {p.address} ({p.reachability.error})" for p in dead))
    return lines
