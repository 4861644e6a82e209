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
from typing import Sequence


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


def group_is_ours(pgid: int, leader_start_time: int | None) -> bool:
    """Is process group ``pgid`` still the one we started (leader started at ``leader_start_time``)?

    A live leader must have the recorded start time (else the pid was reused after a reboot or crash);
    a dead leader with live members is ours, since the kernel never reuses a pgid that is still in use.
    """
    if pid_alive(pgid):
        return leader_start_time is None or start_time(pgid) == leader_start_time
    return bool(group_members(pgid))


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def stop_group(pgid: int, *, grace: float = 15.0, sig: int = signal.SIGTERM) -> bool:
    """Send ``sig`` to the group, wait up to ``grace`` seconds, then SIGKILL what is left.

    Returns True when no member is left. SIGTERM lets a Petals server announce itself OFFLINE (a frozen
    group is continued right after the signal, so that it acts on it).
    """
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
