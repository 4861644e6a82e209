"""The fleet executor: every fleet command runs its hosts through here.

A command supplies an :class:`Operation` (read a host's state as plain data -> plan the changes from that
state alone -> apply them). The executor owns the rest, once for every command:

- **targets**, resolved once per command: the host's name, its inventory entry, its effective server
  spec (``inventory.server_for``), its server slots (one per GPU) and the SSH options;
- **sessions**: one SSH session per host, opened on first use and closed at the end;
- **parallelism**: the hosts run in threads (all at once unless ``parallel`` says fewer);
- **failures**: one host raising never stops or hides the others; it gets a failed row of its own;
- **results**: one :class:`~petals_ops.fleet.result.HostResult` per host, in host order.

``dry_run`` stops after the plan: the operation's :meth:`Operation.preview` is the host's result.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Collection, Generic, Sequence, TypeVar

from petals_ops.fleet.containers import ServerSlot, server_slots
from petals_ops.fleet.result import HostResult
from petals_ops.fleet.schema import HostSpec, Inventory, ServerSpec
from petals_ops.fleet.ssh import HostSession, SSHOptions, select_hosts
from petals_ops.util.errors import InputError, OpsError, one_line

T = TypeVar("T")


@dataclass(frozen=True)
class Target:
    """One host as a command acts on it, resolved from the inventory once."""

    name: str
    host: HostSpec
    server: ServerSpec
    slots: tuple[ServerSlot, ...]  # empty when the inventory gives the host no server (cuda with gpus: 0)
    opts: SSHOptions

    @property
    def wants_gpu(self) -> bool:
        return self.server.device == "cuda" and self.host.gpus > 0

    @property
    def expected_gpus(self) -> int:
        """GPUs the inventory says the host has for its servers (0 for a CPU server)."""
        return self.host.gpus if self.server.device == "cuda" else 0


def resolve_targets(inventory: Inventory, hosts: Sequence[str] | str | None = None, *,
                    opts: SSHOptions | None = None, require_slots: bool = False,
                    given_as: str = "--hosts:") -> list[Target]:
    """The targets of ``--hosts`` (default: every inventory host). ``require_slots``: a host whose servers
    the inventory cannot place (gpus: 0 with device cuda, too few block ranges) is the user's error
    (exit 2) before any host is touched; otherwise it gets no slots."""
    opts = opts or SSHOptions.from_inventory(inventory)
    targets = []
    for name in select_hosts(inventory, hosts, opts, given_as=given_as):
        hspec, spec = inventory.host(name), inventory.server_for(name)
        try:
            # a spare host has no server of its own (watch starts one there for a host that is gone)
            slots = () if hspec.spare else tuple(server_slots(name, hspec, spec))
        except InputError:
            if require_slots:
                raise
            slots = ()
        targets.append(Target(name, hspec, spec, slots, opts))
    return targets


@dataclass
class Outcome(Generic[T]):
    """What one host gave back: its value, or the one line of its failure."""

    target: Target
    value: T | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class Operation:
    """What a fleet command supplies. The executor calls, per host and in this order:

    - :meth:`read`: the host's state as plain data (no live Docker objects kept);
    - :meth:`plan`: the changes, from the state alone (pure: unit-tested over made-up states);
    - :meth:`apply`: make them (verifying each), returning the host's result;
    - or, with ``--dry-run``, :meth:`preview`: the plan as the host's result, nothing changed.

    A read-only command (``hosts check``) plans nothing and previews its reading.
    """

    def read(self, target: Target, session: HostSession) -> Any:
        return None

    def plan(self, target: Target, state: Any) -> Any:
        return state

    def apply(self, target: Target, session: HostSession, plan: Any) -> HostResult:
        return self.preview(target, plan)

    def preview(self, target: Target, plan: Any) -> HostResult:
        raise NotImplementedError


SessionFactory = Callable[[str, HostSpec, SSHOptions], HostSession]


class Fleet:
    """The executor: ``targets`` (resolved once), their sessions, and the parallel run of each host.

    Use as a context manager: the sessions stay open until it exits (``up`` waits on the DHT and reads
    containers' logs after the apply step, through the same connections).
    """

    def __init__(self, targets: Sequence[Target], *, parallel: int | None = None,
                 session_factory: SessionFactory = HostSession):
        self.targets = list(targets)
        self.parallel = parallel
        self._factory = session_factory
        self._sessions: dict[str, HostSession] = {}

    def session(self, target: Target) -> HostSession:
        if target.name not in self._sessions:
            self._sessions[target.name] = self._factory(target.name, target.host, target.opts)
        return self._sessions[target.name]

    def close(self) -> None:
        for s in self._sessions.values():
            s.close()
        self._sessions.clear()

    def __enter__(self) -> "Fleet":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def each(self, fn: Callable[[Target, HostSession], T],
             only: Collection[str] | None = None) -> list[Outcome[T]]:
        """``fn(target, session)`` for every target (or those named in ``only``) in parallel; results in
        host order. One host's failure (an OpsError's line, or any other exception's type and message) is
        that host's outcome only."""

        def one(target: Target) -> Outcome[T]:
            try:
                return Outcome(target, value=fn(target, self.session(target)))
            except OpsError as e:
                return Outcome(target, error=e.one_line())
            except Exception as e:  # an unexpected error on one host must not take the others down
                return Outcome(target, error=f"{target.name}: {type(e).__name__}: "
                                             f"{one_line(e, 200)}")

        targets = [t for t in self.targets if only is None or t.name in only]
        if not targets:
            return []
        workers = max(1, min(self.parallel or len(targets), len(targets)))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(one, targets))

    def run(self, op: Operation, *, dry_run: bool = False) -> list[HostResult]:
        """read -> plan -> (apply | preview) on every host: one result per host, failed hosts included."""

        def one(target: Target, session: HostSession) -> HostResult:
            plan = op.plan(target, op.read(target, session))
            return op.preview(target, plan) if dry_run else op.apply(target, session, plan)

        return [o.value if o.ok else HostResult.failed(o.target.name, o.error) for o in self.each(one)]


def run_operation(op: Operation, inventory: Inventory, hosts: Sequence[str] | str | None = None, *,
                  opts: SSHOptions | None = None, dry_run: bool = False,
                  parallel: int | None = None) -> list[HostResult]:
    """The whole of a simple fleet command: resolve the targets, run ``op`` on them, close the sessions."""
    with Fleet(resolve_targets(inventory, hosts, opts=opts), parallel=parallel) as fleet:
        return fleet.run(op, dry_run=dry_run)
