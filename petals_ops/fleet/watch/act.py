"""Remediations applied through the fleet executor: the hosts in parallel (one host's hang or failure never
holds the others), each host's actions in order. Every action checks first that the container is ours
(managed by petals-ops and labelled for that host) and reuses ``up``'s read -> plan -> apply to create a
container, so a recreated or spare server is exactly what ``up`` would make.

- restart: ``docker restart`` (SIGINT, then SIGKILL after ``stop_timeout``): same container, same peer id;
- recreate: stop and remove, then ``up`` for that one slot (same identity file: same peer id);
- take_spare: ``up`` of one extra slot on the spare host (``{prefix}-spare-N``, the owner's block range, its
  own identity and port), which ``up``/``restart``/``status``/``down`` then see as one of that host's
  servers;
- give_back: the spare's container serving that range stopped (SIGINT: a clean OFFLINE) and removed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from petals_ops.fleet import containers as C
from petals_ops.fleet.executor import Fleet, Target
from petals_ops.fleet.ssh import HostError, HostSession
from petals_ops.fleet.watch.model import Remediation
from petals_ops.util.errors import OpsError, one_line


@dataclass
class Done:
    remediation: Remediation
    action_id: str
    outcome: str  # ok | failed
    detail: str = ""
    container: str | None = None


def _ours(session: HostSession, host: str, name: str):
    for c in C.managed_containers(session.docker(), host):
        if c.name == name:
            return c
    raise HostError(f"{host}: no container {name} of petals-ops for this host (not touched)",
                    fix="run 'petals-ops status'")


def _up_slot(session: HostSession, target: Target, tokens: dict[str, str]) -> None:
    """``up``'s read -> plan -> apply on a target of one slot (create when missing)."""
    from petals_ops.fleet.up import Up, apply_plan

    op = Up(tokens)
    plan = op.plan(target, op.read(target, session))
    apply_plan(session, plan)


def spare_target(target: Target, index: int, blocks: str) -> Target:
    """The spare host's target for one extra server ``{prefix}-spare-{index}`` serving ``blocks``."""
    spec = target.server.model_copy(update={"block_indices": [blocks]})
    gpu = None if spec.device == "cpu" else index
    slot = C.ServerSlot(host=target.name, index=index, gpu=gpu, port=spec.port + index, block_indices=blocks,
                        num_blocks=None, container=f"{spec.container_prefix}-spare-{index}")
    return Target(target.name, target.host, spec, (slot,), target.opts)


def apply_one(session: HostSession, target: Target, rem: Remediation, tokens: dict[str, str],
              stop_timeout: int) -> str | None:
    """Apply one remediation on its host; returns the container acted on (take_spare: the one started)."""
    if rem.kind == "restart":
        _ours(session, target.name, rem.container).restart(timeout=stop_timeout)
        return rem.container
    if rem.kind == "recreate":
        slot = next((s for s in target.slots if s.container == rem.container), None)
        if slot is None:
            raise HostError(f"{target.name}: {rem.container} is not one of the inventory's servers there",
                            fix="recreate it with 'petals-ops up'")
        try:
            c = _ours(session, target.name, rem.container)
            c.stop(timeout=stop_timeout)
            c.remove(force=True)
        except HostError:
            pass  # missing already: up creates it
        _up_slot(session, Target(target.name, target.host, target.server, (slot,), target.opts), tokens)
        return rem.container
    if rem.kind == "take_spare":
        used = {c.name for c in C.managed_containers(session.docker(), target.name)}
        capacity = 1 if target.server.device == "cpu" else max(1, target.host.gpus)
        index = next((i for i in range(capacity)
                      if f"{target.server.container_prefix}-spare-{i}" not in used), None)
        if index is None:
            raise HostError(f"{target.name}: no free slot on the spare host", fix="add a spare host")
        spare = spare_target(target, index, rem.blocks)
        _up_slot(session, spare, tokens)
        return spare.slots[0].container
    if rem.kind == "give_back":
        gone = []
        for c in C.managed_containers(session.docker(), target.name):
            if c.labels.get(C.LABEL_BLOCKS) == rem.blocks and "-spare-" in c.name:
                c.stop(timeout=stop_timeout)  # SIGINT: OFFLINE announced before it goes
                c.remove(force=True)
                gone.append(c.name)
        return ", ".join(gone) or None
    raise ValueError(f"not an action: {rem.kind}")


def apply_all(fleet: Fleet, todo: Sequence[tuple[Remediation, str]], tokens: dict[str, str],
              stop_timeout: int = 30) -> list[Done]:
    """Apply ``(remediation, action id)`` pairs: hosts in parallel, each host's in order. A failure is that
    action's outcome (one line), never an exception."""
    by_host: dict[str, list[tuple[Remediation, str]]] = {}
    for rem, action_id in todo:
        by_host.setdefault(rem.host, []).append((rem, action_id))
    results: dict[str, list[Done]] = {}

    def host(target: Target, session: HostSession) -> list[Done]:
        done = []
        for rem, action_id in by_host[target.name]:
            try:
                container = apply_one(session, target, rem, tokens, stop_timeout)
                done.append(Done(rem, action_id, "ok", container=container))
            except OpsError as e:
                done.append(Done(rem, action_id, "failed", e.one_line()))
            except Exception as e:  # the Docker SDK's errors: the action failed, the loop goes on
                done.append(Done(rem, action_id, "failed", f"{type(e).__name__}: {one_line(e, 200)}"))
        return done

    for o in fleet.each(host, only=by_host):
        results[o.target.name] = o.value if o.ok else [Done(rem, aid, "failed", o.error or "")
                                                       for rem, aid in by_host[o.target.name]]
    known = {t.name for t in fleet.targets}
    out = [d for t in fleet.targets for d in results.get(t.name, [])]
    return out + [Done(rem, aid, "failed", f"{rem.host}: not an inventory host")
                  for rem, aid in todo if rem.host not in known]
