"""Process groups for the processes petals-ops starts.

Each DHT or server runs in its own session (and so its own process group): petals' handler processes
and the ``p2pd`` daemons it spawns inherit the group, so stopping the group stops all of them.
Killing only the parent process would leave ``p2pd`` behind (a known Petals gotcha).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable, Sequence


def spawn(cmd: Sequence[str], *, log_path: str | Path, cwd: str | Path,
          env: dict | None = None) -> subprocess.Popen:
    """Start ``cmd`` in a new session with stdout and stderr appended to ``log_path``."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            list(cmd), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=str(cwd), env=env, start_new_session=True,
        )


def _proc_fields(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state is [0]), or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return raw[raw.rindex(")") + 2:].split()


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, process group id) of ``pid`` from /proc, or None if it is gone."""
    fields = _proc_fields(pid)
    return None if fields is None else (fields[0], int(fields[2]))


def start_time(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot): with the pid it identifies a process across pid
    reuse."""
    fields = _proc_fields(pid)
    return None if fields is None else int(fields[19])


def pid_alive(pid: int) -> bool:
    stat = _proc_stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of the process group ``pgid``, read from the process table."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _proc_stat(int(entry))
            if stat and stat[1] == pgid and stat[0] not in ("Z", "X"):
                members.append(int(entry))
    return members


def cmdline(pid: int) -> list[str] | None:
    """The argv of ``pid`` from /proc (None if it is gone or unreadable)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [a.decode("utf-8", "replace") for a in raw.split(b"\0")[:-1]]


def may_signal_group(pgid: object) -> bool:
    """Never 0 (our own group), 1 (init's), a negative number, our own group or our own pid."""
    return (isinstance(pgid, int) and not isinstance(pgid, bool) and pgid > 1
            and pgid not in (os.getpgrp(), os.getpid()))


def group_is_ours(pgid: int, leader_start_time: int | None,
                  looks_ours: Callable[[list[str]], bool] = lambda argv: True) -> bool:
    """Is process group ``pgid`` still the one we started, its leader started at ``leader_start_time``?

    The identity is verified, never assumed: the live leader must have exactly that start time (else the
    pid was reused after a reboot or crash) and a command line ``looks_ours`` accepts. A dead leader's
    group is ours when it still has members (the kernel never reuses a pgid in use) and every member
    started after the leader and passes ``looks_ours`` (its workers and p2pd daemons). An unknown start
    time, pgid 0 or 1, and our own group are never ours (see :func:`may_signal_group`).
    """
    if not may_signal_group(pgid) or not isinstance(leader_start_time, int):
        return False
    if pid_alive(pgid):
        argv = cmdline(pgid)
        return start_time(pgid) == leader_start_time and argv is not None and looks_ours(argv)
    members = group_members(pgid)
    for pid in members:
        started, argv = start_time(pid), cmdline(pid)
        if started is None or started < leader_start_time or argv is None or not looks_ours(argv):
            return False
    return bool(members)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def stop_group(pgid: int, *, grace: float = 15.0, sig: int = signal.SIGTERM) -> bool:
    """Send ``sig`` to the group, wait up to ``grace`` seconds, then SIGKILL what is left.

    Callers check :func:`group_is_ours` first; ``pgid`` 0, 1 or our own group raise ValueError here.
    Returns True when no member is left. SIGTERM lets a Petals server announce itself OFFLINE (a frozen
    group is continued right after the signal, so that it acts on it).
    """
    if not may_signal_group(pgid):
        raise ValueError(f"refusing to signal process group {pgid!r}")
    for s, wait in ((sig, grace), (signal.SIGKILL, 5.0)):
        members = group_members(pgid)
        if not members:
            return True
        try:
            os.killpg(pgid, s)
            os.killpg(pgid, signal.SIGCONT)  # a stopped (frozen) member acts on SIGTERM only once continued
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            for pid in members:
                _reap(pid)
            if not group_members(pgid):
                return True
            time.sleep(0.2)
    return not group_members(pgid)
