"""The watch journal: one JSON object per line, appended and fsynced, never rewritten.

Records (``type``):

- ``start``: a watch process began (pid, inventory);
- ``reading``: a reading that led to an action: each server's verdict that was not ok, the uncovered
  blocks, the unread hosts;
- ``action``: an intent (id, kind, key, host, container, blocks, reason, the reading's id), written and
  fsynced *before* the action is applied;
- ``outcome``: the action's result (ok | failed | interrupted, a one-line detail; for take_spare the
  container started).

:func:`replay` rebuilds the :class:`~petals_ops.fleet.watch.model.WatchState` from it: ladders, the hourly
counts, backoff, spares held, given-up servers, the action counts for the metrics. An intent with no
outcome is an action a killed watch may or may not have completed: it is recorded as ``interrupted`` and
counts as an attempt (its backoff holds), so a restarted watch does not repeat it on the spot; the next
readings decide. Nothing secret goes in: keys, names, block ranges, one-line errors (redacted).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Iterator

from petals_ops.fleet.watch.model import SpareHolding, WatchState
from petals_ops.util.errors import InputError, one_line

MAX_LINE = 100_000  # a longer line is not ours: skipped at replay


class Journal:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as e:
            raise InputError(f"watch journal {self.path} cannot be opened ({e.strerror})",
                             fix="pass --journal PATH in a writable directory") from None

    def write(self, record: dict) -> dict:
        record = {"t": round(time.time(), 3), **record}
        line = json.dumps(record, separators=(",", ":"), sort_keys=True) + "\n"
        os.write(self._fd, line.encode())
        os.fsync(self._fd)
        return record

    def action(self, kind: str, key: str, *, reason: str, reading: str | None, host: str | None = None,
               container: str | None = None, blocks: str | None = None) -> str:
        action_id = uuid.uuid4().hex[:12]
        self.write({"type": "action", "id": action_id, "kind": kind, "key": key, "host": host,
                    "container": container, "blocks": blocks, "reason": one_line(reason, 300),
                    "reading": reading})
        return action_id

    def outcome(self, action_id: str, outcome: str, detail: str = "", **extra) -> None:
        self.write({"type": "outcome", "id": action_id, "outcome": outcome, "detail": one_line(detail, 300),
                    **extra})

    def close(self) -> None:
        os.close(self._fd)


def records(path: str | os.PathLike) -> Iterator[dict]:
    """The journal's records in order; a torn last line (a kill mid-write) or a foreign line is skipped."""
    path = Path(path)
    if not path.is_file():
        return
    with path.open("rb") as f:
        for raw in f:
            if len(raw) > MAX_LINE:
                continue
            try:
                record = json.loads(raw)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("type"), str):
                yield record


def replay(path: str | os.PathLike) -> WatchState:
    """The state the journal's records leave; intents without an outcome are marked interrupted."""
    state = WatchState()
    intents: dict[str, dict] = {}
    for r in records(path):
        if r["type"] == "action" and isinstance(r.get("id"), str) and isinstance(r.get("key"), str):
            intents[r["id"]] = r
            _intent(state, r)
        elif r["type"] == "outcome" and r.get("id") in intents:
            _outcome(state, intents.pop(r["id"]), r)
    for action_id, intent in intents.items():
        state.interrupted.append(action_id)
        _outcome(state, intent, {"outcome": "interrupted"})
    return state


def _intent(state: WatchState, r: dict) -> None:
    kind, key, at = r.get("kind"), r["key"], float(r.get("t", 0))
    st = state.server(key)
    if kind in ("restart", "recreate", "take_spare"):
        st.actions.append(at)
        if kind != "take_spare":
            st.attempts.append((at, kind))
    elif kind == "give_up":
        st.given_up = True
    elif kind == "reset":
        st.attempts.clear()
        st.given_up = False


def _outcome(state: WatchState, intent: dict, r: dict) -> None:
    kind, outcome = intent.get("kind"), str(r.get("outcome"))
    state.counts[(kind, outcome)] = state.counts.get((kind, outcome), 0) + 1
    key = intent["key"]
    if kind == "take_spare" and outcome in ("ok", "interrupted") and intent.get("host"):
        state.spares[key] = SpareHolding(owner=key, host=intent["host"],
                                         container=r.get("container") or intent.get("container") or "",
                                         blocks=intent.get("blocks") or "", since=float(intent.get("t", 0)))
    elif kind == "give_back" and outcome == "ok":
        state.spares.pop(key, None)
