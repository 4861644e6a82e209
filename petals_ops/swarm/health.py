"""Swarm health: one DHT walk turned into a :class:`SwarmSnapshot` of plain dataclasses.

This is the only place that reads server records from the DHT. ``swarm status`` prints a snapshot,
``up`` waits on one, the exporter serves the latest one and the bench records which servers served.
The dataclasses import nothing heavy; :class:`SwarmProbe` imports petals (through the door) when used.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Sequence

from petals_ops.util.errors import InputError, OpsError, one_line
from petals_ops.client.models import ModelRef, check_num_blocks

# Announced strings (public_name, version, dtype...) are kept to this many characters: a peer chooses them.
MAX_ANNOUNCED_CHARS = 200


class BadRecordError(OpsError):
    """The swarm announces something about a model that petals-ops refuses to use (a bad block count)."""

STATES = ("OFFLINE", "JOINING", "ONLINE")

# A server announces the round trips it measured to the servers of its next blocks (petals' next_pings,
# seconds): at most this many entries are kept per server, peer ids of plausible shape only.
MAX_NEXT_PINGS = 16
MAX_PING_SECONDS = 3600.0
_BASE58 = frozenset("123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz")


@dataclass(frozen=True)
class Reachability:
    """One probe of one peer from here (:mod:`petals_ops.swarm.reachability`): did it answer?

    A server is probed with petals' ``rpc_info`` (what a client calls first), a bootstrap peer with a DHT
    ping. ``reachable is False`` means it did not answer within the probe's timeout (or refused): the
    server may still announce itself ONLINE in the DHT, but no client gets through to it.
    """

    reachable: bool
    latency: float | None  # seconds from the call to the answer; None without an answer
    error: str | None  # one sanitized line when not reachable, else None
    probed_at: float  # Unix time of the probe


@dataclass(frozen=True)
class BootstrapPeer:
    """An initial peer of the swarm (a DHT bootstrap node) and whether it answered a DHT ping."""

    address: str  # the multiaddr as given (--initial-peers, the local swarm, the inventory)
    peer_id: str
    reachability: Reachability

    @property
    def alive(self) -> bool:
        return self.reachability.reachable


@dataclass(frozen=True)
class ServerRecord:
    """What one server announces about itself (the same record for each block it holds)."""

    peer_id: str
    state: str
    start_block: int
    end_block: int
    throughput: float
    cache_tokens_left: int | None = None
    version: str | None = None
    torch_dtype: str | None = None
    quant_type: str | None = None
    public_name: str | None = None
    using_relay: bool | None = None
    inference_rps: float | None = None
    forward_rps: float | None = None
    network_rps: float | None = None
    # The round trips (s) the server measured to servers of its next blocks, by peer id (None: its ping
    # failed); sanitized by next_pings_of(). None when it announces none.
    next_pings: dict[str, float | None] | None = None
    # Our probe of it (ONLINE servers only, when the snapshot was probed); None when not probed.
    reachability: Reachability | None = None

    @property
    def num_blocks(self) -> int:
        return self.end_block - self.start_block

    @property
    def reachable(self) -> bool | None:
        """True/False: it answered our probe or not; None: not probed (not ONLINE, or no probe ran)."""
        return None if self.reachability is None else self.reachability.reachable


@dataclass(frozen=True)
class BlockHealth:
    index: int
    uid: str
    servers: dict[str, str]  # peer id -> state
    unreachable: tuple[str, ...] = ()  # peers announcing ONLINE here that did not answer our probe

    @property
    def online(self) -> int:
        """ONLINE servers that can serve the block: announced ONLINE and not found unreachable."""
        return sum(state == "ONLINE" and peer not in self.unreachable for peer, state in self.servers.items())

    @property
    def announced_online(self) -> int:
        """Servers announcing ONLINE for the block (what the DHT says, reachable or not)."""
        return sum(state == "ONLINE" for state in self.servers.values())


@dataclass(frozen=True)
class SwarmSnapshot:
    model: str
    dht_prefix: str
    num_blocks: int
    taken_at: float
    walk_seconds: float
    blocks: list[BlockHealth]
    servers: list[ServerRecord] = field(default_factory=list)
    # Set when the ONLINE servers were probed (swarm/reachability.py): the probe's timeout in seconds.
    probe_timeout: float | None = None
    bootstrap: list[BootstrapPeer] = field(default_factory=list)  # the initial peers' liveness, if probed

    @property
    def probed(self) -> bool:
        return self.probe_timeout is not None

    @property
    def unreachable_servers(self) -> list[ServerRecord]:
        """Servers announcing ONLINE that did not answer our probe (they count for no block)."""
        return [s for s in self.servers if s.reachable is False]

    @property
    def blocks_only_on_unreachable(self) -> list[int]:
        """Uncovered blocks that some server announces ONLINE: only unreachable servers hold them."""
        return [b.index for b in self.blocks if b.online == 0 and b.announced_online > 0]

    @property
    def online_per_block(self) -> list[int]:
        return [b.online for b in self.blocks]

    @property
    def uncovered_blocks(self) -> list[int]:
        """Blocks with no ONLINE server (a probed unreachable one does not count): any one of them breaks
        every forward pass."""
        return [b.index for b in self.blocks if b.online == 0]

    @property
    def min_online(self) -> int:
        return min(self.online_per_block, default=0)

    @property
    def mean_online(self) -> float:
        return statistics.fmean(self.online_per_block) if self.blocks else 0.0

    @property
    def fully_served(self) -> bool:
        return bool(self.blocks) and not self.uncovered_blocks

    def servers_by_state(self) -> dict[str, int]:
        counts = {state: 0 for state in STATES}
        for server in self.servers:
            counts[server.state] = counts.get(server.state, 0) + 1
        return counts

    def server(self, peer_id: str) -> ServerRecord | None:
        return next((s for s in self.servers if s.peer_id == peer_id), None)

    def require_full_coverage(self) -> None:
        """Raise the one-line error every client command gives when some block has no ONLINE server (or
        when there is no block at all: nothing can be served)."""
        if not self.blocks:
            raise OpsError(f"the swarm knows no blocks of {self.dht_prefix} "
                           "(its block count is 0 or unknown)",
                           fix="check --model/--dht-prefix and 'petals-ops swarm status'")
        if self.uncovered_blocks:
            raise OpsError(
                f"blocks {format_block_ranges(self.uncovered_blocks)} of {self.dht_prefix} "
                "have no ONLINE server",
                fix="start servers for them ('petals-ops swarm status' shows coverage)",
            )

    def coverage(self) -> dict[str, Any]:
        return {
            "blocks_total": self.num_blocks,
            "uncovered_blocks": self.uncovered_blocks,
            "min_online_servers_per_block": self.min_online,
            "mean_online_servers_per_block": round(self.mean_online, 3),
            "fully_served": self.fully_served,
            "servers_by_state": self.servers_by_state(),
            "probed": self.probed,
            "unreachable_servers": [s.peer_id for s in self.unreachable_servers],
            "blocks_only_on_unreachable": self.blocks_only_on_unreachable,
            "bootstrap_alive": sum(p.alive for p in self.bootstrap),
            "bootstrap_total": len(self.bootstrap),
        }

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for server, record in zip(data["servers"], self.servers):
            server["reachable"] = record.reachable
        for peer, record in zip(data["bootstrap"], self.bootstrap):
            peer["alive"] = record.alive
        data["coverage"] = self.coverage()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SwarmSnapshot":
        return cls(
            model=data["model"],
            dht_prefix=data["dht_prefix"],
            num_blocks=data["num_blocks"],
            taken_at=data["taken_at"],
            walk_seconds=data["walk_seconds"],
            blocks=[BlockHealth(**{**b, "unreachable": tuple(b.get("unreachable", ()))})
                    for b in data["blocks"]],
            servers=[_server_from_dict(s) for s in data["servers"]],
            probe_timeout=data.get("probe_timeout"),
            bootstrap=[BootstrapPeer(address=p["address"], peer_id=p["peer_id"],
                                     reachability=Reachability(**p["reachability"]))
                       for p in data.get("bootstrap") or ()],
        )


def _server_from_dict(data: dict[str, Any]) -> ServerRecord:
    fields = {k: v for k, v in data.items() if k != "reachable"}  # a derived member of to_dict()
    if fields.get("reachability") is not None:
        fields["reachability"] = Reachability(**fields["reachability"])
    return ServerRecord(**fields)


def format_block_ranges(blocks: Sequence[int]) -> str:
    """[0, 1, 2, 5] -> '0:3, 5:6' (Petals' half-open block ranges)."""
    ranges, start, prev = [], None, None
    for b in sorted(blocks):
        if start is None:
            start = prev = b
        elif b == prev + 1:
            prev = b
        else:
            ranges.append(f"{start}:{prev + 1}")
            start = prev = b
    if start is not None:
        ranges.append(f"{start}:{prev + 1}")
    return ", ".join(ranges)


def _announced(value: Any) -> str | None:
    """An announced string, bounded; anything else (petals validates types, a future one may not) None."""
    if not isinstance(value, str):
        return None
    return value if len(value) <= MAX_ANNOUNCED_CHARS else value[:MAX_ANNOUNCED_CHARS - 1] + "…"


def _number(value: Any, kind: type) -> Any:
    """A finite, non-negative number of ``kind`` as announced, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if not 0 <= value < float("inf"):  # NaN fails too
        return None
    return kind(value)


def next_pings_of(value: Any) -> dict[str, float | None] | None:
    """A server's announced ``next_pings`` made safe: peer ids of base58 shape (at most 64 characters),
    round trips finite in 0..:data:`MAX_PING_SECONDS` s (an infinite one, petals' mark of a failed ping,
    becomes None), at most :data:`MAX_NEXT_PINGS` entries (the smallest peer ids); None if not a mapping."""
    if not isinstance(value, dict):
        return None
    out: dict[str, float | None] = {}
    for peer in sorted(k for k in value if isinstance(k, str) and 0 < len(k) <= 64 and set(k) <= _BASE58):
        rtt = value[peer]
        if isinstance(rtt, bool) or not isinstance(rtt, (int, float)) or rtt != rtt or rtt < 0:
            continue
        out[peer] = float(rtt) if rtt <= MAX_PING_SECONDS else None
        if len(out) >= MAX_NEXT_PINGS:
            break
    return out


def build_snapshot(model: ModelRef, infos: Sequence[Any], *, taken_at: float,
                   walk_seconds: float) -> SwarmSnapshot:
    """Turn petals' ``RemoteModuleInfo`` list (one per block) into a snapshot. Pure: no DHT access.

    What a server announces is untrusted: strings are bounded (:data:`MAX_ANNOUNCED_CHARS`), and a block
    range that does not fit the model (or the blocks the server was found under) is replaced by the
    blocks it was found under."""
    blocks, servers, seen = [], {}, {}
    for index, info in enumerate(infos):
        states = {}
        for peer, server_info in info.servers.items():
            peer_id = str(peer.to_base58() if hasattr(peer, "to_base58") else peer)
            state = getattr(server_info.state, "name", None)
            state = state if state in STATES else "OFFLINE"
            states[peer_id] = state
            seen.setdefault(peer_id, []).append(index)
            if peer_id not in servers:
                servers[peer_id] = ServerRecord(
                    peer_id=peer_id,
                    state=state,
                    start_block=_number(server_info.start_block, int),
                    end_block=_number(server_info.end_block, int),
                    throughput=_number(server_info.throughput, float) or 0.0,
                    cache_tokens_left=_number(server_info.cache_tokens_left, int),
                    version=_announced(server_info.version),
                    torch_dtype=_announced(server_info.torch_dtype),
                    quant_type=_announced(server_info.quant_type),
                    public_name=_announced(server_info.public_name),
                    using_relay=(server_info.using_relay if isinstance(server_info.using_relay, bool)
                                 else None),
                    inference_rps=_number(server_info.inference_rps, float),
                    forward_rps=_number(server_info.forward_rps, float),
                    network_rps=_number(server_info.network_rps, float),
                    next_pings=next_pings_of(getattr(server_info, "next_pings", None)),
                )
        blocks.append(BlockHealth(index=index, uid=info.uid, servers=states))
    for peer_id, record in servers.items():
        first, last = min(seen[peer_id]), max(seen[peer_id]) + 1
        start, end = record.start_block, record.end_block
        if start is None or end is None or not (0 <= start <= first and last <= end <= len(blocks)):
            servers[peer_id] = replace(record, start_block=first, end_block=last)
    return SwarmSnapshot(
        model=model.name,
        dht_prefix=model.dht_prefix,
        num_blocks=len(blocks),
        taken_at=taken_at,
        walk_seconds=walk_seconds,
        blocks=blocks,
        servers=sorted(servers.values(), key=lambda s: (s.start_block, s.peer_id)),
    )


async def _count_connected_peers(dht, node) -> int:
    """Runs inside the DHT process (module-level so hivemind can pickle it): peers p2pd is connected to."""
    return len(await node.p2p.list_peers())


class SwarmProbe:
    """A client-mode DHT node that takes snapshots of one model; reuse it (starting one costs ~1 s).

    A walk through a DHT node that lost every peer returns no records rather than an error, so it reads
    as "no servers". Long-running callers (the exporter) pass ``require_peers=True`` to
    :meth:`snapshot` to get an :class:`OpsError` instead.
    """

    def __init__(self, initial_peers: Sequence[str], model: ModelRef, *, startup_timeout: float = 30.0):
        if not initial_peers:
            raise OpsError("no initial peers given",
                           fix="pass --initial-peers /ip4/.../p2p/... or start the local swarm")
        self.initial_peers = list(initial_peers)
        self.model = model
        self.startup_timeout = startup_timeout
        self._dht = None

    def start(self) -> "SwarmProbe":
        from petals_ops.client import door

        try:
            self._dht = door.DHT(
                initial_peers=self.initial_peers, client_mode=True, start=True,
                startup_timeout=self.startup_timeout,
            )
        except Exception as e:  # hivemind raises P2PDaemonError and friends; the cause is the user's address
            reason = one_line(e, 200, tail=True)
            raise OpsError(
                f"cannot reach the swarm at initial peers {' '.join(self.initial_peers)} ({reason})",
                fix="check the multiaddrs (/ip4/HOST/tcp/PORT/p2p/PEER_ID) and that the DHT is up",
            ) from e
        return self

    def __enter__(self) -> "SwarmProbe":
        return self.start() if self._dht is None else self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._dht is not None:
            self._dht.shutdown()
            self._dht = None

    def _num_blocks_from_dht(self, dht_prefix: str | None = None) -> int | None:
        """The model's block count from its ``_petals.models`` record (any peer can write one): None when
        there is none, :class:`BadRecordError` when it is not a sane count."""
        prefix = dht_prefix or self.model.dht_prefix
        entry = self._dht.get("_petals.models", latest=True)
        if entry is None or not isinstance(entry.value, dict):
            return None
        record = entry.value.get(prefix)
        value = getattr(record, "value", None)
        if not isinstance(value, dict) or "num_blocks" not in value:
            return None
        try:
            return check_num_blocks(value["num_blocks"], f"the swarm's _petals.models record of {prefix}",
                                    fix="pass --num-blocks N (the model's real block count)")
        except InputError as e:
            raise BadRecordError(e.message, fix=e.fix) from None

    @property
    def dht(self):
        """This probe's DHT node (started if needed), for other calls through the door (reachability)."""
        if self._dht is None:
            self.start()
        return self._dht

    def connected_peers(self) -> int:
        """How many peers this probe's DHT node is connected to right now (0: the swarm is unreachable)."""
        if self._dht is None:
            self.start()
        return self._dht.run_coroutine(_count_connected_peers)

    def snapshot(self, model: ModelRef | None = None, *, require_peers: bool = False) -> SwarmSnapshot:
        """Walk the DHT for ``model`` (default: the probe's own) through this probe's DHT node.

        ``require_peers``: raise :class:`OpsError` when the node has no peer left (instead of an empty walk).
        """
        from petals_ops.client import door

        if self._dht is None:
            self.start()
        own = model is None
        model = self.model if own else model
        if require_peers and self.connected_peers() == 0:
            raise OpsError(
                f"lost the swarm: no DHT peer reachable (initial peers {' '.join(self.initial_peers)})",
                fix="check that the swarm's DHT is up and reachable from here",
            )
        if model.num_blocks is None:
            num_blocks = self._num_blocks_from_dht(model.dht_prefix)
            if num_blocks is None:
                raise OpsError(
                    f"the swarm announces no model with DHT prefix {model.dht_prefix}",
                    fix="check --model (or --dht-prefix), or pass --num-blocks",
                )
            model = ModelRef(**{**asdict(model), "num_blocks": num_blocks})
            if own:
                self.model = model
        started = time.monotonic()
        infos = door.get_remote_module_infos(self._dht, model.block_uids(), latest=True)
        return build_snapshot(model, infos, taken_at=time.time(), walk_seconds=time.monotonic() - started)


def take_snapshot(initial_peers: Sequence[str], model: ModelRef) -> SwarmSnapshot:
    """One snapshot with a short-lived DHT node (for commands; long-running code keeps a SwarmProbe)."""
    with SwarmProbe(initial_peers, model) as probe:
        return probe.snapshot()
