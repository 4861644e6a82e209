"""The fleet: Petals servers in Docker on rented GPU hosts, over SSH (see docs/fleet.md).

Modules, one per concern: schema (the inventory's typed values), inventory (its YAML file), ssh (fabric,
host keys, quoting, Docker over SSH), hostcheck, provision, plan, containers, up (and restart), down,
status, logs, gpu (nvidia-smi health), peers (which swarm, multiaddrs), result (the one per-host result
shape every command reports through).
Nothing here imports fabric, docker or petals at module level.
"""

from petals_ops.fleet.inventory import load_inventory
from petals_ops.fleet.schema import Inventory
from petals_ops.fleet.status import ContainerStatus, FleetReading, read_fleet

__all__ = ["ContainerStatus", "FleetReading", "Inventory", "load_inventory", "read_fleet"]
