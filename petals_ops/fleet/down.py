"""``petals-ops down``: stop and remove the managed server containers; the cache volume and the identities
stay."""

from __future__ import annotations

from petals_ops.fleet import containers as C
from petals_ops.fleet.executor import Operation, Target, run_operation
from petals_ops.fleet.result import HostResult, ServerRow
from petals_ops.fleet.ssh import HostSession


class Down(Operation):
    """read: our containers (name, status); plan: remove them all; apply: stop (SIGINT) and remove."""

    def __init__(self, stop_timeout: int = 30):
        self.stop_timeout = stop_timeout

    def read(self, target: Target, session: HostSession) -> list[tuple[str, str]]:
        return [(c.name, c.status) for c in C.managed_containers(session.docker(), target.name)]

    def preview(self, target: Target, plan: list[tuple[str, str]],
                action: str = "would-remove") -> HostResult:
        rows = [ServerRow(name, action) for name, _ in plan]
        return HostResult(target.name, changed=[f"{name}: {action}" for name, _ in plan],
                          rows=rows or [ServerRow("", "nothing")])

    def apply(self, target: Target, session: HostSession, plan: list[tuple[str, str]]) -> HostResult:
        client = session.docker()
        for name, status in plan:
            c = client.containers.get(name)
            if status == "running":
                c.stop(timeout=self.stop_timeout)  # SIGINT first: the server announces itself OFFLINE
            c.remove(force=True)
        return self.preview(target, plan, action="removed")


def down(inventory, hosts=None, *, opts=None, dry_run: bool = False) -> list[HostResult]:
    """``down`` on ``hosts`` (default all): one result per host; rows: each container removed (or that
    would be), or one 'nothing' row."""
    return run_operation(Down(), inventory, hosts, opts=opts, dry_run=dry_run)
