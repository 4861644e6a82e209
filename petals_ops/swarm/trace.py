"""Where a step's time goes: a canary generation pinned through one route of servers at a time.

A route is a chain of ONLINE servers that covers the model's blocks (each server runs from the block the
previous one stopped at to the end of its own span). :func:`trace_routes` loads one client (petals'
server-to-server pushes off, so each hop's time is its own), and for each route pins the client to that
route's servers (petals' ``allowed_servers``) and runs :func:`petals_ops.client.canary.run_canary`.

Per hop it reports, for the decoding steps (the prompt's prefill left out):
- ``seconds`` (measured): the median client-side time of that server's part of a step, from sending its
  inputs to holding its outputs;
- ``network_seconds`` (measured): the fastest of a few ``rpc_info`` round trips to that server, a unary
  call its connection handler answers without the compute queue: the network round trip plus the
  handler's turnaround;
- ``server_seconds`` (inferred): ``seconds - network_seconds``, the server's queue and compute plus
  (de)serialization on both sides; petals reports no server-side timing, so it cannot be split further.
The route's ``client_seconds`` (inferred) is the median over steps of the step minus the sum of its hops:
the client's own embeddings, LM head and bookkeeping. The slowest hop is the one with the most seconds
per step; its evidence says how much of the route's network time (the sum of its hops'
``network_seconds``) it carries, and what the other hops take: a delayed server carries most of the
network, an overloaded one shows its time in ``server_seconds``.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Sequence

from petals_ops.client.models import ModelRef
from petals_ops.swarm.health import SwarmSnapshot
from petals_ops.util.errors import InputError, OpsError, one_line

MAX_ROUTES = 16  # never trace more routes than this in one call
MAX_STEPS = 64
MIN_PEER_TEXT = 4  # characters of a peer id given to --route/--server (a prefix or a suffix)


# ---- routes (pure) ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Hop:
    """One server of a route and the blocks start:end it runs in that route."""

    peer_id: str
    start: int
    end: int


def enumerate_routes(snapshot: SwarmSnapshot, *, max_routes: int = 4,
                     through: Sequence[str] = ()) -> list[list[Hop]]:
    """Distinct chains of ONLINE servers (not found unreachable by a probe) covering blocks 0..num_blocks,
    at most ``max_routes``, the ones with fewer hops first; ``through``: only chains that use every one of
    these peers. A server is entered at the block the previous one stopped at and run to its own end (as
    petals routes), and it must not also hold the block the previous hop started at: petals, pinned to
    those servers, would skip the previous hop (a chain through exactly its servers is then the route
    petals takes)."""
    servers = sorted((s for s in snapshot.servers if s.state == "ONLINE" and s.reachable is not False),
                     key=lambda s: (-s.end_block, s.start_block, s.peer_id))
    wanted = set(through)
    found: list[list[Hop]] = []
    budget = [10_000]  # chains explored: a swarm of many replicas has exponentially many

    def walk(block: int, chain: list[Hop]) -> None:
        if budget[0] <= 0:
            return
        budget[0] -= 1
        if block >= snapshot.num_blocks:
            if wanted <= {h.peer_id for h in chain}:
                found.append(list(chain))
            return
        for s in servers:
            if (s.start_block <= block < s.end_block and all(h.peer_id != s.peer_id for h in chain)
                    and (not chain or s.start_block > chain[-1].start)):
                walk(s.end_block, chain + [Hop(s.peer_id, block, s.end_block)])

    if snapshot.num_blocks > 0:
        walk(0, [])
    found.sort(key=len)  # stable: the longest spans first within a length
    return found[:max_routes]


def resolve_peer(text: str, snapshot: SwarmSnapshot) -> str:
    """The ONLINE server whose peer id starts or ends with ``text`` (at least 4 characters); one-line
    errors when none or several match."""
    text = str(text).strip()
    online = [s.peer_id for s in snapshot.servers if s.state == "ONLINE"]
    if len(text) < MIN_PEER_TEXT:
        raise InputError(f"server {text!r} is too short to name a peer",
                         fix=f"give at least {MIN_PEER_TEXT} characters of its peer id "
                             "(see 'petals-ops swarm status')")
    matches = [p for p in online if p == text or p.startswith(text) or p.endswith(text)]
    if len(matches) != 1:
        what = "no ONLINE server" if not matches else f"{len(matches)} ONLINE servers"
        raise InputError(f"{what} of {snapshot.dht_prefix} match {text!r}",
                         fix="give more of its peer id (see 'petals-ops swarm status')")
    return matches[0]


def route_from_peers(peers: Sequence[str], snapshot: SwarmSnapshot) -> list[Hop]:
    """The chain through exactly these servers (any order), or a one-line error when they do not cover
    the model end to end."""
    routes = [r for r in enumerate_routes(snapshot, max_routes=MAX_ROUTES, through=peers)
              if {h.peer_id for h in r} == set(peers)]
    if not routes:
        raise InputError(f"servers {', '.join(p[-8:] for p in peers)} do not form a chain over blocks "
                         f"0:{snapshot.num_blocks} of {snapshot.dht_prefix}",
                         fix="name ONLINE servers whose spans cover every block once in order "
                             "(see 'petals-ops swarm status')")
    return routes[0]


# ---- the report (pure) --------------------------------------------------------------------------------

@dataclass(frozen=True)
class HopRow:
    peer_id: str
    public_name: str | None
    start: int
    end: int
    seconds: float  # measured: median client-side time of this hop's part of a decoding step
    network_seconds: float | None  # measured: fastest rpc_info round trip
    server_seconds: float | None  # inferred: seconds - network_seconds (queue, compute, (de)serialization)
    steps: int  # decoding steps this hop served
    failures: int = 0

    @property
    def blocks(self) -> str:
        return f"{self.start}:{self.end}"


@dataclass(frozen=True)
class RouteResult:
    route: list[Hop]  # the route asked for
    hops: list[HopRow] = field(default_factory=list)  # what the steps went through, in order
    step_seconds: float | None = None  # median decoding step, end to end
    steps: int = 0
    prefill_seconds: float | None = None
    client_seconds: float | None = None  # inferred: step - sum of hops
    retries: int = 0  # requests petals counted as failed (and retried)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def steps_per_second(self) -> float | None:
        return 1.0 / self.step_seconds if self.step_seconds else None

    def network_share(self, peer_id: str) -> float | None:
        """The share of the route's measured network time (the sum of its hops' ``network_seconds``)
        that ``peer_id``'s hop carries; None when some hop has no network measurement."""
        return shares([h.network_seconds for h in self.hops]).get(
            next((i for i, h in enumerate(self.hops) if h.peer_id == peer_id), -1))


