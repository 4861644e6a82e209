"""The background refresher: walks the DHT every period and publishes the latest :class:`ExporterState`.

Walking the DHT is expensive (seconds for a large swarm), so scrapes never do it: they read the state this
thread published last. One :class:`SwarmProbe` (one client-mode DHT node) lives across refreshes and serves
every monitored model; after any failure it is closed and a fresh one is started on the next refresh, which
is how the exporter finds the swarm again after the DHT comes back. When it monitors the local swarm, the
fresh probe re-reads the swarm's state first, so a swarm restarted on a new DHT port is found too.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from petals_ops.util.errors import InputError, OpsError, one_line
from petals_ops.client.models import ModelRef
from petals_ops.swarm.health import BadRecordError, BootstrapPeer, SwarmProbe, SwarmSnapshot
from petals_ops.swarm.reachability import DEFAULT_TIMEOUT, DEFAULT_TTL, ReachabilityProbe

log = logging.getLogger("petals_ops.exporter")


@dataclass(frozen=True)
class ExporterState:
    """Everything a scrape renders. Replaced as a whole (never mutated), so readers need no lock."""

    refresh_interval: float
    snapshots: tuple[SwarmSnapshot, ...] = ()  # latest successful walk of each model
    own_hosts: dict[str, str] = field(default_factory=dict)  # peer id -> our host name
    containers: tuple[Any, ...] | None = None  # fleet.ContainerStatus; None when no inventory is given
    gpus: tuple[Any, ...] = ()  # fleet.gpu.GpuHostStatus, one per reachable inventory host
    fleet_ok: bool | None = None  # None when no inventory is given
    up: bool = False  # the latest swarm refresh succeeded for every model
    refresh_seconds: float | None = None
    last_success: float | None = None  # wall time of the latest successful swarm refresh
    refreshes: int = 0
    errors: dict[str, int] = field(default_factory=lambda: {"swarm": 0, "fleet": 0})
    last_error: str | None = None
    canary: Any = None  # monitoring.canary.CanaryState; None when the canary is off
    probe_timeout: float | None = None  # None: reachability probes are off (--probe-timeout 0)
    probe_seconds: float | None = None  # wall time of the latest refresh's probes
    probed_servers: int = 0  # servers probed by the latest refresh (the others' readings were cached)

    @property
    def bootstrap(self) -> tuple[BootstrapPeer, ...]:
        """The initial peers' liveness from the latest probed walk (the same for every model)."""
        return tuple(self.snapshots[0].bootstrap) if self.snapshots else ()


def load_fleet_api() -> tuple[Callable, Callable]:
    """``(load_inventory, read_fleet)`` from the fleet module, imported only when --inventory is given."""
    try:
        from petals_ops.fleet import status as fleet_status
    except ImportError as e:
        raise InputError(
            f"--inventory needs the fleet module petals_ops.fleet.status, which cannot be imported ({e})",
            fix="update petals-ops, or run the exporter without --inventory",
        ) from e
    return fleet_status.load_inventory, fleet_status.read_fleet


def local_identities(run_dir: str | Path | None) -> dict[str, Path]:
    """Our host name -> identity file of each server of the local swarm in ``run_dir`` ({} if none)."""
    if not run_dir:
        return {}
    from petals_ops.lab.local_swarm import LocalSwarm

    swarm = LocalSwarm.load(run_dir)
    if swarm is None:
        return {}
    return {
        f"local/{p.name}": Path(swarm.run_dir) / f"{p.name}.id"
        for p in swarm.servers
        if (Path(swarm.run_dir) / f"{p.name}.id").is_file()
    }


