"""Which swarm the fleet joins, and multiaddrs of our servers (IPv4, IPv6 or a DNS name).

Without ``initial_peers`` or ``new_swarm`` a Petals server joins the public swarm through the initial peers
petals publishes (``petals.constants.PUBLIC_INITIAL_PEERS``, run_server's default); ``up`` and ``status``
then check the swarm through the same peers, and ``plan`` says so. petals is imported only when needed.
The functions take resolved fleet targets (:class:`petals_ops.fleet.executor.Target`).
"""

from __future__ import annotations

import ipaddress
from typing import Sequence

from petals_ops.util.errors import InputError

PUBLIC_SWARM_NOTE = ("joins the PUBLIC swarm through petals' published initial peers "
                     "(set server.initial_peers, or new_swarm: true, for a private swarm)")


def multiaddr(address: str, port: int, peer_id: str | None = None, proto: str = "tcp") -> str:
    """``/ip4/..``, ``/ip6/..`` (brackets dropped) or ``/dns/NAME/..`` for a host name."""
    bare = address.strip("[]")
    try:
        family = "ip6" if ipaddress.ip_address(bare).version == 6 else "ip4"
    except ValueError:
        family = "dns"
    return f"/{family}/{bare}/{proto}/{port}" + (f"/p2p/{peer_id}" if peer_id else "")


def public_initial_peers() -> list[str]:
    """petals' published bootstrap peers of the public swarm (imports petals, through the door)."""
    import importlib

    from petals_ops.client import door as petals_door  # noqa: F401  (first: hivemind's names back before petals loads)

    return list(importlib.import_module("petals.constants").PUBLIC_INITIAL_PEERS)


def joins_public_swarm(targets: Sequence) -> list[str]:
    """The hosts (of resolved fleet targets) whose servers join the public swarm (no initial_peers, no
    new_swarm)."""
    return [t.name for t in targets if not t.server.initial_peers and not t.server.new_swarm]


def inventory_peers(targets: Sequence) -> list[str]:
    """The initial peers to check the targets' swarm with: the inventory's, else petals' public ones."""
    peers = list(dict.fromkeys(p for t in targets for p in t.server.initial_peers))
    if not peers and joins_public_swarm(targets):
        peers = public_initial_peers()
    return peers


def swarm_model(targets: Sequence):
    """The one model (and DHT prefix) the targets serve, which ``up``, ``restart`` and ``status`` check in
    the DHT; an InputError when they serve several."""
    from petals_ops.client.models import resolve_model

    specs = {(t.server.model, t.server.dht_prefix) for t in targets}
    if len(specs) != 1:
        raise InputError("the selected hosts serve different models or DHT prefixes; petals-ops waits on one",
                         fix="run it once per model with --hosts")
    model, prefix = specs.pop()
    return resolve_model(model, dht_prefix=prefix)


def swarm_note(targets: Sequence) -> str:
    """One line for ``plan``: which swarm the targets' servers join, and through which peers."""
    public = joins_public_swarm(targets)
    new = [t.name for t in targets if t.server.new_swarm]
    parts = []
    if public:
        peers = ", ".join(public_initial_peers()[:2])
        parts.append(f"{', '.join(public)} {PUBLIC_SWARM_NOTE}: {peers}, ...")
    if new:
        parts.append(f"{', '.join(new)} start a new private swarm (new_swarm)")
    private = [t.name for t in targets if t.name not in public and t.name not in new]
    if private:
        parts.append(f"{', '.join(private)} join the swarm of the inventory's initial_peers")
    return "; ".join(parts)
