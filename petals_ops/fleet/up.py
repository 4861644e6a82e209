"""``petals-ops up`` and ``restart``: apply the server containers on every host in parallel (through the
fleet executor), then wait until the swarm's DHT shows each server ONLINE for its blocks (the swarm's one
wait helper, :func:`petals_ops.swarm.wait.wait_on_swarm`)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

from petals_ops.fleet import containers as C
from petals_ops.fleet.executor import Fleet, Operation, Target, resolve_targets
from petals_ops.fleet.peers import inventory_peers, multiaddr, swarm_model
from petals_ops.fleet.result import HostResult, ServerRow
from petals_ops.fleet.schema import BLOCK_RANGE_RE, Inventory
from petals_ops.fleet.ssh import HostError, HostSession, SSHOptions
from petals_ops.swarm.wait import wait_on_swarm
from petals_ops.util.errors import OpsError, one_line


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


def read_host_state(session: HostSession, target: Target) -> UpHostState:
    import docker.errors

    host, spec = target.name, target.server
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
    for slot in target.slots:
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


def plan_host(target: Target, state: UpHostState, token: str | None) -> HostPlan:
    """What ``up`` changes on a host in ``state``: pull, volume, identities, and per server container
    create (missing), recreate (configuration hash differs), start (stopped) or nothing."""
    host, spec = target.name, target.server
    servers = []
    for slot in target.slots:
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


def plan_rows(plan: HostPlan, *, dry_run: bool) -> list[ServerRow]:
    names = DRY if dry_run else DONE
    return [ServerRow(container=s.slot.container, action=names[s.action], peer_id=s.peer_id,
                      blocks=s.slot.block_indices, port=s.slot.port)
            for s in plan.servers]


# -- apply --------------------------------------------------------------------------------------------
def apply_plan(session: HostSession, plan: HostPlan) -> list[ServerRow]:
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
    results = plan_rows(plan, dry_run=False)
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


class Up(Operation):
    """read the host's image, volume, identities and containers -> plan -> create/recreate/start."""

    def __init__(self, tokens: dict[str, str]):
        self.tokens = tokens  # hf_token source -> the token, read before any host is touched

    def read(self, target: Target, session: HostSession) -> UpHostState:
        return read_host_state(session, target)

    def plan(self, target: Target, state: UpHostState) -> HostPlan:
        source = target.server.hf_token
        return plan_host(target, state, self.tokens[source.describe()] if source is not None else None)

    def preview(self, target: Target, plan: HostPlan) -> HostResult:
        return HostResult(target.name, changed=plan.changes, rows=plan_rows(plan, dry_run=True))

    def apply(self, target: Target, session: HostSession, plan: HostPlan) -> HostResult:
        return HostResult(target.name, changed=plan.changes, rows=apply_plan(session, plan))


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


def plan_restart(host: str, servers: Sequence[RunningServer]) -> tuple[list[str], list[ServerRow]]:
    """Every managed server of the host restarts (same identity file, so the same peer id)."""
    changes = [f"{s.container}: restart (was {s.status})" for s in servers]
    rows = [ServerRow(container=s.container, action="restart", peer_id=s.peer_id,
                      blocks=s.blocks_label if BLOCK_RANGE_RE.match(s.blocks_label) else None)
            for s in servers]
    return changes, rows


class Restart(Operation):
    def read(self, target: Target, session: HostSession) -> list[RunningServer]:
        return read_servers(session)

    def plan(self, target: Target, state: list[RunningServer]):
        return plan_restart(target.name, state)

    def preview(self, target: Target, plan, action: str = "would-restart") -> HostResult:
        changes, rows = plan
        for row in rows:
            row.action = action
        return HostResult(target.name, changed=changes, rows=rows)

    def apply(self, target: Target, session: HostSession, plan) -> HostResult:
        for row in plan[1]:
            session.docker().containers.get(row.container).restart(timeout=30)
        return self.preview(target, plan, action="restarted")


# -- wait ---------------------------------------------------------------------------------------------
ProgressFn = Callable[[int, int, float], None]


def _initial_peers(fleet: Fleet, results: Sequence[HostResult]) -> list[str]:
    """The inventory's initial peers, plus (new_swarm) our own servers' multiaddrs."""
    targets = {t.name: t for t in fleet.targets}
    peers = inventory_peers([targets[r.host] for r in results])
    for r in results:
        spec = targets[r.host].server
        if spec.new_swarm:
            for row in r.rows:
                if row.peer_id:
                    listening = spec.listen_address not in ("0.0.0.0", "::")
                    address = spec.public_ip or (spec.listen_address if listening else None)
                    # an IP or a DNS name (the ssh config's HostName)
                    address = address or fleet.session(targets[r.host]).conn.host
                    peers.append(multiaddr(address, row.port, row.peer_id))
    return peers


