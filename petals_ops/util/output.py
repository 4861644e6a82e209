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
# for a host that answers without SSH, urllib3 each retry: with no handler configured those records reach
# the terminal through logging's last-resort handler. --debug shows them.
LIBRARY_LOGGERS = ("paramiko", "urllib3", "docker", "fabric", "invoke")


def quiet_library_logging(debug: bool = False) -> None:
    """Keep library log records (tracebacks included) off the user's terminal unless ``debug``."""
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING if debug else logging.CRITICAL + 1)


OUTPUT_OPTION = click.option(
    "--output",
    "-o",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="table for people, json (on stdout) for scripts.",
)
