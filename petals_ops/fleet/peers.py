"""Which swarm the fleet joins, and multiaddrs of our servers (IPv4, IPv6 or a DNS name).

Without ``initial_peers`` or ``new_swarm`` a Petals server joins the public swarm through the initial peers
petals publishes (``petals.constants.PUBLIC_INITIAL_PEERS``, run_server's default); ``up`` and ``status``
then check the swarm through the same peers, and ``plan`` says so. petals is imported only when needed.
"""

from __future__ import annotations

import ipaddress
from typing import Sequence

from petals_ops.fleet.schema import Inventory

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


def joins_public_swarm(inventory: Inventory, hosts: Sequence[str]) -> list[str]:
    """The hosts whose servers join the public swarm (no initial_peers, no new_swarm)."""
    specs = {h: inventory.server_for(h) for h in hosts}
    return [h for h, spec in specs.items() if not spec.initial_peers and not spec.new_swarm]


def inventory_peers(inventory: Inventory, hosts: Sequence[str]) -> list[str]:
    """The initial peers to check ``hosts``' swarm with: the inventory's, else petals' public ones."""
    peers = list(dict.fromkeys(p for h in hosts for p in inventory.server_for(h).initial_peers))
    if not peers and joins_public_swarm(inventory, hosts):
        peers = public_initial_peers()
    return peers


def swarm_note(inventory: Inventory, hosts: Sequence[str]) -> str:
    """One line for ``plan``: which swarm the servers of ``hosts`` join, and through which peers."""
    public = joins_public_swarm(inventory, hosts)
    new = [h for h in hosts if inventory.server_for(h).new_swarm]
    parts = []
    if public:
        peers = ", ".join(public_initial_peers()[:2])
        parts.append(f"{', '.join(public)} {PUBLIC_SWARM_NOTE}: {peers}, ...")
    if new:
        parts.append(f"{', '.join(new)} start a new private swarm (new_swarm)")
    private = [h for h in hosts if h not in public and h not in new]
    if private:
        parts.append(f"{', '.join(private)} join the swarm of the inventory's initial_peers")
    return "; ".join(parts)
