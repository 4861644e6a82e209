"""Container and GPU status per host (for ``petals-ops status`` and the exporter), joined with the DHT.

Public interface (the exporter codes against it): :func:`read_fleet` (a :class:`FleetReading` of
:class:`ContainerStatus` and :class:`~petals_ops.fleet.gpu.GpuHostStatus`) and :func:`load_inventory`.
:func:`fleet_status` is the join of containers and the swarm's DHT (by peer id) that ``status`` prints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from petals_ops.fleet import containers as C
from petals_ops.fleet.executor import Fleet, Outcome, Target, resolve_targets
from petals_ops.fleet.gpu import GpuHostStatus, read_gpus
from petals_ops.fleet.inventory import load_inventory
from petals_ops.fleet.peers import inventory_peers, joins_public_swarm, swarm_model
from petals_ops.fleet.result import ContainerRow, HostResult
from petals_ops.fleet.schema import Inventory
from petals_ops.fleet.ssh import HostError, HostSession, SSHOptions
from petals_ops.util.errors import OpsError

__all__ = ["ContainerStatus", "FleetReading", "FleetStatus", "GpuHostStatus", "fleet_status",
           "load_inventory", "read_fleet"]


@dataclass
class ContainerStatus:
    host: str
    container: str
    running: bool
    restart_count: int
    exit_code: int | None
    peer_id: str | None
    error: str | None  # set (and the rest defaulted) when the host is unreachable


@dataclass(frozen=True)
class FleetReading:
    """One read of our hosts: their managed containers (one entry with ``error`` per unreachable host)
    and, per reachable host, its GPUs (nvidia-smi over the same SSH session)."""

    containers: tuple[ContainerStatus, ...] = ()
    gpus: tuple[GpuHostStatus, ...] = ()


def _read_host(target: Target, session: HostSession, gpus: bool) -> FleetReading:
    host = target.name
    out: list = []
    for c in C.managed_containers(session.docker(), host):
        state = c.attrs.get("State", {})
        running = state.get("Status") == "running"
        out.append(ContainerStatus(
            host=host, container=c.name, running=running,
            restart_count=int(c.attrs.get("RestartCount", 0)),
            exit_code=None if running else state.get("ExitCode"), peer_id=c.labels.get(C.LABEL_PEER),
            error=None,
        ))
    gpu: tuple[GpuHostStatus, ...] = ()
    if gpus:
        try:
            gpu = (read_gpus(session, target.expected_gpus),)
        except HostError as e:  # nvidia-smi hung or the connection dropped: the containers still count
            gpu = (GpuHostStatus(host, "error", expected=target.expected_gpus, detail=e.one_line()),)
    return FleetReading(tuple(out), gpu)


def _reading(outcomes: list[Outcome[FleetReading]]) -> FleetReading:
    containers: list[ContainerStatus] = []
    gpu: list[GpuHostStatus] = []
    for o in outcomes:
        if o.ok:
            containers += o.value.containers
            gpu += o.value.gpus
        else:  # the exporter's shape of an unreachable host: one entry with the error
            containers.append(ContainerStatus(host=o.target.name, container="", running=False,
                                              restart_count=0, exit_code=None, peer_id=None, error=o.error))
    return FleetReading(tuple(containers), tuple(gpu))


def read_fleet(inventory: Inventory, hosts: Sequence[str] | None = None, *,
               opts: SSHOptions | None = None, gpus: bool = True) -> FleetReading:
    """The managed server containers (and GPUs) of ``hosts`` (default: all inventory hosts), in parallel.

    An unreachable host gives one container entry with ``container=""`` and ``error`` set; it never hides
    the others.
    """
    with Fleet(resolve_targets(inventory, hosts, opts=opts)) as fleet:
        return _reading(fleet.each(lambda t, s: _read_host(t, s, gpus)))


@dataclass
class FleetStatus:
    """``status``: per host its containers joined with the DHT's view of each server, and its GPUs."""

    hosts: list[HostResult]
    gpus: list[GpuHostStatus] = field(default_factory=list)
    coverage: dict | None = None
    dht_prefix: str | None = None
    dht_error: str | None = None
    public_swarm: bool = False


