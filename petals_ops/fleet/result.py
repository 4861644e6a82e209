"""The one result shape of every fleet command, and the one function that renders it and sets the exit code.

Each command returns one :class:`HostResult` per host (in host order): whether the host is ok, what
changed on it (or would, in a dry run), its error line, and its rows (one per container, check or step).
:func:`report` prints them (a table for people, JSON for scripts) and raises the failure that maps to
the exit code: 0 all hosts ok, 3 some failed, 1 all failed. A new command adds no failure summary.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from petals_ops.util.errors import EXIT_OK, EXIT_PARTIAL, OpsError, PartialFailure, redact
from petals_ops.fleet.parallel import exit_code


@dataclass
class HostResult:
    host: str
    ok: bool = True
    changed: list[str] = field(default_factory=list)  # one line per change (dry run: what would change)
    error: str | None = None  # one line; set when the host failed
    rows: list[dict] = field(default_factory=list)

    @classmethod
    def failed(cls, host: str, error: str, rows: list[dict] | None = None) -> HostResult:
        return cls(host, ok=False, error=error, rows=rows or [])

    def to_dict(self) -> dict:
        return asdict(self)


def results_exit_code(results: Sequence[HostResult]) -> int:
    return exit_code([r.ok for r in results])


def report(results: Sequence[HostResult], what: str, columns: Sequence[str], *, output: str = "table",
           dry_run: bool = False, title: str | None = None, extra: dict[str, Any] | None = None,
           notes: Sequence[str] = ()) -> None:
    """Print ``results`` and raise the error their exit code needs (returns only when every host is ok).

    ``columns``: the row keys shown in the table, after ``host``; the table ends with result and detail.
    JSON: ``{command, dry_run, ok, exit_code, hosts: [HostResult...], **extra}`` on stdout.
    """
    import click

    from petals_ops.util.output import emit_json, render_table

    code = results_exit_code(results)
    if output == "json":
        emit_json({"command": what, "dry_run": dry_run, "ok": code == EXIT_OK, "exit_code": code,
                   "hosts": [r.to_dict() for r in results], **(extra or {})})
    else:
        table = []
        for r in results:
            rows = list(r.rows)
            if r.error and not any(row.get("error") or row.get("ok") is False for row in rows):
                rows.append({"error": r.error})  # a failure no row shows gets a row of its own
            for row in rows:
                bad = bool(row.get("error")) or row.get("ok") is False
                detail = row.get("error") or row.get("detail") or ""
                if row.get("log_tail"):
                    detail += "\n" + "\n".join(row["log_tail"][-8:])
                cells = [_cell(row.get(c)) for c in columns]
                table.append([r.host, *cells, "FAILED" if bad else "ok", detail])
        suffix = " (dry run: nothing changed)" if dry_run else ""
        render_table(["host", *columns, "result", "detail"], table, title=(title or what) + suffix)
        for line in notes:
            click.echo(redact(line))
    if code == EXIT_OK:
        return
    bad = [r for r in results if not r.ok]
    summary = f"{what} failed on {len(bad)} of {len(results)} host(s): " + "; ".join(
        f"{r.host} ({r.error or 'failed'})" for r in bad)
    if code == EXIT_PARTIAL:
        raise PartialFailure(summary, fix="the other hosts are done; fix the failing ones and run it again")
    raise OpsError(summary, fix="fix the hosts and run it again")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)
