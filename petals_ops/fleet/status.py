"""Container status per host (for ``petals-ops status`` and the exporter), matched to the DHT by peer id.

Public interface (the exporter codes against it): :func:`container_statuses`, :class:`ContainerStatus`
and :func:`load_inventory`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from petals_ops.fleet import containers as C
from petals_ops.fleet.inventory import Inventory, load_inventory
from petals_ops.fleet.parallel import per_host
from petals_ops.fleet.ssh import HostSession, SSHOptions, select_hosts

__all__ = ["ContainerStatus", "container_statuses", "load_inventory"]


@dataclass
class ContainerStatus:
    host: str
    container: str
    running: bool
    restart_count: int
    exit_code: int | None
    peer_id: str | None
    error: str | None  # set (and the rest defaulted) when the host is unreachable


def _host_statuses(host: str, inventory: Inventory, opts: SSHOptions) -> list[ContainerStatus]:
    with HostSession(host, inventory.host(host), opts) as session:
        out = []
        for c in C.managed_containers(session.docker()):
            state = c.attrs.get("State", {})
            running = state.get("Status") == "running"
            out.append(ContainerStatus(
                host=host, container=c.name, running=running, restart_count=int(c.attrs.get("RestartCount", 0)),
                exit_code=None if running else state.get("ExitCode"), peer_id=c.labels.get(C.LABEL_PEER), error=None,
            ))
        return out


def container_statuses(inventory: Inventory, hosts: Sequence[str] | None = None, *,
                       opts: SSHOptions | None = None) -> list[ContainerStatus]:
    """The managed server containers of ``hosts`` (default: all inventory hosts), queried in parallel.

    An unreachable host gives one entry with ``container=""`` and ``error`` set; it never hides the others.
    """
    opts = opts or SSHOptions.from_inventory(inventory)
    names = select_hosts(inventory, hosts, opts)
    outcomes = per_host(names, lambda h: _host_statuses(h, inventory, opts))
    out: list[ContainerStatus] = []
    for o in outcomes:
        if o.ok:
            out += o.value
        else:
            out.append(ContainerStatus(host=o.host, container="", running=False, restart_count=0, exit_code=None,
                                       peer_id=None, error=o.error))
    return out
