"""The watch loop: each interval read the fleet and the swarm, plan the remediations, journal, apply,
journal the outcomes; its lock (one watch per inventory) and its metrics.

State across restarts: the journal (actions, outcomes; :mod:`.journal`) and the recent readings
(``JOURNAL.readings.json``, rewritten atomically each pass; dropped when older than three intervals, so a
watch that was down starts counting bad readings afresh rather than acting on old ones).
"""

from __future__ import annotations

import fcntl
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from petals_ops.fleet.executor import Fleet, Target, resolve_targets
from petals_ops.fleet.schema import Inventory
from petals_ops.fleet.ssh import SSHOptions
from petals_ops.fleet.watch import act, journal as J
from petals_ops.fleet.watch.model import (HostReading, Policy, Reading, Remediation, ServerReading,
                                          WatchState)
from petals_ops.fleet.watch.planner import plan_remediations, verdicts
from petals_ops.util.errors import InputError, OpsError, one_line
from petals_ops.util.fsutil import read_json, write_json_atomic


def default_journal(inventory_path: str) -> Path:
    """``$PETALS_OPS_WATCH_DIR`` (else ``~/.petals-ops/watch``) / ``NAME-HASH.jsonl`` (the inventory file's
    name and a hash of its path)."""
    import hashlib

    base = Path(os.environ.get("PETALS_OPS_WATCH_DIR") or Path.home() / ".petals-ops" / "watch")
    resolved = str(Path(inventory_path).resolve())
    return base / f"{Path(resolved).stem}-{hashlib.sha256(resolved.encode()).hexdigest()[:8]}.jsonl"


class InventoryLock:
    """An exclusive flock on the inventory file itself: a second watch on the same inventory is refused."""

    def __init__(self, path: str):
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> "InventoryLock":
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OpsError(f"another 'petals-ops watch' is running on inventory {self.path}",
                           fix="stop it first (e.g. systemctl stop petals-ops-watch); one watch per fleet")
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


# -- readings on disk -----------------------------------------------------------------------------------
def reading_from_dict(d: dict) -> Reading:
    hosts = tuple(HostReading(h["host"], h.get("error"), tuple(ServerReading(**s) for s in h["servers"]),
                              h.get("spare", False), h.get("capacity", 1)) for h in d["hosts"])
    return Reading(d["at"], hosts, tuple(d.get("uncovered", ())), d.get("dht_error"),
                   tuple(tuple(r) for r in d.get("ranges", ())))


def load_history(path: Path, interval: float, now: float) -> list[Reading]:
    try:
        data = read_json(path)
        history = [reading_from_dict(d) for d in data]
    except Exception:  # missing, torn or foreign: start afresh (the journal, not this, holds the state)
        return []
    if not history or now - history[-1].at > 3 * interval:
        return []
    return history


# -- metrics --------------------------------------------------------------------------------------------
@dataclass
class PassStats:
    last_pass: float = 0.0
    pass_seconds: float = 0.0
    held_back: int = 0
    given_up: int = 0
    hosts_unknown: int = 0
    spares: int = 0
    counts: dict = field(default_factory=dict)


def metrics_collector(stats: PassStats, interval: float):
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    class Collector:
        def collect(self):
            actions = CounterMetricFamily("petals_ops_watch_actions",
                                          "Remediations done by watch, by kind and outcome (ok, failed, "
                                          "interrupted), since its journal began",
                                          labels=["kind", "outcome"])
            for (kind, outcome), n in sorted(stats.counts.items()):
                actions.add_metric([kind, outcome], n)
            yield actions
            for name, doc, value in (
                ("last_pass_timestamp_seconds", "When watch's last pass ended (Unix time)", stats.last_pass),
                ("interval_seconds", "watch's interval between passes", interval),
                ("pass_seconds", "How long the last pass took", stats.pass_seconds),
                ("servers_held_back", "Servers due a remediation that backoff or a rate limit holds back",
                 stats.held_back),
                ("servers_given_up", "Servers watch gave up on (left to a human)", stats.given_up),
                ("hosts_unknown", "Hosts the last pass could not read (never acted on)",
                 stats.hosts_unknown),
                ("spares_in_use", "Block ranges served by a spare host for a host that is gone",
                 stats.spares),
            ):
                g = GaugeMetricFamily(f"petals_ops_watch_{name}", doc)
                g.add_metric([], value)
                yield g

    return Collector()


