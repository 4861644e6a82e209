"""Wait on the swarm's DHT: one polling loop for everything that starts servers and waits until they serve.

``petals-ops up`` and ``restart`` (fleet servers ONLINE for their blocks) and the local lab swarm (every
block covered) both start servers, then poll the DHT until a condition holds, give up at a deadline, and
stop early when a server process or container dies. The loop is here, once; each caller supplies its
condition as a function of the snapshot.
"""

from __future__ import annotations

import time
from typing import Callable, Collection, Sequence

from petals_ops.client.models import ModelRef
from petals_ops.swarm.health import SwarmProbe, SwarmSnapshot
from petals_ops.swarm.reachability import DEFAULT_TIMEOUT, ReachabilityProbe
from petals_ops.util.errors import OpsError

# step(snapshot or None, the snapshot's error line or None) -> True when the wait is over
StepFn = Callable[["SwarmSnapshot | None", "str | None"], bool]


def wait_on_swarm(initial_peers: Sequence[str], model: ModelRef, step: StepFn, *, timeout: float,
                  poll: float = 2.0, tolerate_errors: bool = True, probe: bool = False,
                  probe_timeout: float = DEFAULT_TIMEOUT,
                  probe_only: Callable[[], Collection[str]] | None = None) -> bool:
    """Snapshot the swarm every ``poll`` seconds and pass it to ``step`` until ``step`` returns True (the
    result is then True) or ``timeout`` seconds have passed (False, after one last step).

    One DHT node is started for the whole wait (an :class:`OpsError` when the initial peers cannot be
    reached) and always shut down. A snapshot that fails mid-wait is passed as ``None`` with its error line
    (``tolerate_errors``; otherwise it is raised). ``step`` may raise to stop the wait (a dead server).
    ``probe``: each snapshot's ONLINE servers are probed (:mod:`petals_ops.swarm.reachability`), so
    ``step`` can tell a server that answers from one that only announces itself (``reachable is False``);
    ``probe_only()``: the peers worth probing at this poll (default: every ONLINE server).
    """
    deadline = time.monotonic() + timeout
    with SwarmProbe(initial_peers, model) as swarm_probe:
        prober = ReachabilityProbe(swarm_probe, timeout=probe_timeout, ttl=0) if probe else None
        while True:
            try:
                snap, error = swarm_probe.snapshot(), None
                if prober is not None:
                    only = set(probe_only()) if probe_only is not None else None
                    snap = prober.apply([snap], only=only, bootstrap=False)[0]
            except OpsError as e:
                if not tolerate_errors:
                    raise
                snap, error = None, e.one_line()
            if step(snap, error):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(poll)
