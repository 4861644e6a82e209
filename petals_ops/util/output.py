"""Output conventions: JSON to stdout for machines, tables for people, progress and logs to stderr."""

import json
import logging
import sys
from typing import Any, Iterable, Sequence

import click

from petals_ops.util.safe_text import inert_text, printable


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def render_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], title: str | None = None) -> None:
    """Print a table to stdout with rich (imported here so --help stays fast).

    Cells often hold untrusted text (announced server names, remote hosts' output, model text): every
    cell, header and title is shown as plain text, never as rich markup, with control characters
    replaced (:mod:`petals_ops.util.safe_text`)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=inert_text(title) if title is not None else None, show_lines=False)
    for h in headers:
        table.add_column(inert_text(h))
    for row in rows:
        table.add_row(*[inert_text(v, keep_newlines=True) for v in row])
    Console(file=sys.stdout, width=200 if not sys.stdout.isatty() else None).print(table)


def info(message: str) -> None:
    """A progress or status line for people, on stderr so stdout stays machine-readable."""
    click.echo(printable(message, keep_newlines=True), err=True)


# Libraries whose failures we report ourselves, in one line. paramiko logs a whole traceback at ERROR
# for a host that answers without SSH, urllib3 each retry; petals and hivemind log [WARN] lines for every
# retry of a frozen server (and petals' import puts hivemind's handler on the root logger, so any library's
# record would print). --debug shows them.
LIBRARY_LOGGERS = ("paramiko", "urllib3", "docker", "fabric", "invoke", "hivemind", "petals", "asyncio",
                   "transformers", "torch", "huggingface_hub", "filelock", "py.warnings")
_QUIET: dict[str, bool] = {}  # {"debug": ...} once the CLI has chosen


class _OursOnly(logging.Filter):
    """On the handlers a library installs (and logging's last resort): only petals-ops' own records."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name == "petals_ops" or record.name.startswith("petals_ops.")


_OURS_ONLY = _OursOnly()


def quiet_library_logging(debug: bool = False) -> None:
    """Keep library log records and warnings (tracebacks included) off the user's terminal unless
    ``debug``. Imports that configure logging (petals) call :func:`reapply_library_logging` after."""
    _QUIET["debug"] = debug
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(logging.WARNING if debug else logging.CRITICAL + 1)
    logging.captureWarnings(not debug)  # Python warnings (torch's FutureWarnings) go through py.warnings
    for handler in [*logging.getLogger().handlers, logging.lastResort]:
        if handler is None:
            continue
        if debug:
            handler.removeFilter(_OURS_ONLY)
        elif _OURS_ONLY not in handler.filters:
            handler.addFilter(_OURS_ONLY)


def reapply_library_logging() -> None:
    """Apply the CLI's choice again after an import reset levels and handlers (petals' import puts
    hivemind's handler on the root logger at INFO); nothing when no command chose (a server process)."""
    if "debug" in _QUIET:
        quiet_library_logging(_QUIET["debug"])


def raise_log_level(name: str, level: int = logging.WARNING) -> None:
    """At least ``level`` for logger ``name``, never lower than the CLI's quiet level."""
    logger = logging.getLogger(name)
    logger.setLevel(max(logger.level, level))


OUTPUT_OPTION = click.option(
    "--output",
    "-o",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="table for people, json (on stdout) for scripts.",
)
