"""A bench run directory: ``config.json`` (what the run is), ``records.jsonl`` (one line per finished
question, appended and fsynced at once), ``summary.json``, ``report.md`` and the plot.

Resume: the same command on the same run dir skips the questions that already have a successful
record (questions that ended in an error record are tried again; the last record of an id wins). A run
dir whose config differs is refused once it holds a record; before that it takes the new config. A line
cut short by a crash (no trailing newline) is dropped before appending, so the file only ever holds whole
lines. One bench at a time per run dir (a pid lock file).
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from petals_ops.util import procs, tmpclean
from petals_ops.util.errors import InputError, OpsError
from petals_ops.util.fsutil import write_json_atomic

CONFIG_FILE = "config.json"
RECORDS_FILE = "records.jsonl"
SUMMARY_FILE = "summary.json"
LOCK_FILE = ".lock"


def config_differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    diffs = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += config_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            diffs.append(f"{prefix}{key} {a!r} -> {b!r}")
    return diffs


# Identity keys added after run dirs already existed (dotted paths into config.json). A config written
# before a key existed resumes as before and is given the key then: its old records cannot be checked
# against it (they were made before the pin), everything after is. model.weights_sha256: the checkpoint
# files of a local backend's model (client.models.weights_sha256).
ADDED_LATER = ("model.weights_sha256",)


def _as_old_version(config: dict[str, Any], old: dict[str, Any]) -> dict[str, Any]:
    """``config`` less the ADDED_LATER keys that ``old`` (written before them) lacks."""
    trimmed = json.loads(json.dumps(config))
    for dotted in ADDED_LATER:
        *parents, key = dotted.split(".")
        old_part, new_part = old, trimmed
        for name in parents:
            old_part = old_part.get(name) if isinstance(old_part, dict) else None
            new_part = new_part.get(name) if isinstance(new_part, dict) else None
        if isinstance(new_part, dict) and isinstance(old_part, dict) and key not in old_part:
            new_part.pop(key, None)
    return trimmed


def read_records(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every whole record line of ``records.jsonl`` in file order. A cut-off last line, and any line the
    store cannot use (bad JSON, undecodable bytes, nesting too deep for the parser, not an object with a
    string ``id`` and an ``error`` that is null or a string) is ignored: its question is not done."""
    path = Path(run_dir) / RECORDS_FILE
    if not path.is_file():
        return []
    records = []
    with open(path, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break
            try:
                record = json.loads(line)
            except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
                continue
            if isinstance(record, dict) and isinstance(record.get("id"), str) and \
                    isinstance(record.get("error"), (str, type(None))):
                records.append(record)
    return records


def latest_by_id(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The last record of each question id, successful ones winning over later error records."""
    latest: dict[str, dict[str, Any]] = {}
    for r in records:
        old = latest.get(r["id"])
        if old is None or old.get("error") or not r.get("error"):
            latest[r["id"]] = r
    return latest


def _read_lock(path: Path) -> tuple[int, str]:
    """(pid, what runs there) of a lock file ``PID JOB``; (0, ...) when unreadable. A lock written by an
    older version holds the pid alone: its job is not known."""
    try:
        pid, _, job = path.read_text().strip().partition(" ")
        return int(pid or 0), job.strip() or "process"
    except (OSError, ValueError):
        return 0, "process"


class RunStore:
    job = "bench"  # what the lock messages call the process holding the run dir

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir).expanduser().resolve()
        self._lock = None
        self._fd = None

    @property
    def records_path(self) -> Path:
        return self.run_dir / RECORDS_FILE

    def open(self, config: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """Create or reopen the run dir for ``config``; return the records already there (by id)."""
        self.open_dir(config, started=self.records_path)
        self._repair()
        self._fd = os.open(self.records_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        return latest_by_id(read_records(self.run_dir))

    def open_dir(self, config: dict[str, Any], *, started: Path) -> None:
        """Create or reopen the run dir, take its lock and check ``config`` (see :meth:`check_config`);
        the lock is released if that fails. Shared with the tune run dir (petals_ops.tune.store)."""
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise InputError(f"--run-dir {self.run_dir} is a file", fix="pass a directory")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._acquire()
        tmpclean.remove_run_dir_temps(self.run_dir)  # a killed run's half-written files (locked: ours)
        try:
            self.check_config(config, started=started)
        except BaseException:
            self.close()
            raise

    def check_config(self, config: dict[str, Any], *, started: Path) -> None:
        """Write ``config.json``, or refuse when the one there differs (``started``: a file that shows
        a run began, refused without a config). A run dir where nothing was done yet (``started`` absent
        or empty: a command refused after opening it, a run killed before its first record) takes the
        new config. Shared with the tune run dir (petals_ops.tune.store)."""
        config_path = self.run_dir / CONFIG_FILE
        begun = started.exists() and (not started.is_file() or started.stat().st_size > 0)
        if config_path.is_file():
            try:
                old = json.loads(config_path.read_text())
                if not isinstance(old, dict):
                    raise ValueError("not a JSON object")
            except (ValueError, OSError, RecursionError) as e:
                raise InputError(f"--run-dir {self.run_dir}: {CONFIG_FILE} is unreadable ({e})",
                                 fix="use a new --run-dir") from e
            diffs = config_differences(old, _as_old_version(config, old))
            if not diffs and old != config:  # an older version's run dir: from now on it pins these keys too
                write_json_atomic(config_path, config)
            if diffs and not begun:
                write_json_atomic(config_path, config)
            elif diffs:
                shown = "; ".join(diffs[:3]) + (f"; and {len(diffs) - 3} more" if len(diffs) > 3 else "")
                raise InputError(
                    f"--run-dir {self.run_dir} holds a run with a different config ({shown})",
                    fix="use a new --run-dir, or the same options as that run to resume it",
                )
        else:
            if begun and not config_path.exists():
                raise InputError(f"--run-dir {self.run_dir} has {started.name} but no {CONFIG_FILE}",
                                 fix="use a new --run-dir")
            write_json_atomic(config_path, config)

    def _acquire(self) -> None:
        """A pid lock file (not flock: processes the petals client forks inherit flocks
        and outlive a kill -9).
        """
        path = self.run_dir / LOCK_FILE
        for _ in range(3):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                pid, holder = _read_lock(path)
                if pid and procs.pid_alive(pid):
                    raise OpsError(f"another {holder} (pid {pid}) is running in --run-dir {self.run_dir}",
                                   fix="wait for it, or use another run dir") from None
                self._clear_stale_lock(path, pid)
                continue
            os.write(fd, f"{os.getpid()} {self.job}\n".encode())  # the job: what a refused run is told
            os.close(fd)
            self._lock = path
            return
        raise OpsError(f"cannot take the lock {path}", fix=f"remove it if no {self.job} runs there")

    def _clear_stale_lock(self, path: Path, stale_pid: int) -> None:
        """Move a dead bench's lock away. Renaming (not unlinking) and checking what was moved means two
        benches taking over at once cannot both end up holding the lock."""
        moved = path.with_name(f"{path.name}.stale-{os.getpid()}")
        try:
            os.rename(path, moved)
        except FileNotFoundError:
            return  # another bench took it over first
        moved_pid, holder = _read_lock(moved)
        if moved_pid != stale_pid and moved_pid and procs.pid_alive(moved_pid):
            with contextlib.suppress(FileExistsError):  # we moved a live bench's fresh lock: put it back
                os.link(moved, path)
            moved.unlink()
            raise OpsError(f"another {holder} (pid {moved_pid}) is running in --run-dir {self.run_dir}",
                           fix="wait for it, or use another run dir")
        moved.unlink()

    def _repair(self) -> None:
        """Drop a last line cut short by a crash, so the next append starts on a fresh line."""
        path = self.records_path
        if not path.is_file() or path.stat().st_size == 0:
            return
        with open(path, "rb+") as f:
            data = f.read()
            if not data.endswith(b"\n"):
                f.truncate(data.rfind(b"\n") + 1)
                f.flush()
                os.fsync(f.fileno())

    def append(self, record: dict[str, Any]) -> None:
        """Append one record as a whole line (one write call) and fsync it."""
        line = (json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n").encode()
        written = os.write(self._fd, line)
        if written != len(line):
            raise OpsError(f"short write to {self.records_path}", fix="check free disk space")
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._lock is not None:
            self._lock.unlink(missing_ok=True)
            self._lock = None
