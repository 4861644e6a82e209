"""The swarm map's JSON: a pure function of the exporter's state, served at ``/map.json`` and drawn by ``/``.

The bulk (servers, per-block cells) changes only once per refresh, so :class:`MapBody` encodes it once per
state and every request adds only the server's clock (the page computes each snapshot's age from it).
Announced strings (``public_name``, ``version``...) are passed through as data; the page puts them in the
DOM as text, never as HTML.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from typing import Any

from petals_ops.monitoring.refresher import ExporterState
from petals_ops.swarm.health import SwarmSnapshot

# One character per block in a server's ``cells``: compact for 400 servers x 70 blocks, and readable.
CELL = {"ONLINE": "O", "JOINING": "J", "OFFLINE": "F"}
UNREACHABLE = "X"  # announced ONLINE, but did not answer the exporter's probe
ABSENT = "."
MAP_PATH = "/map.json"


def _finite(x: float | None) -> float | None:
    """A number JSON can carry: a server may announce NaN or inf, which strict JSON parsers reject."""
    return x if x is not None and math.isfinite(x) else None


def server_cells(snap: SwarmSnapshot) -> dict[str, list[str]]:
    """peer id -> one state character per block, from the blocks' own view (a record may lag a block's)."""
    cells = {s.peer_id: [ABSENT] * snap.num_blocks for s in snap.servers}
    for block in snap.blocks:
        for peer_id, state in block.servers.items():
            row = cells.setdefault(peer_id, [ABSENT] * snap.num_blocks)
            row[block.index] = UNREACHABLE if peer_id in block.unreachable else CELL.get(state, "?")
    return cells


def model_map(snap: SwarmSnapshot, own_hosts: dict[str, str]) -> dict[str, Any]:
    """One model's grid: its servers (in start-block order) with their cells, coverage and announced facts."""
    cells = server_cells(snap)
    servers = [
        {
            "peer_id": s.peer_id,
            "public_name": s.public_name,
            "state": s.state,
            "start_block": s.start_block,
            "end_block": s.end_block,
            "throughput": _finite(s.throughput),
            "cache_tokens_left": s.cache_tokens_left,
            "version": s.version,
            "torch_dtype": s.torch_dtype,
            "quant_type": s.quant_type,
            "using_relay": s.using_relay,
            "ours": own_hosts.get(s.peer_id),
            "cells": "".join(cells[s.peer_id]),
            "reachable": s.reachable,
            "probe_ms": None if s.reachability is None or s.reachability.latency is None
            else round(s.reachability.latency * 1000, 1),
            "probe_error": s.reachability.error if s.reachability is not None else None,
            "next_pings": [[peer, None if rtt is None else round(rtt * 1000, 1)]
                           for peer, rtt in (s.next_pings or {}).items()],
        }
        for s in sorted(snap.servers, key=lambda s: (s.start_block, s.end_block, s.peer_id))  # a staircase
    ]
    return {
        "model": snap.model,
        "dht_prefix": snap.dht_prefix,
        "num_blocks": snap.num_blocks,
        "taken_at": snap.taken_at,
        "walk_seconds": snap.walk_seconds,
        "online_per_block": snap.online_per_block,
        "uncovered_blocks": snap.uncovered_blocks,
        "fully_served": snap.fully_served,
        "servers_by_state": snap.servers_by_state(),
        "probed": snap.probed,
        "unreachable_servers": len(snap.unreachable_servers),
        "servers": servers,
    }


def map_state(state: ExporterState) -> dict[str, Any]:
    """Everything the page draws, except the clock (pure: the same state gives the same dict)."""
    return {
        "exporter": {
            "up": state.up,
            "refresh_interval": state.refresh_interval,
            "refreshes": state.refreshes,
            "last_success": state.last_success,
            "last_error": state.last_error,
            "inventory": state.containers is not None,
            "probe_timeout": state.probe_timeout,
            "bootstrap": [{"address": p.address, "peer_id": p.peer_id, "alive": p.alive,
                           "error": p.reachability.error} for p in state.bootstrap],
        },
        "models": [model_map(snap, state.own_hosts) for snap in state.snapshots],
    }


def clock(state: ExporterState, now: float) -> dict[str, Any]:
    """The per-request members: the server's clock and the oldest snapshot's age (None before the first
    walk)."""
    taken = [s.taken_at for s in state.snapshots]
    return {"now": now, "snapshot_age_seconds": max(0.0, now - min(taken)) if taken else None}


def map_json(state: ExporterState, now: float) -> dict[str, Any]:
    """What ``/map.json`` returns for ``state`` at ``now`` (pure)."""
    return {**clock(state, now), **map_state(state)}


class MapBody:
    """The ``/map.json`` bytes: the state's part encoded once per refresh, the clock added per request."""

    def __init__(self, get_state: Callable[[], ExporterState]):
        self.get_state = get_state
        self._cached: tuple[ExporterState, bytes] | None = None

    @staticmethod
    def encode(state: ExporterState) -> bytes:
        return json.dumps(map_state(state), separators=(",", ":"), allow_nan=False, default=str).encode()

    def prepare(self, state: ExporterState) -> None:
        """Encode ``state`` now (the refresher calls this before publishing it, so no request waits on it)."""
        self._cached = (state, self.encode(state))

    def __call__(self, now: float | None = None) -> bytes:
        state = self.get_state()
        cached = self._cached
        if cached is None or cached[0] is not state:
            cached = self._cached = (state, self.encode(state))
        now = time.time() if now is None else now
        # The clock's members + the cached object's members: map_json's object without re-encoding the bulk.
        head = json.dumps(clock(state, now), separators=(",", ":")).encode()[:-1]
        return head + b"," + cached[1][1:]
