"""``petals-ops up`` and ``restart``: apply the server containers on every host in parallel, then wait
until the swarm's DHT shows each server ONLINE for its blocks (through :mod:`petals_ops.swarm.health`)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

from petals_ops.util.errors import InputError, OpsError
from petals_ops.fleet import containers as C
from petals_ops.fleet.schema import BLOCK_RANGE_RE, Inventory
from petals_ops.fleet.parallel import HostOutcome, per_host
from petals_ops.fleet.peers import inventory_peers, multiaddr
from petals_ops.fleet.result import HostResult
from petals_ops.fleet.ssh import HostError, HostSession, SSHOptions, select_hosts


@dataclass
class ServerResult:
    host: str
    container: str
    action: str  # created | recreated | started | unchanged | restarted | would-...
    peer_id: str | None = None
    blocks: str | None = None
    port: int | None = None
    dht_state: str | None = None  # ONLINE / JOINING / OFFLINE / absent, after the wait
    error: str | None = None
    log_tail: list[str] = field(default_factory=list)


@dataclass
class FleetResult:
    servers: list[ServerResult]
    host_errors: dict[str, str]
    hosts: list[str]
    seconds: float = 0.0
    changes: dict[str, list[str]] = field(default_factory=dict)  # host -> what changed (or would)

    def host_ok(self, host: str) -> bool:
        return host not in self.host_errors and all(s.error is None for s in self.servers if s.host == host)

    def host_results(self) -> list[HostResult]:
        """The fleet's one result shape: per host, ok, what changed, the error and one row per server."""
        out = []
        for h in self.hosts:
            rows = [{k: v for k, v in asdict(s).items() if k != "host"} for s in self.servers if s.host == h]
            mine = [s for s in self.servers if s.host == h]
            error = self.host_errors.get(h) or next((s.error for s in mine if s.error), None)
            out.append(HostResult(h, ok=self.host_ok(h), changed=self.changes.get(h, []), error=error,
                                  rows=rows))
        return out


# -- read: the host's state, as plain data ------------------------------------------------------------
@dataclass(frozen=True)
class CurrentContainer:
    name: str
    config_hash: str | None
    status: str  # Docker's: running, exited, created, restarting...
    managed: bool  # carries our managed label
    host_label: str | None


@dataclass(frozen=True)
class UpHostState:
    """What ``up`` needs to know of a host: nothing in it is a live Docker object."""

    host: str
    image_id: str | None  # None: the image is not on the host yet
    volume_exists: bool
    identity_paths: dict[str, str]  # container -> identity file on the host
    peer_ids: dict[str, str | None]  # container -> peer id of its identity file (None: no file yet)
    containers: dict[str, CurrentContainer]  # the slots' containers that exist


def read_host_state(session: HostSession, inv: Inventory) -> UpHostState:
    import docker.errors

    host = session.name
    spec = inv.server_for(host)
    slots = C.server_slots(host, inv.host(host), spec)
    client = session.docker()
    try:
        image_id = client.images.get(spec.image).id
    except docker.errors.ImageNotFound:
        image_id = None
    try:
        client.volumes.get(spec.cache_volume)
        volume = True
    except docker.errors.NotFound:
        volume = False
    identity_dir = C.home_relative(session, spec.identity_dir)
    paths, peers, current = {}, {}, {}
    for slot in slots:
        paths[slot.container] = C.identity_path(spec, identity_dir, host, slot)
        # dry_run: reads the identity file only (None when there is none yet)
        peers[slot.container], _ = C.ensure_identity(session, paths[slot.container], dry_run=True)
        try:
            c = client.containers.get(slot.container)
        except docker.errors.NotFound:
            continue
        current[slot.container] = CurrentContainer(
            c.name, c.labels.get(C.LABEL_HASH), c.status, c.labels.get(C.LABEL_MANAGED) == "true",
            c.labels.get(C.LABEL_HOST))
    return UpHostState(host, image_id, volume, paths, peers, current)


# -- compute: the changes, from the state alone (unit-tested without SSH) ------------------------------
@dataclass
class ServerChange:
    slot: C.ServerSlot
    action: str  # create | recreate | start | unchanged
    reason: str
    peer_id: str | None
    new_identity: bool
    desired: C.DesiredContainer


