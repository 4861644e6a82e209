"""The data ``watch`` reasons over: readings (what one pass saw), the policy, the remediations, and the
state rebuilt from the journal. Plain frozen dataclasses: no SSH, Docker or DHT objects."""

from __future__ import annotations

from dataclasses import dataclass, field


# -- one pass's reading ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ServerReading:
    """One server container of ours as a pass saw it.

    ``state``: Docker's (running, exited, restarting, paused, created, dead) or ``missing`` (the inventory
    gives the host this server, no container exists). ``dht``: ONLINE/JOINING/OFFLINE/absent, or None when
    the swarm could not be read. ``reachable``: the reachability probe's answer where one ran (None: no
    probe)."""

    host: str
    container: str
    state: str
    blocks: str | None = None  # "start:end"
    peer_id: str | None = None
    dht: str | None = None
    reachable: bool | None = None
    managed: bool = True  # made by petals-ops for this host (the reader lists only those)
    spare: bool = False  # runs on a spare host, serving a range for another host
    started_at: float | None = None  # when the container last started (Unix time, the host's clock)

    @property
    def key(self) -> str:
        return f"{self.host}/{self.container}"


@dataclass(frozen=True)
class HostReading:
    host: str
    error: str | None = None  # set: the host could not be read (SSH or Docker failed): "unknown", not dead
    servers: tuple[ServerReading, ...] = ()
    spare: bool = False
    capacity: int = 1  # servers a spare host can run (its GPUs; 1 for a CPU server)

    @property
    def known(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class Reading:
    """One pass: every host (read or unknown) and the swarm's coverage (``dht_error`` set: not read)."""

    at: float
    hosts: tuple[HostReading, ...]
    uncovered: tuple[int, ...] = ()
    dht_error: str | None = None
    ranges: tuple[tuple[str, str], ...] = ()  # (owner key host/container, "start:end") from the inventory

    def host(self, name: str) -> HostReading | None:
        return next((h for h in self.hosts if h.host == name), None)

    def servers(self) -> list[ServerReading]:
        return [s for h in self.hosts for s in h.servers]

    def server(self, key: str) -> ServerReading | None:
        return next((s for s in self.servers() if s.key == key), None)


# -- the policy -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Policy:
    """When ``watch`` acts, and how much. Defaults suit real hosts (Petals' 240 s record expiry)."""

    bad_readings: int = 3  # K: consecutive bad readings before acting
    restarts_before_recreate: int = 2
    recreates_before_give_up: int = 1
    backoff_base: float = 30.0  # after the n-th attempt: wait base * 2^(n-1) s (up to backoff_max)
    backoff_max: float = 1800.0
    max_per_server_per_hour: int = 4
    max_actions_per_pass: int = 2
    startup_grace: float = 300.0  # a container started this recently and not ONLINE yet is starting, not a
    # zombie (the server measures its throughput and loads its blocks before it announces ONLINE)
    healthy_reset: float = 600.0  # healthy this long after an attempt: its ladder starts again
    give_back_after: float = 600.0  # the original host healthy this long: its spare is given back
    dht_distrust_fraction: float = 0.5  # more than this share of our running servers absent at once: the DHT
    # reading is not trusted (a swarm-wide DHT outage must not restart the fleet)

    def backoff(self, attempts: int) -> float:
        return 0.0 if attempts <= 0 else min(self.backoff_base * 2 ** (attempts - 1), self.backoff_max)


# -- what the planner returns ---------------------------------------------------------------------------
ACTIONS = ("restart", "recreate", "take_spare", "give_back")  # change something on a host
BOOKKEEPING = ("give_up", "reset")  # change only watch's own state (journaled too)


@dataclass(frozen=True)
class Remediation:
    """One decision. ``kind``: restart | recreate | take_spare | give_back | give_up | reset | hold.
    ``key``: the server (host/container) it is about; for take_spare the owner whose range is taken, for
    give_back the owner whose spare is returned. ``host``/``container``: where it acts."""

    kind: str
    key: str
    reason: str
    host: str | None = None
    container: str | None = None
    blocks: str | None = None

    @property
    def acts(self) -> bool:
        return self.kind in ACTIONS

    def line(self) -> str:
        where = f" on {self.host}" if self.host and not self.key.startswith(f"{self.host}/") else ""
        blocks = f" [{self.blocks}]" if self.blocks else ""
        return f"{self.kind} {self.key}{blocks}{where}: {self.reason}"


# -- the state the journal rebuilds ---------------------------------------------------------------------
@dataclass
class ServerState:
    attempts: list[tuple[float, str]] = field(default_factory=list)  # (at, kind) since the ladder's reset
    actions: list[float] = field(default_factory=list)  # every action's time (the hourly rate limit)
    given_up: bool = False


@dataclass
class SpareHolding:
    owner: str  # key of the server whose range it serves
    host: str  # the spare host
    container: str
    blocks: str
    since: float


@dataclass
class WatchState:
    servers: dict[str, ServerState] = field(default_factory=dict)
    spares: dict[str, SpareHolding] = field(default_factory=dict)  # owner key -> holding
    counts: dict[tuple[str, str], int] = field(default_factory=dict)  # (kind, outcome) -> actions
    interrupted: list[str] = field(default_factory=list)  # action ids found without an outcome at replay

    def server(self, key: str) -> ServerState:
        return self.servers.setdefault(key, ServerState())
