"""Small file helpers: atomic writes so a crash never leaves a half-written state file."""

import errno
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any


def write_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temp file and rename, so readers see old or new, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as f:
        return json.load(f)


def tail_lines(path: str | os.PathLike, n: int = 20) -> list[str]:
    """The last ``n`` lines of a (log) file, or [] if it does not exist."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            data = f.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return []
    return data.splitlines()[-n:]


def why_not_a_file(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be read as a regular file, said as it is ('does not exist', 'is a symlink loop',
    'is a FIFO (named pipe)', 'is a character device', ...), or None when it is a regular file. For input
    errors: a FIFO or /dev/null reported as "does not exist" sends the user looking for the wrong fix."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "is a broken symlink" if os.path.islink(path) else "does not exist"
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "is a symlink loop"
        if e.errno == errno.ENOTDIR:
            return "does not exist (a part of its path is a file)"
        return f"cannot be reached ({e.strerror or e})"
    if stat.S_ISREG(mode):
        return None
    for test, what in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return f"is {what}{NOT_REGULAR}"
    return "is not a regular file"


NOT_REGULAR = ", not a regular file"  # how why_not_a_file ends for a path that exists as something else