@dataclass
class HostPlan:
    host: str
    pull_image: str | None
    create_volume: str | None
    servers: list[ServerChange]

    @property
    def changes(self) -> list[str]:
        out = [f"pull image {self.pull_image}"] if self.pull_image else []
        out += [f"create volume {self.create_volume}"] if self.create_volume else []
        for s in self.servers:
            if s.new_identity:
                out.append(f"{s.slot.container}: new identity file (a new peer id)")
            if s.action != "unchanged":
                out.append(f"{s.slot.container}: {s.action} ({s.reason})")
        return out


def plan_host(inv: Inventory, state: UpHostState, token: str | None) -> HostPlan:
    """What ``up`` changes on a host in ``state``: pull, volume, identities, and per server container
    create (missing), recreate (configuration hash differs), start (stopped) or nothing."""
    host = state.host
    spec = inv.server_for(host)
    servers = []
    for slot in C.server_slots(host, inv.host(host), spec):
        want = C.desired_container(host, spec, slot, state.identity_paths[slot.container], token)
        want.image_id = state.image_id
        current = state.containers.get(slot.container)
        if current is not None and (not current.managed or current.host_label not in (None, host)):
            owner = ("not made by petals-ops" if not current.managed
                     else f"labelled for host {current.host_label}")
            raise HostError(f"{host}: a container named {slot.container} exists and is {owner}",
                            fix="remove or rename it, or set server.container_prefix")
        if current is None:
            action, reason = "create", "missing"
        elif state.image_id is None or current.config_hash != want.config_hash():
            action, reason = "recreate", "configuration changed"
        elif current.status != "running":
            action, reason = "start", f"was {current.status}"
        else:
            action, reason = "unchanged", "up to date"
        peer = state.peer_ids.get(slot.container)
        servers.append(ServerChange(slot, action, reason, peer, peer is None, want))
    return HostPlan(host, None if state.image_id else spec.image,
                    None if state.volume_exists else spec.cache_volume, servers)


DRY = {"create": "would-create", "recreate": "would-recreate", "start": "would-start",
       "unchanged": "unchanged"}
DONE = {"create": "created", "recreate": "recreated", "start": "started", "unchanged": "unchanged"}


def plan_results(plan: HostPlan, *, dry_run: bool) -> list[ServerResult]:
    names = DRY if dry_run else DONE
    return [ServerResult(host=plan.host, container=s.slot.container, action=names[s.action],
                         peer_id=s.peer_id, blocks=s.slot.block_indices, port=s.slot.port)
            for s in plan.servers]


# -- apply --------------------------------------------------------------------------------------------
def apply_plan(session: HostSession, plan: HostPlan) -> list[ServerResult]:
    import docker.errors

    host = plan.host
    client = session.docker()
    image_id = None
    if plan.pull_image:
        try:
            image_id = client.images.pull(plan.pull_image).id
        except docker.errors.APIError as e:
            raise HostError(f"{host}: cannot pull image {plan.pull_image} ({e.explanation or e})",
                            fix="check the image name/tag and the host's registry access") from None
    if plan.create_volume:
        client.volumes.create(plan.create_volume, labels={C.LABEL_MANAGED: "true"})
    results = plan_results(plan, dry_run=False)
    for change, result in zip(plan.servers, results):
        if change.new_identity:
            result.peer_id, _ = C.ensure_identity(session, change.desired.identity_path, dry_run=False)
        if image_id is not None:
            change.desired.image_id = image_id
        name = change.slot.container
        if change.action == "recreate":
            current = client.containers.get(name)
            current.stop(timeout=30)  # SIGINT: the server announces itself OFFLINE
            current.remove(force=True)
        if change.action in ("create", "recreate"):
            try:
                container = client.containers.create(**change.desired.create_kwargs(host, result.peer_id))
                container.start()
            except docker.errors.APIError as e:
                raise HostError(f"{host}: cannot start {name} ({e.explanation or e})",
                                fix="read 'petals-ops logs HOST' and the inventory's image/volumes") from None
        elif change.action == "start":
            client.containers.get(name).start()
    return results


def _up_host(session: HostSession, inv: Inventory, *, dry_run: bool, tokens: dict,
             changes: dict[str, list[str]]) -> list[ServerResult]:
    spec = inv.server_for(session.name)
    token = tokens[spec.hf_token.describe()] if spec.hf_token is not None else None  # read by apply()
    plan = plan_host(inv, read_host_state(session, inv), token)
    changes[session.name] = plan.changes
    return plan_results(plan, dry_run=True) if dry_run else apply_plan(session, plan)


