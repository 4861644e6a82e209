"""One reading of the fleet (our containers over SSH + Docker, through the fleet executor) and of the swarm
(a DHT snapshot through a probe kept open between passes). A host that cannot be read is a
:class:`HostReading` with its one-line error ("unknown"), never an empty host; the swarm not read is
``dht_error``."""

from __future__ import annotations

import time
from typing import Sequence

from petals_ops.fleet import containers as C
from petals_ops.fleet.executor import Fleet, Target
from petals_ops.fleet.ssh import HostSession
from petals_ops.fleet.watch.model import HostReading, Reading, ServerReading
from petals_ops.util.errors import OpsError, one_line

DOCKER_TIMEOUT = 30.0  # a hung engine makes its host unknown for this pass, not the pass hung


def read_host(target: Target, session: HostSession) -> HostReading:
    """Our containers on the host (managed by petals-ops AND labelled for it), plus a ``missing`` entry for
    each inventory slot with no container."""
    # not closed here: closing a Docker client over SSH closes the session's connection (the fleet does)
    found = C.managed_containers(session.docker(timeout=DOCKER_TIMEOUT), target.name)
    names = {c.name for c in found}
    servers = [ServerReading(target.name, s.container, "missing", s.block_indices)
               for s in target.slots if s.container not in names]
    for c in found:
        state = c.attrs.get("State", {})
        servers.append(ServerReading(target.name, c.name, state.get("Status") or c.status,
                                     c.labels.get(C.LABEL_BLOCKS), c.labels.get(C.LABEL_PEER),
                                     spare=target.host.spare, started_at=_timestamp(state.get("StartedAt"))))
    capacity = 1 if target.server.device == "cpu" else max(1, target.host.gpus)
    return HostReading(target.name, None, tuple(sorted(servers, key=lambda s: s.container)),
                       spare=target.host.spare, capacity=capacity)


def owner_ranges(targets: Sequence[Target]) -> tuple[tuple[str, str], ...]:
    """(owner key, "start:end") of every pinned server of the non-spare hosts: what a spare may take."""
    return tuple((f"{t.name}/{s.container}", s.block_indices) for t in targets if not t.host.spare
                 for s in t.slots if s.block_indices)


class Observer:
    """Reads the fleet and the swarm once per pass. ``probe``: a started
    :class:`~petals_ops.swarm.health.SwarmProbe` (None: the swarm is not read; every DHT verdict is
    unknown)."""

    def __init__(self, targets: Sequence[Target], probe=None, probe_timeout: float | None = None):
        self.targets = list(targets)
        self.probe = probe
        self.ranges = owner_ranges(self.targets)
        self.reach = None
        if probe is not None and probe_timeout:  # each ONLINE server's rpc_info, as a client would call it
            from petals_ops.swarm.reachability import ReachabilityProbe

            self.reach = ReachabilityProbe(probe, timeout=probe_timeout)

    def read(self, fleet: Fleet) -> Reading:
        hosts = []
        for o in fleet.each(read_host):
            hosts.append(o.value if o.ok else HostReading(o.target.name, o.error or "unreadable",
                                                          spare=o.target.host.spare))
        at = time.time()
        snap, dht_error = None, None
        if self.probe is None:
            dht_error = "no swarm to read (no initial peers)"
        else:
            try:
                snap = self.probe.snapshot(require_peers=True)
                if self.reach is not None:  # unreachable ONLINE servers no longer count as covering
                    snap = self.reach.apply([snap])[0]
            except OpsError as e:
                dht_error = e.one_line()
            except Exception as e:  # hivemind's own errors: the swarm was not read, nothing more
                dht_error = f"{type(e).__name__}: {one_line(e, 200)}"
        if snap is not None:
            hosts = [HostReading(h.host, h.error, tuple(_with_dht(s, snap) for s in h.servers), h.spare,
                                 h.capacity) for h in hosts]
        return Reading(at, tuple(hosts), tuple(snap.uncovered_blocks) if snap else (), dht_error, self.ranges)


def _with_dht(s: ServerReading, snap) -> ServerReading:
    from dataclasses import replace

    record = snap.server(s.peer_id) if s.peer_id else None
    return replace(s, dht=record.state if record else "absent",
                   reachable=record.reachable if record else None)


def _timestamp(text) -> float | None:
    """Docker's RFC 3339 time with nanoseconds (``2026-12-02T16:02:53.123456789Z``) -> Unix time."""
    from datetime import datetime, timezone

    if not isinstance(text, str) or not text or text.startswith("0001-"):
        return None
    try:
        head, _, frac = text.rstrip("Z").partition(".")
        stamp = datetime.fromisoformat(head).replace(tzinfo=timezone.utc).timestamp()
        return stamp + (float(f"0.{frac[:6]}") if frac.isdigit() else 0.0)
    except ValueError:
        return None
