"""``petals-ops up`` and ``restart``: apply the server containers on every host in parallel, then wait
until the swarm's DHT shows each server ONLINE for its blocks (through :mod:`petals_ops.swarm_health`)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

from petals_ops.errors import InputError, OpsError
from petals_ops.fleet import containers as C
from petals_ops.fleet.inventory import Inventory
from petals_ops.fleet.parallel import HostOutcome, per_host
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

    def host_ok(self, host: str) -> bool:
        return host not in self.host_errors and all(s.error is None for s in self.servers if s.host == host)

    @property
    def exit_code(self) -> int:
        from petals_ops.fleet.parallel import exit_code

        return exit_code([self.host_ok(h) for h in self.hosts])

    def rows(self) -> list[dict]:
        rows = []
        for h in self.hosts:
            if h in self.host_errors:
                rows.append({"host": h, "container": "", "action": "failed", "peer_id": None, "blocks": None,
                             "port": None, "dht_state": None, "error": self.host_errors[h], "log_tail": []})
            rows += [asdict(s) for s in self.servers if s.host == h]
        return rows


def _apply_host(session: HostSession, inv: Inventory, *, dry_run: bool, tokens: dict) -> list[ServerResult]:
    import docker.errors

    host = session.name
    spec = inv.server_for(host)
    slots = C.server_slots(host, inv.host(host), spec)
    token = tokens[spec.hf_token.describe()] if spec.hf_token is not None else None  # read by apply()
    client = session.docker()
    try:
        image = client.images.get(spec.image)
    except docker.errors.ImageNotFound:
        image = None
        if not dry_run:
            try:
                image = client.images.pull(spec.image)
            except docker.errors.APIError as e:
                raise HostError(f"{host}: cannot pull image {spec.image} ({e.explanation or e})",
                                fix="check the image name/tag and the host's registry access") from None
    identity_dir = C.home_relative(session, spec.identity_dir)
    results = []
    if not dry_run:
        try:
            client.volumes.get(spec.cache_volume)
        except docker.errors.NotFound:
            client.volumes.create(spec.cache_volume, labels={C.LABEL_MANAGED: "true"})
    for slot in slots:
        ident = C.identity_path(spec, identity_dir, host, slot)
        peer_id, _ = C.ensure_identity(session, ident, dry_run=dry_run)
        want = C.desired_container(host, spec, slot, ident, token)
        want.image_id = image.id if image is not None else None
        want_hash = want.config_hash()
        try:
            current = client.containers.get(slot.container)
        except docker.errors.NotFound:
            current = None
        if current is None:
            action = "created"
        elif current.labels.get(C.LABEL_HASH) != want_hash:
            action = "recreated"
        elif current.status != "running":
            action = "started"
        else:
            action = "unchanged"
        result = ServerResult(host=host, container=slot.container, action=action, peer_id=peer_id,
                              blocks=slot.block_indices, port=slot.port)
        if dry_run:
            result.action = {"created": "would-create", "recreated": "would-recreate", "started": "would-start"}.get(action, action)
        else:
            if action == "recreated":
                current.stop(timeout=30)  # SIGINT: the server announces itself OFFLINE
                current.remove(force=True)
            if action in ("created", "recreated"):
                try:
                    container = client.containers.create(**want.create_kwargs(host, peer_id))
                    container.start()
                except docker.errors.APIError as e:
                    raise HostError(f"{host}: cannot start {slot.container} ({e.explanation or e})",
                                    fix="read 'petals-ops logs HOST' and the inventory's image/volumes") from None
            elif action == "started":
                current.start()
        results.append(result)
    return results


def _initial_peers(inv: Inventory, hosts: Sequence[str], results: list[ServerResult], sessions: dict) -> list[str]:
    peers: list[str] = []
    for h in hosts:
        spec = inv.server_for(h)
        peers += [p for p in spec.initial_peers if p not in peers]
        if spec.new_swarm:
            for r in results:
                if r.host == h and r.peer_id:
                    address = spec.public_ip or (spec.listen_address if spec.listen_address not in ("0.0.0.0", "::") else None)
                    address = address or sessions[h].conn.host
                    peers.append(f"/ip4/{address}/tcp/{r.port}/p2p/{r.peer_id}")
    return peers


def _model_ref(inv: Inventory, hosts: Sequence[str]):
    from petals_ops.models import resolve_model

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
    from petals_ops.swarm_health import SwarmProbe

    pending = [s for s in result.servers if s.error is None and s.peer_id and s.host not in result.host_errors]
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
                blocks_ok = rec is not None and (s.blocks is None or f"{rec.start_block}:{rec.end_block}" == s.blocks)
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
    for h in names:  # inventory problems (and an unset token variable) are the user's, before touching any host
        spec = inventory.server_for(h)
        C.server_slots(h, inventory.host(h), spec)
        if spec.hf_token is not None and spec.hf_token.describe() not in tokens:
            tokens[spec.hf_token.describe()] = spec.hf_token.read()
    if wait and not dry_run:
        _model_ref(inventory, names)  # the model/prefix the wait needs, checked before containers change
    sessions = {h: HostSession(h, inventory.host(h), opts) for h in names}
    return _on_hosts(
        names, sessions, lambda h: _apply_host(sessions[h], inventory, dry_run=dry_run, tokens=tokens),
        inventory, wait=wait and not dry_run, timeout=timeout, on_progress=on_progress, parallel=parallel,
    )


def _on_hosts(names: list[str], sessions: dict[str, HostSession], apply: Callable[[str], list[ServerResult]],
              inventory: Inventory, *, wait: bool, timeout: float, on_progress: ProgressFn | None,
              parallel: int | None = None, settle: float = 0.0) -> FleetResult:
    """Run ``apply`` per host in parallel, then (``wait``) wait until the servers are ONLINE; close sessions."""
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


def restart(inventory: Inventory, hosts: Sequence[str] | None = None, *, opts: SSHOptions | None = None,
            dry_run: bool = False, wait: bool = True, timeout: float = 1800.0,
            on_progress: ProgressFn | None = None) -> FleetResult:
    """Restart the managed server containers of ``hosts`` (same identity, so the same peer ids)."""
    opts = opts or SSHOptions.from_inventory(inventory)
    names = select_hosts(inventory, hosts, opts)
    if wait and not dry_run:
        _model_ref(inventory, names)  # model mistakes fail before any container restarts
    sessions = {h: HostSession(h, inventory.host(h), opts) for h in names}

    def one(h: str) -> list[ServerResult]:
        out = []
        for c in C.managed_containers(sessions[h].docker()):
            if not dry_run:
                c.restart(timeout=30)
            blocks = c.labels.get(C.LABEL_BLOCKS, "")  # "start:end", or "num:N"/"auto" when the server chooses
            out.append(ServerResult(host=h, container=c.name, action="would-restart" if dry_run else "restarted",
                                    peer_id=c.labels.get(C.LABEL_PEER),
                                    blocks=blocks if ":" in blocks and not blocks.startswith("num:") else None))
        return out

    # settle: give the restarted servers a moment to replace their old ONLINE records before polling
    return _on_hosts(names, sessions, one, inventory, wait=wait and not dry_run, timeout=timeout,
                     on_progress=on_progress, settle=1.0)
