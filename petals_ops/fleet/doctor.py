"""``petals-ops doctor``: what is wrong with the swarm and with our servers, each finding with its fix.

:func:`diagnose` is pure: from a probed snapshot (swarm/reachability.py), optionally our containers
(fleet/status.py's :class:`ContainerStatus`) and a trace (swarm/trace.py's :class:`TraceReport`), it
returns :class:`Finding` rows, worst first. :func:`run_doctor` gathers those inputs (DHT walk and probes,
SSH to our hosts when there is an inventory, a canary trace when asked) and calls it.

What it finds:
- blocks with no reachable ONLINE server (critical: no forward pass), and blocks held by one (warning);
- servers that announce ONLINE but do not answer the probe (unreachable), and initial peers that are down;
- with an inventory: zombies (our container runs, its server is absent from the DHT or present but
  unreachable), containers that are not running, hosts we cannot reach;
- version skew and dtype/quantisation skew among ONLINE servers;
- with ``trace``: the slowest hop with its evidence (per-hop timing of a canary generation), and the
  hop carrying most of the network time when that is another one.

Exit code (:attr:`DoctorReport.exit_code`): 0 nothing wrong, 3 warnings only (the swarm serves, something
needs care), 1 a critical finding.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from petals_ops.swarm.health import SwarmSnapshot, format_block_ranges
from petals_ops.util.errors import EXIT_FAILURE, EXIT_OK, EXIT_PARTIAL

SEVERITIES = ("critical", "warning", "info")


@dataclass(frozen=True)
class Finding:
    severity: str  # critical | warning | info
    kind: str  # uncovered | thin | unreachable | bootstrap_down | zombie | not_running | host_unreachable |
    #            version_skew | dtype_skew | slowest_hop | slowest_network_hop
    subject: str  # what it is about: blocks "2:4", a peer id, "host/container", an address
    message: str  # one line: what is wrong, with its evidence
    fix: str  # one line: what to do


@dataclass
class DoctorReport:
    dht_prefix: str
    findings: list[Finding]
    checked: list[str]  # what was looked at (so "no finding" means something)
    notes: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        severities = {f.severity for f in self.findings}
        if "critical" in severities:
            return EXIT_FAILURE
        return EXIT_PARTIAL if "warning" in severities else EXIT_OK

    def to_dict(self) -> dict[str, Any]:
        return {"dht_prefix": self.dht_prefix, "exit_code": self.exit_code, "checked": self.checked,
                "notes": self.notes, "findings": [asdict(f) for f in self.findings]}


def _name(server, hosts: dict[str, str]) -> str:
    where = f" (ours, on {hosts[server.peer_id]})" if server.peer_id in hosts else ""
    return f"{server.peer_id}{where}"


def _blocks(indices: Sequence[int]) -> str:
    return format_block_ranges(indices)


def _coverage(snap: SwarmSnapshot) -> list[Finding]:
    out = []
    if snap.uncovered_blocks:
        blocks = _blocks(snap.uncovered_blocks)
        only = snap.blocks_only_on_unreachable
        why = f" (blocks {_blocks(only)} are held only by unreachable servers)" if only else ""
        out.append(Finding("critical", "uncovered", blocks,
                           f"blocks {blocks} of {snap.dht_prefix} have no reachable ONLINE server{why}: "
                           "no forward pass can be served",
                           f"start a server for blocks {blocks} (petals-ops up, or run_server "
                           f"--block_indices {blocks.split(', ')[0]})"))
    thin = [b.index for b in snap.blocks if b.online == 1]
    if thin:
        blocks = _blocks(thin)
        out.append(Finding("warning", "thin", blocks,
                           f"blocks {blocks} of {snap.dht_prefix} have a single reachable ONLINE server: "
                           "losing it breaks the model",
                           f"add a replica of blocks {blocks} (a second server with --block_indices)"))
    return out


def _reachability(snap: SwarmSnapshot, hosts: dict[str, str], skip: set[str]) -> list[Finding]:
    out = []
    for s in snap.unreachable_servers:
        if s.peer_id in skip:  # named as a zombie already
            continue
        error = s.reachability.error if s.reachability is not None else "no answer"
        out.append(Finding("warning", "unreachable", s.peer_id,
                           f"server {_name(s, hosts)} announces ONLINE for blocks "
                           f"{s.start_block}:{s.end_block} but did not answer rpc_info within "
                           f"{snap.probe_timeout:g} s ({error})",
                           "open its port to the swarm (port forwarding, firewall, --announce_maddrs) or "
                           "restart it if it hangs; clients skip it meanwhile"))
    for p in snap.bootstrap:
        if not p.alive:
            out.append(Finding("warning", "bootstrap_down", p.address,
                               f"initial peer {p.address} did not answer a dial and DHT ping "
                               f"({p.reachability.error})",
                               "restart that bootstrap node, or give servers and clients another initial "
                               "peer"))
    return out


def _fleet(snap: SwarmSnapshot, containers: Sequence[Any]) -> tuple[list[Finding], set[str]]:
    from petals_ops.fleet.status import zombie

    out, zombies = [], set()
    for c in containers:
        if c.error:
            out.append(Finding("warning", "host_unreachable", c.host, f"host {c.host}: {c.error}",
                               f"check the host and its sshd ('petals-ops hosts check --hosts {c.host}')"))
            continue
        subject = f"{c.host}/{c.container}"
        line = zombie(c, snap)
        if line:
            zombies.add(c.peer_id)
            out.append(Finding("critical" if snap.server(c.peer_id) is None else "warning", "zombie", subject,
                               line, f"restart it ('petals-ops restart --hosts {c.host}'); "
                                     f"'petals-ops logs {c.host}' says why"))
        elif not c.running:
            out.append(Finding("warning", "not_running", subject,
                               f"{c.container} on {c.host} is not running (exit code {c.exit_code})",
                               f"'petals-ops logs {c.host}', then 'petals-ops up --hosts {c.host}'"))
    return out, zombies


def _skew(snap: SwarmSnapshot, hosts: dict[str, str]) -> list[Finding]:
    online = [s for s in snap.servers if s.state == "ONLINE"]
    out = []
    versions = Counter(s.version or "?" for s in online)
    if len(versions) > 1:
        newest = max((v for v in versions if v != "?"), default="?", key=_version_key)
        behind = [s for s in online if (s.version or "?") != newest]
        out.append(Finding("warning", "version_skew", ", ".join(sorted(versions)),
                           "petals versions differ among ONLINE servers: "
                           + ", ".join(f"{v} ×{n}" for v, n in versions.most_common())
                           + f"; behind {newest}: " + ", ".join(_name(s, hosts) for s in behind[:5])
                           + (" ..." if len(behind) > 5 else ""),
                           f"upgrade those servers to petals {newest} (old ones may lack what clients "
                           "ask for)"))
    kinds = Counter(f"{s.torch_dtype or '?'}/{s.quant_type or 'none'}" for s in online)
    if len(kinds) > 1:
        out.append(Finding("info", "dtype_skew", ", ".join(sorted(kinds)),
                           "ONLINE servers run different dtype/quantisation: "
                           + ", ".join(f"{k} ×{n}" for k, n in kinds.most_common())
                           + " (outputs differ slightly by route; quantised blocks are slower per token)",
                           "run every server with the same --torch_dtype and --quant_type if outputs must "
                           "be reproducible"))
    return out


def _version_key(version: str) -> tuple:
    parts = []
    for piece in version.replace("-", ".").split("."):
        parts.append((0, int(piece), "") if piece.isdigit() else (1, 0, piece))
    return tuple(parts)


def _slowest(trace: Any) -> list[Finding]:
    """The slowest hop (most seconds per step) and, when another hop carries most of the route's measured
    network time, that one too: on a loaded machine server time is noisy, a network delay is not."""
    hop = trace.slowest_hop
    if hop is None:
        return []
    out = [Finding("info", "slowest_hop", hop.hop.peer_id,
                   f"slowest hop: {hop.evidence}",
                   f"if its time is network, add a replica of blocks {hop.hop.blocks} closer to the "
                   "clients; if it is server time, it is overloaded (fewer blocks or another replica)")]
    route = trace.routes[hop.route]
    measured = [h for h in route.hops if h.network_seconds is not None]
    if len(measured) > 1:
        net = max(measured, key=lambda h: h.network_seconds)
        share = route.network_share(net.peer_id)
        others = [h.network_seconds for h in measured if h is not net]
        if net.peer_id != hop.hop.peer_id and share is not None and share >= 0.5:
            out.append(Finding(
                "info", "slowest_network_hop", net.peer_id,
                f"slowest network hop: …{net.peer_id[-6:]} (blocks {net.blocks}) carries {share:.0%} of the "
                f"route's network time: rpc_info round trip {net.network_seconds * 1000:.0f} ms (measured), "
                f"other hops {min(others) * 1000:.0f}–{max(others) * 1000:.0f} ms",
                f"a replica of blocks {net.blocks} on a server closer to the clients and the other hops "
                "saves that round trip at every step"))
    return out


def diagnose(snap: SwarmSnapshot, *, containers: Sequence[Any] | None = None,
             own_hosts: dict[str, str] | None = None, trace: Any = None) -> list[Finding]:
    """Every finding for a probed ``snap`` (plus our ``containers`` and a ``trace`` when given), worst first.
    ``own_hosts``: peer id -> our host name, to say which servers are ours. Pure."""
    hosts = dict(own_hosts or {})
    for c in containers or ():
        if getattr(c, "peer_id", None):
            hosts[c.peer_id] = c.host
    fleet, zombies = _fleet(snap, containers) if containers is not None else ([], set())
    findings = _coverage(snap) + fleet + _reachability(snap, hosts, zombies) + _skew(snap, hosts)
    if trace is not None:
        findings += _slowest(trace)
    return sorted(findings, key=lambda f: SEVERITIES.index(f.severity))


def run_doctor(initial_peers: Sequence[str], model, *, probe_timeout: float, inventory: Any = None,
               hosts: Sequence[str] | None = None, ssh_opts: Any = None,
               own_hosts: dict[str, str] | None = None, trace: bool = False, trace_steps: int = 4,
               trace_timeout: float = 120.0) -> DoctorReport:
    """Walk and probe the swarm, read our containers when there is an ``inventory``, trace the routes when
    ``trace``, and diagnose. One host's failure is a finding, never an exception."""
    from petals_ops.swarm.reachability import probe_snapshot

    snap = probe_snapshot(initial_peers, model, timeout=probe_timeout)
    checked = [f"{len(snap.blocks)} blocks and {len(snap.servers)} servers of {snap.dht_prefix} in the DHT",
               f"{sum(s.reachable is not None for s in snap.servers)} ONLINE servers probed with rpc_info "
               f"(timeout {probe_timeout:g} s)", f"{len(snap.bootstrap)} initial peers pinged"]
    notes = []
    containers = None
    if inventory is not None:
        from petals_ops.fleet.status import read_fleet

        containers = read_fleet(inventory, hosts, opts=ssh_opts, gpus=False).containers
        checked.append(f"{sum(1 for c in containers if not c.error)} containers of our hosts over SSH")
    else:
        notes.append("no inventory: our containers were not checked for zombies (pass --inventory)")
    report = None
    if trace:
        from petals_ops.swarm.trace import trace_routes

        if snap.fully_served:
            report = trace_routes(initial_peers, model, snapshot=snap, steps=trace_steps,
                                  timeout=trace_timeout)
            checked.append(f"{len(report.routes)} routes traced with a {trace_steps}-step canary generation")
        else:
            notes.append("not traced: some block has no reachable server, so no route exists")
    else:
        notes.append("slowest hop not measured (pass --trace: a short canary generation per route)")
    findings = diagnose(snap, containers=containers, own_hosts=own_hosts, trace=report)
    return DoctorReport(dht_prefix=snap.dht_prefix, findings=findings, checked=checked, notes=notes)


def fleet_swarm(inventory: Any, hosts: Sequence[str] | None = None,
                opts: Any = None) -> tuple[list[str], Any]:
    """The initial peers and model our fleet's servers serve (the swarm doctor checks with an inventory)."""
    from petals_ops.fleet.executor import resolve_targets
    from petals_ops.fleet.peers import inventory_peers, swarm_model

    targets = resolve_targets(inventory, hosts, opts=opts)
    return inventory_peers(targets), swarm_model(targets)
