"""A progress display on stderr for long waits (rich, imported lazily)."""

import contextlib
import sys


@contextlib.contextmanager
def block_progress(description: str):
    """Yields ``update(done, total, _now)`` for the ``on_progress`` callbacks of the library."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(file=sys.stderr)
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=False, disable=not console.is_terminal,
    ) as progress:
        task = progress.add_task(description, total=None)
        last = {"done": -1}

        def update(done, total, _now=None):
            progress.update(task, completed=done, total=total)
            if not console.is_terminal and done != last["done"]:  # plain lines when not on a terminal
                print(f"{description}: {done}/{total}", file=sys.stderr, flush=True)
            last["done"] = done

        yield update
