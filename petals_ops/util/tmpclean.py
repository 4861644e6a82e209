"""Files our processes leave in /tmp, removed when a command ends.

hivemind names a unix socket per p2pd daemon and per client (``/tmp/hivemind-p2pd-*.sock``,
``hivemind-p2pclient-*.sock``) and removes them only on an orderly shutdown: a daemon that failed to
start, a client still open when the CLI ends with ``os._exit`` (see petals_ops.cli.main) or a killed
process leave them behind. ``os._exit`` also skips multiprocessing's removal of its ``/tmp/pymp-*``
directory. Other processes (another swarm, another user's client) use the same names, so only sockets
created while the command ran are candidates, and of those only the ones nobody listens on any more or
that this process itself listens on (it is about to end).
"""

from __future__ import annotations

import fnmatch
import glob
import os
import re
import socket
import sys
from contextlib import suppress

SOCKET_GLOB = "/tmp/hivemind-p2p*.sock"


def hivemind_sockets() -> set[str]:
    return set(glob.glob(SOCKET_GLOB))


def socket_paths_of(pids) -> set[str]:
    """Paths of the unix sockets the processes ``pids`` hold open (Linux /proc; empty elsewhere)."""
    inodes = set()
    for pid in pids:
        with suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with suppress(OSError):
                    inodes.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
    try:
        with open("/proc/net/unix") as f:
            rows = [line.split() for line in f.read().splitlines()[1:]]
    except OSError:
        return set()
    return {row[7] for row in rows if len(row) >= 8 and f"socket:[{row[6]}]" in inodes}


def _own_socket_paths() -> set[str]:
    return socket_paths_of(["self"])


def hivemind_sockets_of(pids) -> set[str]:
    """The hivemind sockets of processes we are about to stop: after they die, nobody removes them."""
    return {p for p in socket_paths_of(pids) if fnmatch.fnmatch(p, SOCKET_GLOB)}


def remove_unlistened(paths) -> list[str]:
    """Unlink those of ``paths`` that nobody listens on any more (their processes have been stopped)."""
    removed = []
    for path in sorted(paths):
        if os.path.exists(path) and not _listened_on(path):
            with suppress(OSError):
                os.unlink(path)
                removed.append(path)
    return removed


def _listened_on(path: str) -> bool:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(0.5)
        try:
            s.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            return False
        except OSError:  # a timeout or a permission error: someone may be there, keep it
            return True
    return True


def remove_stale_sockets(before: set[str], *, exiting: bool = False) -> list[str]:
    """Unlink hivemind sockets that appeared since ``before`` and that nobody listens on (with ``exiting``:
    also the ones this process listens on). Returns what was removed."""
    new = hivemind_sockets() - before
    own = _own_socket_paths() if exiting and new else set()
    removed = []
    for path in sorted(new):
        if path in own or not _listened_on(path):
            with suppress(OSError):
                os.unlink(path)
                removed.append(path)
    return removed


def _ours_and_old(path: str, min_age: float) -> bool:
    import time

    try:
        st = os.lstat(path)
    except OSError:
        return False
    return st.st_uid == os.getuid() and time.time() - st.st_mtime >= min_age


def remove_dead_sockets(min_age: float = 60.0) -> list[str]:
    """Unlink hivemind sockets in /tmp that are ours (our uid), older than ``min_age`` seconds and that
    nobody listens on: what a killed command (kill -9 of a bench or tune) left. Run as each command starts,
    so the litter of one killed run is gone at the next."""
    removed = []
    for path in sorted(hivemind_sockets()):
        if not _ours_and_old(path, min_age) or _listened_on(path):
            continue
        with suppress(OSError):
            os.unlink(path)
            removed.append(path)
    return removed


