"""The one result shape of every fleet command: one :class:`HostResult` per host, with typed rows.

Each command returns one HostResult per host (in host order): whether the host is ok, what changed on it
(or would, in a dry run), its error line, and its rows: one per server container (:class:`ServerRow`),
check (:class:`CheckRow`), provision step (:class:`StepRow`) or container status (:class:`ContainerRow`).
:func:`exit_code` and :func:`failure` turn them into the exit code (0 all hosts ok, 3 some failed, 1 all
failed) and the one-line summary. Printing them is the CLI's job (``petals_ops/cli/fleet_cmds.py``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from petals_ops.util.errors import EXIT_FAILURE, EXIT_OK, EXIT_PARTIAL, OpsError, PartialFailure


@dataclass
class ServerRow:
    """A server container (up, restart, down): what was done to it and, after a wait, its DHT state."""

    container: str
    action: str  # created | recreated | started | unchanged | restarted | removed | would-... | nothing
    peer_id: str | None = None
    blocks: str | None = None
    port: int | None = None
    dht_state: str | None = None  # ONLINE / JOINING / OFFLINE / absent, after the wait
    error: str | None = None
    log_tail: list[str] = field(default_factory=list)


@dataclass
class CheckRow:
    """One check of ``hosts check``, with the fact it read where there is one (os, gpus, free disk)."""

    check: str
    ok: bool
    detail: str
    fact: Any = None


@dataclass
class StepRow:
    """One provision step: ok | changed | would-change | skipped | failed | manual, and its commands."""

    step: str
    status: str
    detail: str
    commands: list[str] = field(default_factory=list)
    ok: bool = True

    def __post_init__(self):
        self.ok = self.status not in ("failed", "manual")


@dataclass
class ContainerRow:
    """A server container as ``status`` sees it, joined with the DHT's record of its peer id."""

    container: str
    running: bool
    restart_count: int
    exit_code: int | None
    peer_id: str | None
    dht_state: str | None = None
    dht_blocks: str | None = None
    throughput: float | None = None
    ok: bool = True
    error: str | None = None


@dataclass
class HostResult:
    host: str
    ok: bool = True
    changed: list[str] = field(default_factory=list)  # one line per change (dry run: what would change)
    error: str | None = None  # one line; set when the host failed
    rows: list = field(default_factory=list)  # ServerRow | CheckRow | StepRow | ContainerRow

    @classmethod
    def failed(cls, host: str, error: str, rows: list | None = None) -> HostResult:
        return cls(host, ok=False, error=error, rows=rows or [])

    def fail(self, error: str) -> None:
        """Mark the host failed (the first error names it)."""
        self.ok = False
        self.error = self.error or error

    def to_dict(self) -> dict:
        return asdict(self)


def exit_code(results: Sequence[HostResult]) -> int:
    if all(r.ok for r in results):
        return EXIT_OK
    return EXIT_PARTIAL if any(r.ok for r in results) else EXIT_FAILURE


def failure(results: Sequence[HostResult], what: str) -> OpsError | None:
    """The error a command ends with (None when every host is ok): partial (exit 3) or total (exit 1)."""
    bad = [r for r in results if not r.ok]
    if not bad:
        return None
    summary = f"{what} failed on {len(bad)} of {len(results)} host(s): " + "; ".join(
        f"{r.host} ({r.error or 'failed'})" for r in bad)
    if len(bad) < len(results):
        return PartialFailure(summary, fix="the other hosts are done; fix the failing ones and run it again")
    return OpsError(summary, fix="fix the hosts and run it again")
