"""The custom collector: renders the refresher's latest :class:`ExporterState` on every scrape.

A scrape never touches the DHT; it turns the last snapshot into fresh metric families (so servers that
left the swarm disappear from the output) and reports the snapshot's age. Metric names follow Prometheus
conventions (prefix ``petals_``, base units in the name, ``_total`` counters, ``_info`` for metadata)
and are documented in docs/monitoring.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric

from petals_ops import __version__
from petals_ops.monitoring.canary import render_canary
from petals_ops.monitoring.gpu_metrics import render_gpus
from petals_ops.monitoring.refresher import ExporterState
from petals_ops.swarm.health import STATES

# public_name is chosen by each server of a public swarm (and changes): it is a label of the info metric
# only, so the other server series stay bounded by peer id. Join it in PromQL through petals_server_info.
SERVER_LABELS = ["model", "peer_id", "host"]
CONTAINER_LABELS = ["host", "container"]
CACHE_NOTE = " (from the exporter's latest DHT walk; see petals_exporter_snapshot_age_seconds)"


def _gauge(name: str, doc: str, labels: list[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=labels or [])


def render(state: ExporterState, now: float | None = None) -> list[Metric]:
    """All metric families for ``state`` (pure: no I/O)."""
    return render_state(state) + render_live(state, now)


def render_live(state: ExporterState, now: float | None = None) -> list[Metric]:
    """The families that change between two refreshes (the snapshot's age): rendered on every scrape."""
    now = time.time() if now is None else now
    if not state.snapshots:
        return []
    age = _gauge("petals_exporter_snapshot_age_seconds", "Age of the oldest model snapshot served")
    age.add_metric([], max(0.0, now - min(s.taken_at for s in state.snapshots)))
    return [age]


def render_state(state: ExporterState) -> list[Metric]:
    """The families fixed by one refresh's state (the bulk: the server can encode them once per refresh)."""
    fams: list[Metric] = []

    # -- per model -----------------------------------------------------------------------------------
    blocks = _gauge("petals_model_blocks", "Blocks (transformer layers) of the model" + CACHE_NOTE, ["model"])
    uncovered = _gauge("petals_model_uncovered_blocks",
                       "Blocks with no ONLINE server: any one breaks every forward pass" + CACHE_NOTE,
                       ["model"])
    min_online = _gauge("petals_model_min_online_servers",
                        "Fewest ONLINE servers holding any one block of the model" + CACHE_NOTE, ["model"])
    served = _gauge("petals_model_fully_served",
                    "1 if every block has an ONLINE server (a full forward pass can be served), else 0"
                    + CACHE_NOTE,
                    ["model"])
    by_state = _gauge("petals_model_servers", "Servers announcing blocks of the model, by state" + CACHE_NOTE,
                      ["model", "state"])
    per_block = _gauge("petals_block_online_servers", "ONLINE servers holding the block" + CACHE_NOTE,
                       ["model", "block"])
    # -- per server ----------------------------------------------------------------------------------
    srv_state = _gauge("petals_server_state",
                       "1 for the state the server announces (OFFLINE, JOINING, ONLINE), 0 for the others"
                       + CACHE_NOTE,
                       SERVER_LABELS + ["state"])
    first = _gauge("petals_server_first_block", "First block the server holds" + CACHE_NOTE, SERVER_LABELS)
    last = _gauge("petals_server_last_block", "Last block the server holds (inclusive)" + CACHE_NOTE,
                  SERVER_LABELS)
    throughput = _gauge("petals_server_throughput_tokens_per_second",
                        "Throughput the server announces (Petals' figure, tokens per second)" + CACHE_NOTE,
                        SERVER_LABELS)
    cache = _gauge("petals_server_cache_left_tokens",
                   "Attention-cache tokens the server has left for new inference sessions" + CACHE_NOTE,
                   SERVER_LABELS)
    reachable = _gauge("petals_server_reachable",
                       "1 if the ONLINE server answered petals' rpc_info from the exporter within the probe "
                       "timeout, 0 if not (it announces ONLINE but no client gets through); absent if not "
                       "probed" + CACHE_NOTE, SERVER_LABELS)
    probe_latency = _gauge("petals_server_probe_latency_seconds",
                           "Round trip of the exporter's rpc_info probe to the server (reachable ones only)"
                           + CACHE_NOTE, SERVER_LABELS)
    unreachable = _gauge("petals_model_unreachable_servers",
                         "Servers announcing ONLINE that did not answer the probe (counted for no block)"
                         + CACHE_NOTE, ["model"])
    next_ping = _gauge("petals_server_next_ping_seconds",
                       "Round trip the server measured to a server of its next blocks (its own next_pings; "
                       "+Inf: its ping failed); only peers serving the same model, at most 16 per server"
                       + CACHE_NOTE, ["model", "peer_id", "next_peer_id"])
    info = InfoMetricFamily("petals_server", "Software of the server" + CACHE_NOTE,
                            labels=SERVER_LABELS + ["public_name", "version", "torch_dtype", "quant_type",
                                                    "using_relay"])

    online_peers: set[str] = set()
    for snap in state.snapshots:
        m = snap.dht_prefix
        blocks.add_metric([m], snap.num_blocks)
        uncovered.add_metric([m], len(snap.uncovered_blocks))
        min_online.add_metric([m], snap.min_online)
        served.add_metric([m], 1 if snap.fully_served else 0)
        for st, count in snap.servers_by_state().items():
            by_state.add_metric([m, st], count)
        for b in snap.blocks:
            per_block.add_metric([m, str(b.index)], b.online)
        if snap.probed:
            unreachable.add_metric([m], len(snap.unreachable_servers))
        peers = {s.peer_id for s in snap.servers}
        for s in snap.servers:
            labels = [m, s.peer_id, state.own_hosts.get(s.peer_id, "")]
            if s.state == "ONLINE":
                online_peers.add(s.peer_id)
            for st in STATES:
                srv_state.add_metric(labels + [st], 1 if s.state == st else 0)
            first.add_metric(labels, s.start_block)
            last.add_metric(labels, s.end_block - 1)
            throughput.add_metric(labels, s.throughput)
            if s.cache_tokens_left is not None:
                cache.add_metric(labels, s.cache_tokens_left)
            if s.reachability is not None:
                reachable.add_metric(labels, 1 if s.reachability.reachable else 0)
                if s.reachability.latency is not None:
                    probe_latency.add_metric(labels, s.reachability.latency)
            for other, rtt in (s.next_pings or {}).items():
                if other in peers:  # bounded: both ends are servers of this model
                    next_ping.add_metric([m, s.peer_id, other], float("inf") if rtt is None else rtt)
            info.add_metric(labels, {
                "public_name": s.public_name or "", "version": s.version or "",
                "torch_dtype": s.torch_dtype or "", "quant_type": s.quant_type or "",
                "using_relay": "" if s.using_relay is None else str(bool(s.using_relay)).lower(),
            })
    fams += [blocks, uncovered, min_online, served, by_state, per_block, srv_state, first, last, throughput,
             cache, info, reachable, probe_latency, unreachable, next_ping]

    # -- the swarm's initial peers (bootstrap DHT nodes) -----------------------------------------------
    if state.bootstrap:
        alive = _gauge("petals_bootstrap_peer_alive",
                       "1 if the initial peer (a bootstrap DHT node) answered the exporter's dial and DHT "
                       "ping within the probe timeout, else 0" + CACHE_NOTE, ["address", "peer_id"])
        ping = _gauge("petals_bootstrap_peer_ping_seconds", "Round trip of the dial and DHT ping (alive only)"
                      + CACHE_NOTE, ["address", "peer_id"])
        for peer in state.bootstrap:
            alive.add_metric([peer.address, peer.peer_id], 1 if peer.alive else 0)
            if peer.reachability.latency is not None:
                ping.add_metric([peer.address, peer.peer_id], peer.reachability.latency)
        fams += [alive, ping]

    # -- our servers (local swarm identities, inventory containers) -----------------------------------
    own = _gauge("petals_own_server_online",
                 "1 if our server (by peer id) is ONLINE for some monitored model, 0 if it is not or absent"
                 + CACHE_NOTE, ["host", "peer_id"])
    if state.snapshots:
        for peer_id, host in sorted(state.own_hosts.items()):
            own.add_metric([host, peer_id], 1 if peer_id in online_peers else 0)
    fams.append(own)

    # -- our containers (with an inventory) ----------------------------------------------------------
    if state.containers is not None:
        fleet_up = _gauge("petals_fleet_up", "1 if the latest read of our containers' status succeeded")
        fleet_up.add_metric([], 1 if state.fleet_ok else 0)
        inspected = _gauge("petals_container_inspect_success", "1 if the container's status could be read",
                           CONTAINER_LABELS)
        running = _gauge("petals_container_running", "1 if the container is running", CONTAINER_LABELS)
        restarts = CounterMetricFamily("petals_container_restarts",
                                       "Restarts of the container (Docker's RestartCount)",
                                       labels=CONTAINER_LABELS)
        exit_code = _gauge("petals_container_last_exit_code", "Exit code of the container's last exit",
                           CONTAINER_LABELS)
        for c in state.containers:
            labels = [c.host, c.container]
            inspected.add_metric(labels, 0 if c.error else 1)
            if c.error:
                continue
            running.add_metric(labels, 1 if c.running else 0)
            restarts.add_metric(labels, c.restart_count)
            if c.exit_code is not None:
                exit_code.add_metric(labels, c.exit_code)
        fams += [fleet_up, inspected, running, restarts, exit_code]
        fams += render_gpus(state.gpus)

    # -- the exporter itself --------------------------------------------------------------------------
    up = _gauge("petals_exporter_up",
                "1 if the latest refresh walked the DHT for every monitored model, else 0")
    up.add_metric([], 1 if state.up else 0)
    interval = _gauge("petals_exporter_refresh_interval_seconds", "Seconds between two DHT walks (--refresh)")
    interval.add_metric([], state.refresh_interval)
    refreshes = CounterMetricFamily("petals_exporter_refreshes", "Refreshes (DHT walks) attempted")
    refreshes.add_metric([], state.refreshes)
    errors = CounterMetricFamily("petals_exporter_refresh_errors",
                                 "Failed refreshes, by source (swarm, fleet, probe)",
                                 labels=["source"])
    for source, count in sorted(state.errors.items()):
        errors.add_metric([source], count)
    build = InfoMetricFamily("petals_exporter_build", "Version of petals-ops serving these metrics")
    build.add_metric([], {"version": __version__})
    fams += [up, interval, refreshes, errors, build]
    fams += render_canary(state.canary, state.own_hosts)
    if state.refresh_seconds is not None:
        duration = _gauge("petals_exporter_refresh_duration_seconds",
                          "Wall time of the latest refresh's DHT walk")
        duration.add_metric([], state.refresh_seconds)
        fams.append(duration)
    if state.probe_seconds is not None:
        probe = _gauge("petals_exporter_probe_duration_seconds",
                       "Wall time of the latest refresh's reachability probes (part of the refresh)")
        probe.add_metric([], state.probe_seconds)
        probed = _gauge("petals_exporter_probed_servers",
                        "Servers probed by the latest refresh (the others' answers are younger than the TTL)")
        probed.add_metric([], state.probed_servers)
        fams += [probe, probed]
    if state.last_success is not None:
        success = _gauge("petals_exporter_last_success_timestamp_seconds",
                         "Unix time of the latest successful DHT walk")
        success.add_metric([], state.last_success)
        fams.append(success)
    return fams


class SwarmCollector:
    """prometheus-client custom collector over a callable returning the latest state.

    ``part``: "all" (default), "state" (what one refresh fixes) or "live" (the snapshot's age).
    """

    def __init__(self, get_state: Callable[[], ExporterState], part: str = "all"):
        self.get_state = get_state
        self.render = {"all": render, "state": render_state, "live": render_live}[part]

    def describe(self) -> Iterable[Metric]:
        return []  # nothing at registration time (collect() is cheap, but keep registration side-effect free)

    def collect(self) -> Iterable[Metric]:
        return self.render(self.get_state())