def serve_metrics(stats: PassStats, interval: float, listen: tuple[str, int]):
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics_collector(stats, interval))
    try:
        return start_http_server(listen[1], addr=listen[0], registry=registry)
    except OSError as e:
        raise InputError(f"--metrics-listen {listen[0]}:{listen[1]}: cannot listen ({e.strerror})",
                         fix="pick a free port, or leave --metrics-listen out") from None


# -- the loop -------------------------------------------------------------------------------------------
Log = Callable[[str], None]


class Watch:
    """One watch over ``targets``. ``probe``: a started SwarmProbe (or None). Use :meth:`run` (the loop),
    :meth:`once` (one pass) or :meth:`dry_run`."""

    def __init__(self, inventory: Inventory, targets: Sequence[Target], *, policy: Policy, interval: float,
                 journal_path: Path, tokens: dict[str, str], probe=None, probe_timeout: float | None = None,
                 stop_timeout: int = 30, log: Log = print):
        from petals_ops.fleet.watch.observe import Observer

        self.inventory, self.targets, self.policy, self.interval = inventory, list(targets), policy, interval
        self.journal_path = Path(journal_path)
        self.history_path = self.journal_path.with_name(self.journal_path.name + ".readings.json")
        self.tokens, self.stop_timeout, self.log = tokens, stop_timeout, log
        self.observer = Observer(self.targets, probe, probe_timeout)
        self.stats = PassStats()
        self.history: list[Reading] = load_history(self.history_path, interval, time.time())
        self.state: WatchState = J.replay(self.journal_path)
        self.journal: J.Journal | None = None
        self.stop_event = threading.Event()
        self._unknown: dict[str, str | None] = {}

    # -- one pass -------------------------------------------------------------------------------------
    def _read(self, fleet: Fleet) -> Reading:
        reading = self.observer.read(fleet)
        self.history.append(reading)
        keep = max(self.policy.healthy_reset, self.policy.give_back_after) + 3 * self.interval
        while len(self.history) > self.policy.bad_readings + 1 and self.history[0].at < reading.at - keep:
            self.history.pop(0)
        return reading

    def plan(self, now: float) -> list[Remediation]:
        return plan_remediations(self.history, self.state, self.policy, now)

    def start(self) -> None:
        """Open the journal; record this start and the actions a killed watch left without an outcome."""
        self.journal = J.Journal(self.journal_path)
        self.journal.write({"type": "start", "pid": os.getpid(), "inventory": self.inventory.source})
        for action_id in self.state.interrupted:
            self.journal.outcome(action_id, "interrupted",
                                 "watch stopped before recording the outcome; not repeated: the next "
                                 "readings decide")
            self.log(f"journal: action {action_id} was interrupted (watch stopped mid-action); not repeated")
        self.state = J.replay(self.journal_path)

    def once(self) -> list[act.Done]:
        """One pass: read -> plan -> journal -> apply -> journal. Returns the actions' outcomes."""
        started = time.monotonic()
        with Fleet(self.targets) as fleet:
            reading = self._read(fleet)
            rems = self.plan(time.time())
            done = self._apply(fleet, reading, rems)
        write_json_atomic(self.history_path, [asdict(r) for r in self.history])
        self.state = J.replay(self.journal_path)
        self._update_stats(reading, rems, time.monotonic() - started)
        return done

    def _apply(self, fleet: Fleet, reading: Reading, rems: list[Remediation]) -> list[act.Done]:
        unknown = {h.host: h.error for h in reading.hosts if not h.known}
        for host, error in unknown.items():  # said when it starts (and when it ends), not every pass
            if host not in self._unknown:
                self.log(f"{host}: unknown this pass, not acted on ({error})")
        for host in self._unknown.keys() - unknown.keys():
            self.log(f"{host}: read again")
        self._unknown = unknown
        for r in rems:
            if r.kind == "hold":
                self.log(f"held: {r.line()}")
        changing = [r for r in rems if r.kind != "hold"]
        if not changing:
            return []
        rid = self._journal_reading(reading)
        todo, done = [], []
        for r in changing:
            action_id = self.journal.action(r.kind, r.key, reason=r.reason, reading=rid, host=r.host,
                                            container=r.container, blocks=r.blocks)
            if r.acts:
                todo.append((r, action_id))
                self.log(f"action: {r.line()}")
            else:  # bookkeeping: give_up, reset
                self.journal.outcome(action_id, "ok")
                self.log(f"{'GIVE UP' if r.kind == 'give_up' else r.kind}: {r.line()}")
        for d in act.apply_all(fleet, todo, self.tokens, self.stop_timeout):
            extra = {"container": d.container} if d.container else {}
            self.journal.outcome(d.action_id, d.outcome, d.detail, **extra)
            self.log(f"{d.outcome}: {d.remediation.line()}" + (f" ({d.detail})" if d.detail else ""))
            done.append(d)
        return done

    def _journal_reading(self, reading: Reading) -> str:
        import uuid

        rid = "r-" + uuid.uuid4().hex[:10]
        not_ok = {k: list(v) for k, v in verdicts(reading, self.policy).items() if v[0] != "ok"}
        self.journal.write({"type": "reading", "id": rid, "at": reading.at, "verdicts": not_ok,
                            "uncovered": list(reading.uncovered), "dht_error": reading.dht_error,
                            "unknown_hosts": {h.host: h.error for h in reading.hosts if not h.known}})
        return rid

    def _update_stats(self, reading: Reading, rems: list[Remediation], seconds: float) -> None:
        s = self.stats
        s.last_pass, s.pass_seconds = time.time(), round(seconds, 3)
        s.held_back = len({r.key for r in rems if r.kind == "hold" and not r.reason.startswith("given up")})
        s.given_up = sum(1 for st in self.state.servers.values() if st.given_up)
        s.hosts_unknown = sum(1 for h in reading.hosts if not h.known)
        s.spares = len(self.state.spares)
        s.counts = dict(self.state.counts)

    # -- modes ----------------------------------------------------------------------------------------
    def dry_run(self) -> list[Remediation]:
        """Readings (``bad_readings`` of them, ``interval`` apart, counting fresh ones from an earlier run)
        and the remediations they call for; nothing is changed or written."""
        with Fleet(self.targets) as fleet:
            while True:
                self._read(fleet)
                if len(self.history) >= self.policy.bad_readings or self.stop_event.wait(self.interval):
                    break
        return self.plan(time.time())

    def run(self) -> None:
        """Pass after pass until SIGTERM/SIGINT (the pass under way finishes first)."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop_event.set())
        while not self.stop_event.is_set():
            started = time.monotonic()
            try:
                self.once()
            except OpsError as e:  # e.g. the journal's disk: say so, keep watching (the last-pass metric
                self.log(f"pass failed: {e.one_line()}")  # goes stale: PetalsWatchNotRunning)
            except Exception as e:  # noqa: BLE001 (one bad pass must not end the loop)
                self.log(f"pass failed: {type(e).__name__}: {one_line(e, 300)}")
            self.stop_event.wait(max(0.0, self.interval - (time.monotonic() - started)))


def make_watch(inventory: Inventory, hosts: Sequence[str] | str | None = None, *,
               opts: SSHOptions | None = None, policy: Policy, interval: float,
               journal_path: str | os.PathLike | None = None, stop_timeout: int = 30, log: Log = print,
               swarm: bool = True, probe_timeout: float | None = 5.0) -> tuple[Watch, Callable[[], None]]:
    """A :class:`Watch` over ``hosts`` of ``inventory`` (tokens read and the model checked before any host
    is touched) and a close function (the swarm probe). ``probe_timeout``: each pass calls every ONLINE
    server's rpc_info (swarm/reachability.py); one that does not answer is bad (None: no probes)."""
    from petals_ops.fleet.peers import inventory_peers, swarm_model

    if not inventory.source:
        raise InputError("watch needs an inventory",
                         fix="pass --inventory PATH (or set PETALS_OPS_INVENTORY)")
    targets = resolve_targets(inventory, hosts, opts=opts)
    tokens = {t.server.hf_token.describe(): t.server.hf_token.read()
              for t in targets if t.server.hf_token is not None}
    probe = None
    if swarm:
        from petals_ops.swarm.health import SwarmProbe

        serving = [t for t in targets if not t.host.spare] or targets
        peers = inventory_peers(serving)
        if peers:
            probe = SwarmProbe(peers, swarm_model(serving))
            try:
                probe.start()
            except OpsError as e:  # the swarm down at start: the fleet is still read (DHT verdicts unknown)
                log(f"swarm: {e.one_line()} (retried each pass)")
    watch = Watch(inventory, targets, policy=policy, interval=interval,
                  journal_path=Path(journal_path) if journal_path else default_journal(inventory.source),
                  tokens=tokens, probe=probe, probe_timeout=probe_timeout, stop_timeout=stop_timeout, log=log)
    return watch, (probe.close if probe is not None else (lambda: None))