class Refresher:
    """Walks the swarm every ``interval`` seconds in a daemon thread; :attr:`state` is the latest result."""

    def __init__(
        self,
        initial_peers: Sequence[str],
        models: Sequence[ModelRef],
        *,
        interval: float,
        inventory: Any = None,
        read_fleet: Callable | None = None,
        identities: dict[str, Path] | None = None,
        startup_timeout: float | None = None,
        rediscover: Callable[[], tuple[Sequence[str], dict[str, Path]]] | None = None,
        canary: Any = None,
        probe_timeout: float | None = DEFAULT_TIMEOUT,
        probe_ttl: float = DEFAULT_TTL,
    ):
        """``rediscover``: returns fresh (initial peers, identities), called before each fresh probe after a
        failure (the local swarm's state: it may have been restarted elsewhere). ``canary``: a
        :class:`petals_ops.monitoring.canary.Canary`, started and stopped with this thread; each published
        state carries its latest result. ``probe_timeout``: each refresh probes the ONLINE servers and
        initial peers (swarm/reachability.py) with this timeout, a server's answer reused for ``probe_ttl``
        s; None: no probes."""
        if not models:
            raise InputError("no model to monitor", fix="pass --model NAME_OR_DIR (repeatable)")
        self.initial_peers = list(initial_peers)
        self.models = list(models)
        self.interval = float(interval)
        if not 0 < self.interval < float("inf"):
            raise InputError(f"refresh interval {interval} is not a positive number of seconds",
                             fix="use e.g. --refresh 30s")
        self.inventory = inventory
        self.read_fleet = read_fleet
        self.identities = dict(identities or {})
        self.rediscover = rediscover
        self.canary = canary
        self.refused: list[str] = []  # one line per model whose DHT records the latest walk refused
        self.startup_timeout = startup_timeout or min(30.0, max(5.0, self.interval))
        self._probe: SwarmProbe | None = None
        self.probe_timeout, self.probe_ttl = probe_timeout, float(probe_ttl)
        self._reach: ReachabilityProbe | None = None
        self.probe_error: str | None = None  # the latest refresh's probe failure, if any
        self.probe_seconds: float | None = None
        self._own_local: dict[str, str] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.state = ExporterState(
            refresh_interval=self.interval,
            containers=() if inventory is not None else None,
            fleet_ok=None,
        )
        # Called with each new state before it is published (the HTTP server encodes its bodies there, so
        # no request pays for it); a failing callback is logged and skipped, never fatal.
        self.before_publish: list[Callable[[ExporterState], None]] = []

    # -- one refresh ----------------------------------------------------------------------------------
    def _own_from_identities(self) -> dict[str, str]:
        if self._own_local is None:
            own = {}
            if self.identities:
                from petals_ops.client import door

                for host, path in self.identities.items():
                    with contextlib.suppress(Exception):  # a half-written identity file: try next refresh
                        own[door.peer_id_of_identity(Path(path).read_bytes())] = host
                if len(own) < len(self.identities):
                    return own
            self._own_local = own
        return self._own_local

    def _rediscover(self) -> None:
        if self.rediscover is None:
            return
        try:
            peers, identities = self.rediscover()
        except Exception as e:  # noqa: BLE001  no swarm there right now: keep the old peers, fail the walk
            log.warning("cannot re-read the local swarm: %s", one_line(e, 300))
            return
        if list(peers) and list(peers) != self.initial_peers:
            log.warning("the local swarm's initial peers changed: %s", " ".join(peers))
            self.initial_peers = list(peers)
            self.identities, self._own_local = dict(identities), None

    def _walk_swarm(self) -> list[SwarmSnapshot]:
        """A snapshot per model. A model whose records are refused keeps its previous snapshot and its
        error goes to :attr:`refused` (the others are walked as usual); losing the swarm raises."""
        if self._probe is None:
            self._rediscover()
            self._probe = SwarmProbe(self.initial_peers, self.models[0],
                                     startup_timeout=self.startup_timeout).start()
        old = {s.dht_prefix: s for s in self.state.snapshots}
        snaps, self.refused = [], []
        for i, model in enumerate(self.models):
            try:
                snap = self._probe.snapshot(model, require_peers=True)
            except BadRecordError as e:
                self.refused.append(e.one_line())
                if model.dht_prefix in old:
                    snaps.append(old[model.dht_prefix])
                continue
            if model.num_blocks is None:  # learnt from the swarm once; keep it
                self.models[i] = replace(model, num_blocks=snap.num_blocks)
            snaps.append(snap)
        return self._probe_reachability(snaps)

    def _probe_reachability(self, snaps: list[SwarmSnapshot]) -> list[SwarmSnapshot]:
        """The walked snapshots with their ONLINE servers and initial peers probed (bounded by the probe
        timeout, in the DHT client's process); a kept (refused) snapshot is probed again too."""
        if self.probe_timeout is None or not snaps:
            return snaps
        if self._reach is None:
            self._reach = ReachabilityProbe(self._probe, timeout=self.probe_timeout, ttl=self.probe_ttl)
        started = time.monotonic()
        try:
            probed = self._reach.apply(snaps)
        except OpsError as e:  # the DHT's view is still served, unprobed; the failure is counted
            self.probe_error = e.one_line()
            log.warning("reachability probes failed: %s", self.probe_error)
            return snaps
        self.probe_seconds = time.monotonic() - started
        return probed

    def _close_probe(self) -> None:
        self._reach = None  # its cache and DHT node go with the probe
        if self._probe is not None:
            with contextlib.suppress(Exception):
                self._probe.close()
            self._probe = None

    def refresh_once(self) -> ExporterState:
        old = self.state
        errors = dict(old.errors)
        started = time.monotonic()
        up, snapshots, last_success, last_error = False, old.snapshots, old.last_success, old.last_error
        try:
            self.refused, self.probe_error = [], None
            snapshots = tuple(self._walk_swarm())
            if self.probe_error:
                errors["probe"] = errors.get("probe", 0) + 1
                last_error = self.probe_error[:300]
            refused = self.refused
            if refused:  # a bad record of one model: counted and shown, the other models still served
                errors["swarm"] += 1
                last_error = "; ".join(refused)[:300]
                log.warning("swarm refresh refused a record: %s", last_error)
            else:
                up, last_success = True, time.time()
        except Exception as e:  # noqa: BLE001  any failure of the walk: count it, keep serving, fresh probe next time
            errors["swarm"] += 1
            last_error = one_line(e, 300)
            log.warning("swarm refresh failed: %s", last_error)
            self._close_probe()
        refresh_seconds = time.monotonic() - started

        containers, gpus, fleet_ok = old.containers, old.gpus, old.fleet_ok
        if self.inventory is not None and self.read_fleet is not None:
            try:
                reading = self.read_fleet(self.inventory)
                containers, gpus, fleet_ok = tuple(reading.containers), tuple(reading.gpus), True
            except Exception as e:  # noqa: BLE001  (SSH, Docker, anything: counted, never fatal)
                errors["fleet"] += 1
                containers, gpus, fleet_ok = (), (), False
                last_error = one_line(e, 300)
                log.warning("container status failed: %s", last_error)

        own = dict(self._own_from_identities())
        for c in containers or ():
            if getattr(c, "peer_id", None):
                own[c.peer_id] = c.host
        # An unreachable host (or fleet) lists no containers: keep its servers as ours from the previous
        # refresh, so petals_own_server_online{...} stays and the "our server not ONLINE" alert can fire.
        unreachable = {c.host for c in containers or () if getattr(c, "error", None)}
        for peer_id, host in old.own_hosts.items():
            if host in unreachable or fleet_ok is False:
                own.setdefault(peer_id, host)
        new = ExporterState(
            refresh_interval=self.interval, snapshots=snapshots, own_hosts=own, containers=containers,
            gpus=gpus, fleet_ok=fleet_ok, up=up, refresh_seconds=refresh_seconds, last_success=last_success,
            refreshes=old.refreshes + 1, errors=errors, last_error=last_error,
            canary=self.canary.state if self.canary is not None else None,
            probe_timeout=self.probe_timeout, probe_seconds=self.probe_seconds,
            probed_servers=self._reach.probed_last if self._reach is not None else 0,
        )
        for prepare in self.before_publish:
            try:
                prepare(new)
            except Exception:  # a request would encode it itself
                log.exception("preparing the new state failed")
        self.state = new
        return self.state

    # -- the thread -----------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.refresh_once()
            except Exception:  # never let the thread die: the exporter would serve a frozen state
                log.exception("refresh crashed")
            try:
                self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))
            except (OverflowError, ValueError):  # an interval past what a wait takes: never die for it
                self._stop.wait(24 * 3600.0)
        self._close_probe()

    def start(self) -> Refresher:
        self._thread = threading.Thread(target=self._run, name="petals-exporter-refresher", daemon=True)
        self._thread.start()
        if self.canary is not None:
            self.canary.start()
        return self

    def alive(self) -> bool:
        """The thread runs (or was never started, or was stopped on purpose)."""
        return self._thread is None or self._thread.is_alive() or self._stop.is_set()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self.canary is not None:
            self.canary.stop(timeout)
        if self._thread is not None:
            self._thread.join(timeout)
        self._close_probe()