def _initial_peers(inv: Inventory, hosts: Sequence[str], results: list[ServerResult],
                   sessions: dict) -> list[str]:
    peers = inventory_peers(inv, hosts)
    for h in hosts:
        spec = inv.server_for(h)
        if spec.new_swarm:
            for r in results:
                if r.host == h and r.peer_id:
                    listening = spec.listen_address not in ("0.0.0.0", "::")
                    address = spec.public_ip or (spec.listen_address if listening else None)
                    address = address or sessions[h].conn.host  # an IP or a DNS name (ssh config HostName)
                    peers.append(multiaddr(address, r.port, r.peer_id))
    return peers


def _model_ref(inv: Inventory, hosts: Sequence[str]):
    from petals_ops.client.models import resolve_model

    specs = {(inv.server_for(h).model, inv.server_for(h).dht_prefix) for h in hosts}
    if len(specs) != 1:
        raise InputError("the selected hosts serve different models or DHT prefixes; petals-ops waits on one",
                         fix="run up once per model with --hosts")
    model, prefix = specs.pop()
    return resolve_model(model, dht_prefix=prefix)


ProgressFn = Callable[[int, int, float], None]


def wait_online(result: FleetResult, inv: Inventory, sessions: dict[str, HostSession], *, timeout: float,
                on_progress: ProgressFn | None = None, poll: float = 2.0) -> None:
    """Poll the DHT until every server of a healthy host is ONLINE for its blocks; fail those that exit."""
    from petals_ops.swarm.health import SwarmProbe

    pending = [s for s in result.servers
               if s.error is None and s.peer_id and s.host not in result.host_errors]
    if not pending:
        return
    hosts = sorted({s.host for s in pending})
    peers = _initial_peers(inv, hosts, result.servers, sessions)
    if not peers:
        for s in pending:
            s.error = "no initial peers to check the swarm with"
        return
    model = _model_ref(inv, hosts)
    deadline = time.monotonic() + timeout
    total = len(pending)
    try:
        probe = SwarmProbe(peers, model).start()
    except OpsError as e:
        for s in pending:
            s.error = e.one_line()
        return
    try:
        while pending:
            try:
                snap = probe.snapshot()
            except OpsError as e:
                snap = None
                last_error = e.one_line()
            still = []
            for s in pending:
                rec = snap.server(s.peer_id) if snap else None
                s.dht_state = rec.state if rec else "absent"
                blocks_ok = rec is not None and (s.blocks is None
                                                 or f"{rec.start_block}:{rec.end_block}" == s.blocks)
                if rec is not None and rec.state == "ONLINE" and blocks_ok:
                    continue
                still.append(s)
            pending = still
            if on_progress:
                on_progress(total - len(pending), total, time.monotonic())
            if not pending:
                break
            # A container that died (or keeps restarting) fails its host now, with its last log lines.
            for s in list(pending):
                problem = _container_problem(sessions[s.host], s.container)
                if problem:
                    s.error, s.log_tail = problem
                    pending.remove(s)
            if time.monotonic() > deadline:
                for s in pending:
                    s.error = (f"not ONLINE in the swarm after {timeout:.0f} s (DHT says {s.dht_state})"
                               + ("" if snap else f"; {last_error}"))
                    s.log_tail = _tail(sessions[s.host], s.container)
                break
            time.sleep(poll)
    finally:
        probe.close()


def _tail(session: HostSession, name: str) -> list[str]:
    try:
        return C.last_log_lines(session.docker().containers.get(name))
    except Exception:
        return []


def _container_problem(session: HostSession, name: str) -> tuple[str, list[str]] | None:
    try:
        c = session.docker().containers.get(name)
        c.reload()
    except Exception as e:
        return f"{session.name}: cannot inspect {name} ({' '.join(str(e).split())[:150]})", []
    state = c.attrs.get("State", {})
    restarts = c.attrs.get("RestartCount", 0)
    if state.get("Status") in ("exited", "dead") or restarts > 0:
        return (f"{session.name}: container {name} {'restarted' if restarts else 'exited'} during start-up "
                f"(exit code {state.get('ExitCode')}, restarts {restarts})", C.last_log_lines(c))
    return None