def join(names: Sequence[str], statuses: Sequence[ContainerStatus], snap=None,
         spares: Sequence[str] = ()) -> list[HostResult]:
    """Containers x DHT records (by peer id) -> one result per host. Pure (unit-tested without SSH).

    A host fails when unreachable, when it has no containers, or when a server is not running or
    (with a snapshot) not ONLINE. A running container whose server is absent from the DHT, or ONLINE there
    but unreachable (a probed snapshot), is a zombie, and its problem says so.
    """
    out = []
    for h in names:
        mine = [s for s in statuses if s.host == h]
        unreachable = next((s.error for s in mine if s.error), None)
        if unreachable:
            out.append(HostResult.failed(h, unreachable))
            continue
        if not mine and h in spares:  # an idle hot spare (watch starts servers there)
            out.append(HostResult(h))
            continue
        if not mine:
            out.append(HostResult.failed(h, f"{h}: no petals-ops containers (run 'petals-ops up')"))
            continue
        rows, problems = [], []
        for s in mine:
            rec = snap.server(s.peer_id) if snap is not None and s.peer_id else None
            dht_state = rec.state if rec else ("absent" if snap is not None else None)
            problem = zombie(s, snap)
            if rec is not None and rec.reachable is False:
                dht_state = "ONLINE (unreachable)"
            if not s.running:
                problem = f"{s.container} is not running (exit code {s.exit_code})"
            elif problem is None and snap is not None and dht_state != "ONLINE":
                problem = f"{s.container} is {dht_state} in the DHT"
            row = ContainerRow(s.container, s.running, s.restart_count, s.exit_code, s.peer_id, dht_state,
                               f"{rec.start_block}:{rec.end_block}" if rec else None,
                               rec.throughput if rec else None, ok=problem is None, error=problem)
            problems += [problem] if problem else []
            rows.append(row)
        out.append(HostResult(h, ok=not problems, error=f"{h}: {'; '.join(problems)}" if problems else None,
                              rows=rows))
    return out


def zombie(status: ContainerStatus, snap) -> str | None:
    """One line when ``status`` is a zombie against ``snap``: the container runs but its server is absent
    from the DHT, or announces ONLINE without answering our probe; else None."""
    if snap is None or not status.running or not status.peer_id or status.error:
        return None
    rec = snap.server(status.peer_id)
    if rec is None:
        return (f"zombie: {status.container} on {status.host} runs, but its server {status.peer_id} is "
                "absent from the DHT")
    if rec.reachable is False:
        why = rec.reachability.error if rec.reachability is not None else "no answer"
        return (f"zombie: {status.container} on {status.host} runs, its server {status.peer_id} is ONLINE in "
                f"the DHT but does not answer ({why})")
    return None


def fleet_status(inventory: Inventory, hosts: Sequence[str] | None = None, *,
                 opts: SSHOptions | None = None) -> FleetStatus:
    """Containers and GPUs over SSH, the swarm's DHT through the inventory's initial peers (petals'
    public ones when the fleet joins the public swarm), joined by peer id."""
    from petals_ops.swarm.reachability import probe_snapshot

    targets = resolve_targets(inventory, hosts, opts=opts)
    with Fleet(targets) as fleet:
        reading = _reading(fleet.each(lambda t, s: _read_host(t, s, True)))
    statuses = reading.containers
    result = FleetStatus(hosts=[], gpus=list(reading.gpus), public_swarm=bool(joins_public_swarm(targets)))
    snap = None
    if any(s.peer_id for s in statuses):
        try:
            peers = inventory_peers(targets)
            if peers:
                snap = probe_snapshot(peers, swarm_model(targets))
        except OpsError as e:
            result.dht_error = e.one_line()
    result.hosts = join([t.name for t in targets], statuses, snap, [t.name for t in targets if t.host.spare])
    if snap is not None:
        result.coverage, result.dht_prefix = snap.coverage(), snap.dht_prefix
    return result