def shares(values: Sequence[float | None]) -> dict[int, float]:
    """Index -> value / sum(values); {} when a value is missing or the sum is not positive."""
    if not values or any(v is None for v in values):
        return {}
    total = sum(values)
    if total <= 0:
        return {}
    return {i: v / total for i, v in enumerate(values)}


@dataclass(frozen=True)
class SlowestHop:
    route: int  # index into TraceReport.routes
    hop: HopRow
    route_step_seconds: float
    network_share: float | None
    evidence: str


@dataclass(frozen=True)
class TraceReport:
    model: str
    dht_prefix: str
    steps: int
    routes: list[RouteResult]
    seconds: float  # wall time of the whole trace
    notes: tuple[str, ...] = ()

    @property
    def slowest_hop(self) -> SlowestHop | None:
        """The hop with the most seconds per step over every traced route, with its evidence."""
        best = None
        for i, route in enumerate(self.routes):
            for hop in route.hops:
                if route.ok and (best is None or hop.seconds > best[1].seconds):
                    best = (i, hop)
        if best is None:
            return None
        i, hop = best
        route = self.routes[i]
        share = route.network_share(hop.peer_id)
        return SlowestHop(i, hop, route.step_seconds, share, describe_slowest(hop, route, share))

    def to_dict(self) -> dict:
        slowest = self.slowest_hop
        return {
            "model": self.model, "dht_prefix": self.dht_prefix, "steps": self.steps,
            "seconds": round(self.seconds, 3), "notes": list(self.notes),
            "routes": [{
                "route": [asdict(h) for h in r.route],
                "ok": r.ok, "error": r.error, "steps": r.steps,
                "step_seconds": r.step_seconds, "steps_per_second": r.steps_per_second,
                "prefill_seconds": r.prefill_seconds, "client_seconds": r.client_seconds,
                "retries": r.retries,
                "hops": [{**asdict(h), "blocks": h.blocks, "network_share": r.network_share(h.peer_id)}
                         for h in r.hops],
            } for r in self.routes],
            "slowest_hop": None if slowest is None else {
                "route": slowest.route, "peer_id": slowest.hop.peer_id, "blocks": slowest.hop.blocks,
                "seconds": slowest.hop.seconds, "network_seconds": slowest.hop.network_seconds,
                "server_seconds": slowest.hop.server_seconds,
                "route_step_seconds": slowest.route_step_seconds,
                "network_share": slowest.network_share, "evidence": slowest.evidence,
            },
            "measured": MEASURED,
        }