def _listening_paths() -> set[str] | None:
    """Paths of the unix sockets someone listens on (Linux /proc/net/unix, flag __SO_ACCEPTCON), read
    without connecting: a connection to a live multiprocessing listener makes its server thread print a
    traceback. None where /proc cannot be read."""
    try:
        with open("/proc/net/unix") as f:
            rows = [line.split() for line in f.read().splitlines()[1:]]
    except OSError:
        return None
    return {row[7] for row in rows if len(row) >= 8 and int(row[3], 16) & 0x10000}


def remove_dead_multiprocessing_dirs(min_age: float = 60.0) -> list[str]:
    """Remove multiprocessing's ``pymp-*`` dirs that are ours, older than ``min_age`` seconds and hold
    only sockets, none of which anybody listens on: what a killed process (kill -9 of a bench, a sweep,
    watch) left, since only its atexit hook removes the dir. Run beside :func:`remove_dead_sockets`."""
    import shutil
    import stat
    import tempfile

    listening = _listening_paths()
    if listening is None:  # no /proc: cannot tell, keep everything
        return []
    removed = []
    for path in sorted(glob.glob(os.path.join(tempfile.gettempdir(), "pymp-*"))):
        if not _ours_and_old(path, min_age):
            continue
        try:
            entries = [os.path.join(path, name) for name in os.listdir(path)]
            # an empty dir may belong to a live process that has not bound its listener yet: keep it
            if not entries or not all(stat.S_ISSOCK(os.lstat(e).st_mode) and e not in listening
                                      for e in entries):
                continue
        except OSError:
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def swarm_tempdir(run_dir: str) -> str:
    """The TMPDIR of a local swarm's processes (their ``pymp-*`` dirs go there, and ``down`` removes it:
    a process stopped by a signal never removes its own). Short and under /tmp, named from the run dir."""
    import hashlib
    import tempfile

    digest = hashlib.sha256(os.path.abspath(run_dir).encode()).hexdigest()[:12]
    return os.path.join(tempfile.gettempdir(), f"petals-ops-{os.getuid()}-swarm-{digest}")


def remove_swarm_tempdir(run_dir: str) -> None:
    """Remove :func:`swarm_tempdir` of ``run_dir`` if it is a real directory of ours (never a symlink)."""
    import shutil

    path = swarm_tempdir(run_dir)
    try:
        st = os.lstat(path)
    except OSError:
        return
    import stat

    if stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid():
        shutil.rmtree(path, ignore_errors=True)


# the temp files our atomic writes make next to their target (tempfile.mkstemp: 8 random characters)
_RUN_DIR_TEMP = re.compile(r"^\.[^/]+\.[a-z0-9_]{8}\.(tmp|png)$")


def remove_run_dir_temps(run_dir) -> list[str]:
    """Unlink the temp files of atomic writes a killed run left in its run dir (``.loss.png.*.png``,
    ``.config.json.*.tmp``...). Call only with the run dir's lock held: then no writer is running."""
    removed = []
    with suppress(OSError):
        for name in os.listdir(run_dir):
            path = os.path.join(run_dir, name)
            if _RUN_DIR_TEMP.match(name) and os.path.isfile(path) and not os.path.islink(path):
                with suppress(OSError):
                    os.unlink(path)
                    removed.append(path)
    return removed


def remove_multiprocessing_tempdir() -> None:
    """multiprocessing's ``/tmp/pymp-*`` of this process, which its atexit hook (skipped by os._exit)
    removes."""
    import multiprocessing
    import shutil

    # set by multiprocessing.util.get_temp_dir
    tempdir = multiprocessing.current_process()._config.get("tempdir")
    if tempdir and os.path.basename(tempdir).startswith("pymp-"):
        shutil.rmtree(tempdir, ignore_errors=True)


def exit_now(code: int) -> None:
    """End this process at once, after what ``os._exit`` skips that matters here: multiprocessing's
    ``pymp-*`` dir and the output buffers. Interpreter teardown with the petals client loaded can hang for
    ever (a petals/hivemind ``__del__`` waits on an event loop that is already stopped), so every process
    that loaded it (the CLI, the test session, the lab's and benchmarks' scripts) ends through here."""
    remove_multiprocessing_tempdir()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
