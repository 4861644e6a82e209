"""``petals-ops down``: stop and remove the managed server containers; the cache volume and identities stay."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from petals_ops.fleet import containers as C
from petals_ops.fleet.inventory import Inventory
from petals_ops.fleet.parallel import exit_code, per_host
from petals_ops.fleet.ssh import HostSession, SSHOptions, select_hosts


@dataclass
class DownRow:
    host: str
    container: str
    action: str  # removed | would-remove | failed | nothing
    error: str | None = None


def down(inventory: Inventory, hosts: Sequence[str] | None = None, *, opts: SSHOptions | None = None,
         dry_run: bool = False, stop_timeout: int = 30) -> tuple[list[DownRow], int]:
    opts = opts or SSHOptions.from_inventory(inventory)
    names = select_hosts(inventory, hosts, opts)

    def one(h: str) -> list[DownRow]:
        with HostSession(h, inventory.host(h), opts) as session:
            rows = []
            for c in C.managed_containers(session.docker()):
                if not dry_run:
                    if c.status == "running":
                        c.stop(timeout=stop_timeout)  # SIGINT first: the server announces itself OFFLINE
                    c.remove(force=True)
                rows.append(DownRow(h, c.name, "would-remove" if dry_run else "removed"))
            return rows or [DownRow(h, "", "nothing")]

    outcomes = per_host(names, one)
    rows = [r for o in outcomes for r in (o.value if o.ok else [DownRow(o.host, "", "failed", o.error)])]
    return rows, exit_code([o.ok for o in outcomes])