MEASURED = {
    "seconds": "measured: median client-side time of the hop's part of a decoding step",
    "network_seconds": "measured: fastest of a few rpc_info round trips to the server",
    "server_seconds": "inferred: seconds - network_seconds (server queue + compute + (de)serialization)",
    "client_seconds": "inferred: step_seconds - sum of the hops' seconds (the client's own work)",
    "step_seconds": "measured: median decoding step end to end (prefill excluded)",
}


def _ms(seconds: float | None) -> str:
    return "?" if seconds is None else f"{seconds * 1000:.0f} ms"


def describe_slowest(hop: HopRow, route: RouteResult, share: float | None) -> str:
    part = f" of a {_ms(route.step_seconds)} step" if route.step_seconds else ""
    text = f"…{hop.peer_id[-6:]} (blocks {hop.blocks}) takes {_ms(hop.seconds)} per step{part}"
    if share is not None and len(route.hops) > 1:
        text += f", {share:.0%} of the route's network time"
    if hop.network_seconds is not None:
        text += (f"; rpc_info round trip {_ms(hop.network_seconds)} (measured), server queue+compute "
                 f"~{_ms(hop.server_seconds)} (inferred)")
    others = [h.seconds for h in route.hops if h.peer_id != hop.peer_id]
    if others:
        text += f"; other hops {_ms(min(others))}–{_ms(max(others))}"
    return text


def summarize(route: list[Hop], run, *, public_names: dict[str, str | None] | None = None,
              error: str | None = None) -> RouteResult:
    """A :class:`RouteResult` from a :class:`petals_ops.client.canary.CanaryRun` (pure)."""
    names = public_names or {}
    decode = [h for h in run.hops if h.step >= 1]
    order: list[str] = []
    for h in decode:
        if h.ok and h.peer_id not in order:
            order.append(h.peer_id)
    rows = []
    for peer in order:
        mine = [h for h in decode if h.peer_id == peer]
        per_step: dict[int, float] = {}
        for h in mine:
            if h.ok:
                per_step[h.step] = per_step.get(h.step, 0.0) + h.seconds
        seconds = statistics.median(per_step.values())
        rtts = run.round_trips.get(peer) or []
        network = min(rtts) if rtts else None
        first = next(h for h in mine if h.ok)
        rows.append(HopRow(peer, names.get(peer), first.start, first.end, seconds, network,
                           None if network is None else max(0.0, seconds - network), len(per_step),
                           failures=sum(not h.ok for h in mine)))
    step = statistics.median(run.step_seconds) if run.step_seconds else None
    in_hops: dict[int, float] = {}
    for h in decode:
        in_hops[h.step] = in_hops.get(h.step, 0.0) + h.seconds
    client = (statistics.median(max(0.0, s - in_hops.get(i, 0.0)) for i, s in enumerate(run.step_seconds, 1))
              if run.step_seconds and rows else None)
    return RouteResult(route=route, hops=rows, step_seconds=step, steps=len(run.step_seconds),
                       prefill_seconds=run.prefill_seconds, client_seconds=client,
                       retries=len(run.failures), error=error)


# ---- running it ---------------------------------------------------------------------------------------

