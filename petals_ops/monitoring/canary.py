"""The exporter's canary: every N minutes, a short greedy generation through the swarm, timed per hop.

Off unless ``petals-ops exporter --canary-every`` is given. It runs in its own background thread (one run
at a time, each bounded by ``--canary-timeout`` and the client's request timeout; loading the client, at
the first run and after a failure, by its own 30 s startup timeout), so neither a scrape
nor the DHT walk ever waits for it; the refresher copies its latest result into each state it publishes.
It uses petals' own route choice (no pinning: what a user of the swarm gets) with server-to-server pushes
off, and measures what ``swarm trace`` measures (:mod:`petals_ops.swarm.trace`). The client (a DHT node,
a p2pd, the model's embeddings) is loaded at the first run and kept; after a failed run it is closed and
loaded afresh at the next, so a restarted swarm is found again.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from petals_ops.client.models import ModelRef
from petals_ops.swarm.trace import HopRow
from petals_ops.util.errors import InputError, one_line

log = logging.getLogger("petals_ops.exporter")
DEFAULT_STEPS = 8
DEFAULT_SLO = 0.5  # steps/s; BLOOM-176B on three A100s: 1.71 at < 5 ms round trip, 1.23 at 100 ms (paper)


@dataclass(frozen=True)
class CanaryState:
    """What the metrics show; replaced as a whole after each run."""

    model: str  # the DHT prefix
    interval: float
    slo: float
    runs: dict[str, int] = field(default_factory=lambda: {"success": 0, "failure": 0})
    last_run: float | None = None  # Unix time the latest run ended
    last_success: float | None = None
    ok: bool | None = None  # the latest run succeeded (None before the first)
    steps_per_second: float | None = None  # latest run; 0 when it failed
    duration: float | None = None  # wall time of the latest run, client loading included
    retries: int = 0
    hops: tuple[HopRow, ...] = ()
    last_error: str | None = None


def check_canary(model: ModelRef, every: float, timeout: float) -> None:
    """One-line errors before the exporter starts: the canary needs the model's checkpoint here (for the
    embeddings and the tokenizer), and a run must fit in its period."""
    if model.path is None:
        raise InputError(f"--canary-every needs the checkpoint of {model.name} on this machine "
                         "(the client runs the embeddings and the LM head)",
                         fix="pass --model DIR of a local checkpoint, or leave --canary-every out")
    if timeout > every:
        raise InputError(f"--canary-timeout {timeout:g} s is longer than --canary-every {every:g} s",
                         fix="make the timeout shorter than the period (e.g. --canary-every 5m "
                             "--canary-timeout 60s)")


class Canary:
    """Runs the canary every ``every`` seconds in a daemon thread; :attr:`state` is the latest result."""

    def __init__(self, peers: Callable[[], Sequence[str]], model: ModelRef, *, every: float,
                 timeout: float = 60.0, steps: int = DEFAULT_STEPS, slo: float = DEFAULT_SLO,
                 request_timeout: float = 20.0):
        check_canary(model, every, timeout)
        self.peers, self.model = peers, model
        self.every, self.timeout, self.steps, self.request_timeout = every, timeout, steps, request_timeout
        self.state = CanaryState(model=model.dht_prefix, interval=every, slo=slo)
        self._loaded = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> CanaryState:
        from petals_ops.client import canary, loading
        from petals_ops.swarm.trace import summarize

        started = time.monotonic()
        old = self.state
        runs = dict(old.runs)
        try:
            if self._loaded is None:
                self._loaded = loading.load_swarm_model(
                    self.model, list(self.peers()), max_retries=2, request_timeout=self.request_timeout,
                    use_server_to_server=False)
            run = canary.run_canary(self._loaded, steps=self.steps, timeout=self.timeout)
            result, error = summarize([], run), None
        except Exception as e:  # noqa: BLE001  any failure is a failed run, counted; never fatal
            error = one_line(e, 300)
            result = summarize([], e.run) if isinstance(e, canary.CanaryFailed) else None
            log.warning("canary failed: %s", error)
            self._close()
        now = time.time()
        runs["failure" if error else "success"] += 1
        self.state = replace(
            old, runs=runs, last_run=now, last_success=old.last_success if error else now, ok=error is None,
            steps_per_second=0.0 if error else result.steps_per_second, duration=time.monotonic() - started,
            retries=result.retries if result else 0, hops=tuple(result.hops) if result else (),
            last_error=error)
        return self.state

    def _close(self) -> None:
        if self._loaded is not None:
            with contextlib.suppress(Exception):
                self._loaded.close()
            self._loaded = None

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.run_once()
            except Exception:  # never let the thread die
                log.exception("canary crashed")
            self._stop.wait(max(0.0, self.every - (time.monotonic() - started)))
        self._close()

    def start(self) -> Canary:
        self._thread = threading.Thread(target=self._run, name="petals-exporter-canary", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)


def render_canary(canary: CanaryState | None, own_hosts: dict[str, str]) -> list:
    """The ``petals_canary_*`` families of the latest canary (none when the canary is off). Pure."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    if canary is None:
        return []
    m = [canary.model]

    def gauge(name, doc, labels=("model",)):
        return GaugeMetricFamily(name, doc, labels=list(labels))

    interval = gauge("petals_canary_interval_seconds", "Seconds between two canary runs (--canary-every)")
    interval.add_metric(m, canary.interval)
    slo = gauge("petals_canary_slo_steps_per_second",
                "The canary's steps/s objective (--canary-slo): PetalsCanarySlow fires below it")
    slo.add_metric(m, canary.slo)
    runs = CounterMetricFamily("petals_canary_runs", "Canary runs, by result (success, failure)",
                               labels=["model", "result"])
    for result, count in sorted(canary.runs.items()):
        runs.add_metric(m + [result], count)
    fams = [interval, slo, runs]
    if canary.last_run is None:
        return fams
    up = gauge("petals_canary_up", "1 if the latest canary run generated every step, else 0")
    up.add_metric(m, 1 if canary.ok else 0)
    rate = gauge("petals_canary_steps_per_second",
                 "Greedy decoding steps per second of the latest canary run, end to end (0 if it failed)")
    rate.add_metric(m, canary.steps_per_second or 0.0)
    last = gauge("petals_canary_last_run_timestamp_seconds", "Unix time the latest canary run ended")
    last.add_metric(m, canary.last_run)
    duration = gauge("petals_canary_duration_seconds",
                     "Wall time of the latest canary run (loading the client included)")
    duration.add_metric(m, canary.duration or 0.0)
    retries = gauge("petals_canary_retries",
                    "Requests petals counted as failed and retried in the latest run")
    retries.add_metric(m, canary.retries)
    fams += [up, rate, last, duration, retries]
    if canary.last_success is not None:
        success = gauge("petals_canary_last_success_timestamp_seconds",
                        "Unix time of the latest successful canary run")
        success.add_metric(m, canary.last_success)
        fams.append(success)
    labels = ("model", "peer_id", "host")
    hop = gauge("petals_canary_hop_seconds",
                "Median client-side seconds of the hop's part of a decoding step (latest canary run)", labels)
    network = gauge("petals_canary_hop_network_seconds",
                    "Fastest rpc_info round trip to the hop's server (latest canary run)", labels)
    first = gauge("petals_canary_hop_first_block", "First block the hop ran in the latest canary run", labels)
    for h in canary.hops:
        key = m + [h.peer_id, own_hosts.get(h.peer_id, "")]
        hop.add_metric(key, h.seconds)
        first.add_metric(key, h.start)
        if h.network_seconds is not None:
            network.add_metric(key, h.network_seconds)
    return fams + [hop, network, first]
