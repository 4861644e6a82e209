"""Run one function per host in parallel; one host's failure never hides or stops the others."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from petals_ops.util.errors import EXIT_FAILURE, EXIT_OK, EXIT_PARTIAL, OpsError


@dataclass
class HostOutcome:
    host: str
    value: Any = None
    error: str | None = None  # one line; set when the host failed

    @property
    def ok(self) -> bool:
        return self.error is None


def per_host(hosts: Sequence[str], fn: Callable[[str], Any], *,
             parallel: int | None = None) -> list[HostOutcome]:
    """``fn(host)`` for every host (threads, ``parallel`` at a time; default all); results in host order."""

    def one(host: str) -> HostOutcome:
        try:
            return HostOutcome(host, value=fn(host))
        except OpsError as e:
            return HostOutcome(host, error=e.one_line())
        except Exception as e:  # an unexpected error on one host must not take the others down
            return HostOutcome(host, error=f"{host}: {type(e).__name__}: {' '.join(str(e).split())[:200]}")

    if not hosts:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(parallel or len(hosts), len(hosts)))) as pool:
        return list(pool.map(one, hosts))


def exit_code(oks: Sequence[bool]) -> int:
    if all(oks):
        return EXIT_OK
    return EXIT_PARTIAL if any(oks) else EXIT_FAILURE
