"""Everything a command shows a person, and the exit code it ends with: one object, used by every command.

Commands stay thin: they call the library, then hand what came back to :data:`terminal`.

- ``terminal.json(data)``: machine output on stdout (``--output json``).
- ``terminal.table(headers, rows, title=...)``: a table for people on stdout.
- ``terminal.echo(text)``: a result line on stdout; ``terminal.info(text)``: a status line on stderr.
- ``terminal.show(renderable)``: any rich renderable (the block map) on stdout, at the tables' width.
- ``with terminal.progress(label, fields=(...)) as bar: bar.update(done, total, **values)``: a rich bar on
  stderr when it is a terminal; plain lines otherwise (logs, CI, pipes), so nothing depends on a TTY.
- ``terminal.fail(error)``: print an :class:`OpsError` as one ``error: ...`` line, return its exit code.

Streams are looked up at each call (``sys.stdout`` at that moment), so a test harness that swaps them sees
the output; rich is imported on first use, keeping ``petals-ops --help`` fast.
"""

from __future__ import annotations

import contextlib
import json as _json
import sys
from typing import Any, Iterable, Iterator, Sequence, TextIO

from petals_ops.util.errors import OpsError, redact
from petals_ops.util.safe_text import inert_text, printable

# Width of tables (and the block map) when stdout is not a terminal: wide enough that logs and tests read
# whole rows rather than rich's 80-column wrap.
PIPE_WIDTH = 200


class Bar:
    """One progress display; see :meth:`Terminal.progress`."""

    def __init__(self, terminal: Terminal, label: str, fields: Sequence[str], total: int | None,
                 completed: int, every: int, eta: bool):
        self.label, self.fields, self.every = label, tuple(fields), max(1, every)
        self.total, self.done = total, completed
        self._terminal = terminal
        self._rich = None
        self._last_line = None
        console = terminal._console(terminal._err())
        if console.is_terminal:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            text = "  ".join(f"{name} {{task.fields[f{i}]}}" for i, name in enumerate(self.fields))
            columns = [TextColumn(label), BarColumn(), MofNCompleteColumn()]
            columns += [TextColumn(text)] if text else []
            columns += [TextColumn("ETA"), TimeRemainingColumn()] if eta else [TimeElapsedColumn()]
            self._rich = Progress(*columns, console=console, transient=False)
            self._task = self._rich.add_task(label, total=total, completed=completed,
                                             **{f"f{i}": "-" for i in range(len(self.fields))})

    def update(self, done: int, total: int | None = None, *, line: str | None = None, **values: Any) -> None:
        """``done`` of ``total`` so far; ``values`` fill the named ``fields`` (the latest shown).

        Off a terminal one line goes to stderr when ``done`` moved and is the first, the last or a multiple
        of ``every``: ``line`` when given (the caller's own wording), else ``label: done/total, field value``.
        """
        self.done = done
        if total is not None:
            self.total = total
        if self._rich is not None:
            shown = {f"f{i}": str(values[name]) for i, name in enumerate(self.fields) if name in values}
            self._rich.update(self._task, completed=done, total=self.total, **shown)
            return
        if done == self._last_line or not (done <= 1 or done % self.every == 0 or done == self.total):
            return
        self._last_line = done
        if line is None:
            line = f"{self.label}: {done}/{self.total if self.total is not None else '?'}" + "".join(
                f", {name} {values[name]}" for name in self.fields if name in values)
        self._terminal.info(line)


class Terminal:
    """What the CLI prints, where, and how a command ends (one instance: :data:`terminal`)."""

    def __init__(self, stdout: TextIO | None = None, stderr: TextIO | None = None,
                 force_terminal: bool | None = None):
        self._stdout, self._stderr, self._force = stdout, stderr, force_terminal

    def _out(self) -> TextIO:
        return self._stdout or sys.stdout

    def _err(self) -> TextIO:
        return self._stderr or sys.stderr

    def _console(self, file: TextIO):
        from rich.console import Console

        tty = self._force if self._force is not None else file.isatty()
        return Console(file=file, force_terminal=self._force, width=None if tty else PIPE_WIDTH)

    def json(self, data: Any) -> None:
        """``data`` as indented, key-sorted JSON on stdout (for scripts)."""
        self._write(self._out(), _json.dumps(data, indent=2, sort_keys=True, default=str))

    def table(self, headers: Sequence[Any], rows: Iterable[Sequence[Any]], *,
              title: str | None = None) -> None:
        """A table on stdout; ``None`` cells are empty. Cells often hold untrusted text (announced server
        names, remote hosts' output, model text): every cell, header and title is plain text, never rich
        markup, with control characters replaced (:mod:`petals_ops.util.safe_text`)."""
        from rich.table import Table

        table = Table(title=None if title is None else inert_text(title), show_lines=False)
        for h in headers:
            table.add_column(inert_text(h))
        for row in rows:
            table.add_row(*[inert_text(v, keep_newlines=True) for v in row])
        self.show(table)

    def show(self, renderable: Any, *, style: str | None = None) -> None:
        """Any rich renderable (or markup-free text with a ``style``) on stdout."""
        self._console(self._out()).print(renderable, style=style)

    def echo(self, text: str = "") -> None:
        """A result line for people on stdout, secrets redacted, control characters replaced."""
        self._write(self._out(), redact(printable(text, keep_newlines=True)))

    def info(self, text: str) -> None:
        """A status or progress line on stderr, so stdout stays machine-readable; secrets redacted, control
        characters replaced."""
        self._write(self._err(), redact(printable(text, keep_newlines=True)))

    @contextlib.contextmanager
    def progress(self, label: str, *, fields: Sequence[str] = (), total: int | None = None,
                 completed: int = 0, every: int = 1, eta: bool = True) -> Iterator[Bar]:
        """A progress display on stderr for the length of the ``with`` block.

        ``fields``: names of values shown after the count (``bar.update(..., loss="0.31")``); ``eta``: time
        left (else time elapsed); ``every``: off a terminal, a line every that many steps.
        """
        bar = Bar(self, label, fields, total, completed, every, eta)
        if bar._rich is not None:
            bar._rich.start()
        try:
            yield bar
        finally:
            if bar._rich is not None:
                bar._rich.stop()

    def fail(self, error: OpsError) -> int:
        """Print ``error`` as its one ``error: ...`` line on stderr; return the exit code it maps to."""
        self.info(f"error: {error.one_line()}")
        return error.exit_code

    @staticmethod
    def _write(file: TextIO, text: str) -> None:
        import click

        click.echo(text, file=file)


terminal = Terminal()