def wait_online(fleet: Fleet, results: Sequence[HostResult], *, timeout: float,
                on_progress: ProgressFn | None = None, poll: float = 2.0) -> None:
    """Poll the DHT until every server of a healthy host is ONLINE for its blocks; a server whose container
    exits (or restarts) fails its host at once, with its last log lines; the rest fail at the deadline."""
    pending = [(r, row) for r in results if r.ok for row in r.rows if row.error is None and row.peer_id]
    if not pending:
        return
    by_host = {t.name: t for t in fleet.targets}
    hosts = [r for r in results if any(r is p for p, _ in pending)]

    def fail(result: HostResult, row: ServerRow, error: str, log_tail: list[str] | None = None) -> None:
        row.error, row.log_tail = error, log_tail or []
        result.fail(error)

    peers = _initial_peers(fleet, hosts)
    if not peers:
        for r, row in pending:
            fail(r, row, "no initial peers to check the swarm with")
        return
    total = len(pending)
    last_error = None

    def step(snap, error) -> bool:
        nonlocal pending, last_error
        still = []
        for r, row in pending:
            rec = snap.server(row.peer_id) if snap else None
            row.dht_state = rec.state if rec else "absent"
            if rec is not None and rec.reachable is False:
                row.dht_state += " (unreachable)"
            blocks_ok = rec is not None and (row.blocks is None
                                             or f"{rec.start_block}:{rec.end_block}" == row.blocks)
            # ONLINE in the DHT is the server's own claim: up also needs it to answer our probe.
            if not (rec is not None and rec.state == "ONLINE" and rec.reachable is not False and blocks_ok):
                still.append((r, row))
        pending = still
        if on_progress:
            on_progress(total - len(pending), total, time.monotonic())
        for r, row in list(pending):  # a container that died (or keeps restarting) fails its host now
            problem = _container_problem(fleet.session(by_host[r.host]), row.container)
            if problem:
                fail(r, row, *problem)
                pending.remove((r, row))
        last_error = error
        return not pending

    try:
        done = wait_on_swarm(peers, swarm_model([by_host[r.host] for r in hosts]), step, timeout=timeout,
                             poll=poll, probe=True, probe_only=lambda: {row.peer_id for _, row in pending})
    except OpsError as e:  # the swarm cannot be reached at all
        for r, row in pending:
            fail(r, row, e.one_line())
        return
    if not done:
        for r, row in pending:
            fail(r, row, f"not ONLINE in the swarm after {timeout:.0f} s (DHT says {row.dht_state})"
                         + (f"; {last_error}" if last_error else ""),
                 _tail(fleet.session(by_host[r.host]), row.container))


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
        return f"{session.name}: cannot inspect {name} ({one_line(e, 150)})", []
    state = c.attrs.get("State", {})
    restarts = c.attrs.get("RestartCount", 0)
    if state.get("Status") in ("exited", "dead") or restarts > 0:
        return (f"{session.name}: container {name} {'restarted' if restarts else 'exited'} during start-up "
                f"(exit code {state.get('ExitCode')}, restarts {restarts})", C.last_log_lines(c))
    return None


# -- the commands ---------------------------------------------------------------------------------------
def _run_and_wait(op: Operation, targets: list[Target], *, dry_run: bool, wait: bool, timeout: float,
                  parallel: int | None, on_progress: ProgressFn | None,
                  settle: float = 0.0) -> list[HostResult]:
    if wait and not dry_run:
        swarm_model(targets)  # the model/prefix the wait needs, checked before containers change
    with Fleet(targets, parallel=parallel) as fleet:
        results = fleet.run(op, dry_run=dry_run)
        if wait and not dry_run:
            time.sleep(settle)
            wait_online(fleet, results, timeout=timeout, on_progress=on_progress)
    return results


def up(inventory: Inventory, hosts: Sequence[str] | None = None, *, opts: SSHOptions | None = None,
       dry_run: bool = False, wait: bool = True, timeout: float = 1800.0, parallel: int | None = None,
       on_progress: ProgressFn | None = None) -> list[HostResult]:
    """Create-or-replace the servers of ``hosts`` (in parallel) and wait until they are ONLINE."""
    # inventory problems (and an unset token variable) are the user's, before touching any host
    targets = resolve_targets(inventory, hosts, opts=opts, require_slots=True)
    tokens = {t.server.hf_token.describe(): t.server.hf_token.read()
              for t in targets if t.server.hf_token is not None}
    return _run_and_wait(Up(tokens), targets, dry_run=dry_run, wait=wait, timeout=timeout, parallel=parallel,
                         on_progress=on_progress)


def restart(inventory: Inventory, hosts: Sequence[str] | None = None, *, opts: SSHOptions | None = None,
            dry_run: bool = False, wait: bool = True, timeout: float = 1800.0,
            on_progress: ProgressFn | None = None) -> list[HostResult]:
    """Restart the managed server containers of ``hosts`` (same identity, so the same peer ids)."""
    targets = resolve_targets(inventory, hosts, opts=opts)
    # settle: give the restarted servers a moment to replace their old ONLINE records before polling
    return _run_and_wait(Restart(), targets, dry_run=dry_run, wait=wait, timeout=timeout, parallel=None,
                         on_progress=on_progress, settle=1.0)