def apply(inventory: Inventory, hosts: Sequence[str] | None = None, *, opts: SSHOptions | None = None,
          dry_run: bool = False, wait: bool = True, timeout: float = 1800.0, parallel: int | None = None,
          on_progress: ProgressFn | None = None) -> FleetResult:
    """``up``: create-or-replace the servers of ``hosts`` (in parallel) and wait until they are ONLINE."""
    opts = opts or SSHOptions.from_inventory(inventory)
    names = select_hosts(inventory, hosts, opts)
    tokens: dict[str, str] = {}
    # inventory problems (and an unset token variable) are the user's, before touching any host
    for h in names:
        spec = inventory.server_for(h)
        C.server_slots(h, inventory.host(h), spec)
        if spec.hf_token is not None and spec.hf_token.describe() not in tokens:
            tokens[spec.hf_token.describe()] = spec.hf_token.read()
    if wait and not dry_run:
        _model_ref(inventory, names)  # the model/prefix the wait needs, checked before containers change
    sessions = {h: HostSession(h, inventory.host(h), opts) for h in names}
    changes: dict[str, list[str]] = {}
    result = _on_hosts(
        names, sessions,
        lambda h: _up_host(sessions[h], inventory, dry_run=dry_run, tokens=tokens, changes=changes),
        inventory, wait=wait and not dry_run, timeout=timeout, on_progress=on_progress, parallel=parallel,
    )
    result.changes = changes
    return result


def _on_hosts(names: list[str], sessions: dict[str, HostSession], apply: Callable[[str], list[ServerResult]],
              inventory: Inventory, *, wait: bool, timeout: float, on_progress: ProgressFn | None,
              parallel: int | None = None, settle: float = 0.0) -> FleetResult:
    """Run ``apply`` per host in parallel, then (``wait``) wait until the servers are ONLINE; close the
    sessions."""
    started = time.monotonic()
    try:
        outcomes: list[HostOutcome] = per_host(names, apply, parallel=parallel)
        result = FleetResult(servers=[s for o in outcomes if o.ok for s in o.value],
                             host_errors={o.host: o.error for o in outcomes if not o.ok}, hosts=names)
        if wait:
            time.sleep(settle)
            wait_online(result, inventory, sessions, timeout=timeout, on_progress=on_progress)
    finally:
        for s in sessions.values():
            s.close()
    result.seconds = round(time.monotonic() - started, 2)
    return result


@dataclass(frozen=True)
class RunningServer:
    """A managed container as ``restart`` reads it (labels only; no live Docker object)."""

    container: str
    peer_id: str | None
    blocks_label: str  # "start:end", or "num:N"/"auto" when the server chooses its span
    status: str


def read_servers(session: HostSession) -> list[RunningServer]:
    return [RunningServer(c.name, c.labels.get(C.LABEL_PEER), c.labels.get(C.LABEL_BLOCKS, ""), c.status)
            for c in C.managed_containers(session.docker(), session.name)]


def plan_restart(host: str, servers: Sequence[RunningServer]) -> tuple[list[str], list[ServerResult]]:
    """Every managed server of the host restarts (same identity file, so the same peer id)."""
    changes = [f"{s.container}: restart (was {s.status})" for s in servers]
    rows = [ServerResult(host=host, container=s.container, action="restart", peer_id=s.peer_id,
                         blocks=s.blocks_label if BLOCK_RANGE_RE.match(s.blocks_label) else None)
            for s in servers]
    return changes, rows


def restart(inventory: Inventory, hosts: Sequence[str] | None = None, *, opts: SSHOptions | None = None,
            dry_run: bool = False, wait: bool = True, timeout: float = 1800.0,
            on_progress: ProgressFn | None = None) -> FleetResult:
    """Restart the managed server containers of ``hosts`` (same identity, so the same peer ids)."""
    opts = opts or SSHOptions.from_inventory(inventory)
    names = select_hosts(inventory, hosts, opts)
    if wait and not dry_run:
        _model_ref(inventory, names)  # model mistakes fail before any container restarts
    sessions = {h: HostSession(h, inventory.host(h), opts) for h in names}
    changes: dict[str, list[str]] = {}

    def one(h: str) -> list[ServerResult]:
        changes[h], rows = plan_restart(h, read_servers(sessions[h]))
        for row in rows:
            if not dry_run:
                sessions[h].docker().containers.get(row.container).restart(timeout=30)
            row.action = "would-restart" if dry_run else "restarted"
        return rows

    # settle: give the restarted servers a moment to replace their old ONLINE records before polling
    result = _on_hosts(names, sessions, one, inventory, wait=wait and not dry_run, timeout=timeout,
                       on_progress=on_progress, settle=1.0)
    result.changes = changes
    return result
