"""Retrying a unit of work through the swarm (a bench question, a training step): one policy for all.

The petals client retries a failed request itself (``ClientOptions.client_retries``) and re-routes; once
it gives up, the whole unit is retried here, in a fresh session (mid-session recovery in petals is
unreliable, petals#587). After each failure: garbage is collected from this thread (the petals client's
``__del__`` hang, see :mod:`petals_ops.client.backends`), the caller may refuse an error no retry can fix,
the peers the error names are banned (petals keeps routing to a dead server until its DHT record
expires), and the next attempt waits ``backoff * 2**(attempt - 1)`` seconds, at most :data:`MAX_DELAY`
(interruptible). After ``retries`` retries :class:`RetriesExhausted` carries every failure.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from petals_ops.client.decoding import Cancelled
from petals_ops.util.errors import InputError, one_line

MAX_DELAY = 30.0  # seconds: the backoff stops doubling here
ERROR_CHARS = 300  # of a failure's message kept in records and summaries

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 2  # retries after the first attempt
    backoff: float = 1.0  # seconds before the first retry; doubles each time

    def validate(self) -> RetryPolicy:
        if self.retries < 0:
            raise InputError(f"--retries {self.retries} must be >= 0", fix="use --retries 2")
        if not (math.isfinite(self.backoff) and self.backoff >= 0):
            raise InputError(f"--backoff {self.backoff} must be a number >= 0 seconds", fix="use --backoff 1")
        return self

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based)."""
        return min(MAX_DELAY, self.backoff * 2 ** (attempt - 1))

    def wait(self, attempt: int, cancel: threading.Event | None = None) -> None:
        if cancel is None:
            time.sleep(self.delay(attempt))
        elif cancel.wait(self.delay(attempt)):
            raise Cancelled()


@dataclass
class Failure:
    """One failed attempt: the error, and the peers banned because of it."""

    attempt: int
    error: BaseException
    banned: list[str] = field(default_factory=list)
    ban_error: str | None = None  # banning itself failed (best effort: the retry still happens)

    @property
    def text(self) -> str:
        return f"{type(self.error).__name__}: {one_line(self.error, ERROR_CHARS)}"

    def describe(self) -> str:
        """The text with the peers it made us avoid, as records keep it."""
        avoided = self.banned or ([f"(could not ban: {self.ban_error})"] if self.ban_error else [])
        return self.text + (f" [avoiding {', '.join(avoided)}]" if avoided else "")


class RetriesExhausted(Exception):
    def __init__(self, failures: list[Failure]):
        super().__init__(failures[-1].text if failures else "failed")
        self.failures = failures


def run_with_retries(work: Callable[[int], T], policy: RetryPolicy, backend, *,
                     cancel: threading.Event | None = None,
                     refuse: Callable[[Exception], None] | None = None) -> tuple[T, list[Failure]]:
    """``work(attempt)`` until it returns: its result and the failures before it.

    ``backend``: a :class:`petals_ops.client.backends.Backend` (collects garbage, bans failed peers).
    ``refuse(error)``: raises for an error no retry can fix (it is raised as is, nothing is retried).
    :class:`Cancelled` passes straight through; ``cancel`` also interrupts the backoff wait."""
    failures: list[Failure] = []
    for attempt in range(1, policy.retries + 2):
        try:
            return work(attempt), failures
        except Cancelled:
            raise
        except Exception as error:  # noqa: BLE001 (a swarm failure, a timeout: retry the unit afresh)
            backend.collect()
            if refuse is not None:
                refuse(error)
            failure = Failure(attempt, error)
            try:
                failure.banned = backend.after_failure(error)
            except Exception as ban_error:  # noqa: BLE001 (best effort; the retry still happens)
                failure.ban_error = str(ban_error)
            failures.append(failure)
            if attempt <= policy.retries:
                policy.wait(attempt, cancel)
    raise RetriesExhausted(failures)
