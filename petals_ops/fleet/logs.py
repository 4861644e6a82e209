"""``petals-ops logs HOST [--follow]``: a server container's log, over SSH and the Docker API."""

from __future__ import annotations

from typing import Callable

from petals_ops.fleet import containers as C
from petals_ops.fleet.executor import Fleet, resolve_targets
from petals_ops.fleet.schema import Inventory
from petals_ops.fleet.ssh import SSHOptions
from petals_ops.util.errors import InputError


def stream_logs(inventory: Inventory, host: str, write: Callable[[str], None], *,
                container: str | None = None,
                tail: int | None = 100, follow: bool = False, opts: SSHOptions | None = None) -> None:
    if "," in host or not host.strip():
        raise InputError(f"logs takes exactly one host, got {host!r}",
                         fix="pass one name, e.g. petals-ops logs a10-1")
    [target] = resolve_targets(inventory, [host], opts=opts, given_as="host")
    host = target.name
    with Fleet([target]) as fleet:
        session = fleet.session(target)
        # A follow stream may stay quiet for long: its client has no read timeout (docker-py #931).
        client = session.docker(timeout=None if follow else 120)
        found = C.managed_containers(client, host)
        if container:
            found = [c for c in found if c.name == container]
        if not found:
            named = f" named {container}" if container else ""
            raise InputError(f"{host} has no petals-ops server container{named}",
                             fix="check 'petals-ops status', or run 'petals-ops up'")
        if len(found) > 1 and follow:
            raise InputError(f"{host} runs {len(found)} servers; --follow needs one",
                             fix=f"pass --container (one of {', '.join(c.name for c in found)})")
        for c in found:
            if len(found) > 1:
                write(f"==> {host}/{c.name} <==\n")
            if follow:
                pending = b""
                for chunk in c.logs(stream=True, follow=True, tail=tail if tail is not None else "all"):
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        write(line.decode("utf-8", errors="replace") + "\n")
            else:
                write(c.logs(tail=tail if tail is not None else "all").decode("utf-8", errors="replace"))
