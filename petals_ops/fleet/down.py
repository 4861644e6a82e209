"""``petals-ops down``: stop and remove the managed server containers; the cache volume and the identities
stay."""

from __future__ import annotations

from typing import Sequence

from petals_ops.fleet import containers as C
from petals_ops.fleet.schema import Inventory
from petals_ops.fleet.parallel import per_host
from petals_ops.fleet.result import HostResult
from petals_ops.fleet.ssh import HostSession, SSHOptions, select_hosts


def down(inventory: Inventory, hosts: Sequence[str] | None = None, *, opts: SSHOptions | None = None,
         dry_run: bool = False, stop_timeout: int = 30) -> list[HostResult]:
    """One result per host; rows: each container removed (or that would be), or one 'nothing' row."""
    opts = opts or SSHOptions.from_inventory(inventory)
    names = select_hosts(inventory, hosts, opts)

    def one(h: str) -> HostResult:
        with HostSession(h, inventory.host(h), opts) as session:
            found = C.managed_containers(session.docker(), h)
            for c in [] if dry_run else found:
                if c.status == "running":
                    c.stop(timeout=stop_timeout)  # SIGINT first: the server announces itself OFFLINE
                c.remove(force=True)
            action = "would-remove" if dry_run else "removed"
            rows = [{"container": c.name, "action": action} for c in found]
            return HostResult(h, changed=[f"{c.name}: {action}" for c in found],
                              rows=rows or [{"container": "", "action": "nothing"}])

    return [o.value if o.ok else HostResult.failed(o.host, o.error) for o in per_host(names, one)]