def check_bounds(*, steps: int, max_routes: int, timeout: float) -> None:
    if not 1 <= steps <= MAX_STEPS:
        raise InputError(f"--steps {steps} is out of range", fix=f"use 1..{MAX_STEPS} (e.g. --steps 8)")
    if not 1 <= max_routes <= MAX_ROUTES:
        raise InputError(f"--max-routes {max_routes} is out of range", fix=f"use 1..{MAX_ROUTES}")
    if not 0 < timeout <= 3600:
        raise InputError(f"--timeout {timeout:g} is out of range", fix="use 1..3600 seconds (e.g. 120)")


def plan_routes(snapshot: SwarmSnapshot, *, routes: Sequence[Sequence[str]] = (), through: Sequence[str] = (),
                max_routes: int = 4) -> list[list[Hop]]:
    """The routes to trace: the ones named (peer id prefixes or suffixes), else up to ``max_routes`` found
    in ``snapshot`` (through every server of ``through``). One-line errors for names that do not fit."""
    snapshot.require_full_coverage()
    if routes:
        return [route_from_peers([resolve_peer(p, snapshot) for p in peers], snapshot)
                for peers in routes][:max_routes]
    peers = [resolve_peer(p, snapshot) for p in through]
    found = enumerate_routes(snapshot, max_routes=max_routes, through=peers)
    if not found:
        raise InputError(f"no chain of ONLINE servers of {snapshot.dht_prefix} goes through "
                         f"{', '.join(p[-8:] for p in peers)}",
                         fix="pick another --server, or none (see 'petals-ops swarm status')")
    return found


def trace_routes(initial_peers: Sequence[str], model: ModelRef, *, snapshot: SwarmSnapshot | None = None,
                 routes: Sequence[Sequence[str]] = (), through: Sequence[str] = (), max_routes: int = 4,
                 steps: int = 8, timeout: float = 120.0, request_timeout: float = 20.0,
                 loaded=None) -> TraceReport:
    """Trace up to ``max_routes`` routes of ``model``'s swarm (or those named in ``routes``, or those
    through every server of ``through``), ``steps`` greedy decoding steps each, in at most ``timeout``
    seconds overall (a route still to run when it is spent is reported as skipped).

    ``loaded``: a petals client to reuse (loaded with ``use_server_to_server=False``); else one is loaded
    and closed here. A route that fails is a row with its error; the others still run."""
    from petals_ops.client import canary, loading
    from petals_ops.swarm.health import take_snapshot

    check_bounds(steps=steps, max_routes=max_routes, timeout=timeout)
    started = time.monotonic()
    deadline = started + timeout
    snap = snapshot or take_snapshot(initial_peers, model)
    chosen = plan_routes(snap, routes=routes, through=through, max_routes=max_routes)
    names = {s.peer_id: s.public_name for s in snap.servers}
    own = loaded is None
    if own:
        loaded = loading.load_swarm_model(model, initial_peers, max_retries=2,
                                          request_timeout=request_timeout, use_server_to_server=False)
    results = []
    try:
        for route in chosen:
            left = deadline - time.monotonic()
            if left < 5:
                results.append(RouteResult(route, error=f"skipped: the --timeout {timeout:g} s was spent"))
                continue
            try:
                run = canary.run_canary(loaded, steps=steps, pin=[h.peer_id for h in route], timeout=left)
                results.append(summarize(route, run, public_names=names))
            except canary.CanaryFailed as e:  # one route's failure is its row; the others still run
                results.append(summarize(route, e.run, public_names=names, error=one_line(e, 200)))
    finally:
        if own:
            loaded.close()
    return TraceReport(model=model.name, dht_prefix=model.dht_prefix, steps=steps, routes=results,
                       seconds=time.monotonic() - started,
                       notes=("petals' server-to-server pushes off: each hop's time is its own",))


def require_some_route(report: TraceReport) -> None:
    if report.routes and not any(r.ok for r in report.routes):
        raise OpsError(f"every traced route of {report.dht_prefix} failed: {report.routes[0].error}",
                       fix="check 'petals-ops swarm status' and the servers' logs")
