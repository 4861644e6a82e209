"""The fleet executor as a unit: targets, parallel hosts, the one failed-host wrapper, read -> plan -> apply.

No SSH here: the sessions are fakes (this tests the executor, not SSH; tests/test_fleet.py runs the same
executor against real sshd hosts and Docker engines)."""

from __future__ import annotations

import threading

import pytest

from petals_ops.fleet.executor import Fleet, Operation, resolve_targets
from petals_ops.fleet.result import HostResult, ServerRow, exit_code, failure
from petals_ops.fleet.schema import Inventory
from petals_ops.fleet.ssh import HostError
from petals_ops.util.errors import EXIT_PARTIAL, InputError

INV = Inventory.model_validate({"server": {"device": "cpu"},
                                "hosts": {f"h{i}": {"gpus": 0} for i in range(1, 5)}})


class FakeSession:
    """Stands in for an SSH session: the executor only opens, hands over and closes it."""

    def __init__(self, name, spec, opts):
        self.name, self.closed = name, False

    def close(self):
        self.closed = True


class Recording(Operation):
    """read -> plan -> apply, each step noted; ``behaviour[host]`` makes a host's read raise or wait."""

    def __init__(self, behaviour=None):
        self.behaviour = behaviour or {}
        self.calls: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def note(self, host, step):
        with self.lock:
            self.calls.append((host, step))

    def read(self, target, session):
        self.note(target.name, "read")
        what = self.behaviour.get(target.name)
        if isinstance(what, BaseException):
            raise what
        if callable(what):
            what()
        return {"host": session.name}

    def plan(self, target, state):
        self.note(target.name, "plan")
        return [f"{state['host']}: create"]

    def preview(self, target, plan):
        return HostResult(target.name, changed=plan, rows=[ServerRow("petals-server-0", "would-create")])

    def apply(self, target, session, plan):
        self.note(target.name, "apply")
        return HostResult(target.name, changed=plan, rows=[ServerRow("petals-server-0", "created")])


def fleet(hosts=None, **kw) -> Fleet:
    return Fleet(resolve_targets(INV, hosts), session_factory=FakeSession, **kw)


def test_one_failing_host_neither_stops_nor_hides_the_others():
    op = Recording({"h2": HostError("h2: cannot connect (connection refused)", fix="x"),
                    "h3": ZeroDivisionError("division by zero")})
    with fleet() as f:
        results = f.run(op)
        sessions = list(f._sessions.values())
    assert [r.host for r in results] == ["h1", "h2", "h3", "h4"]  # one row per host, in host order
    assert [r.ok for r in results] == [True, False, False, True]
    assert results[1].error.startswith("h2: cannot connect (connection refused)")
    assert results[2].error == "h3: ZeroDivisionError: division by zero"  # unexpected errors: one line too
    assert results[0].rows[0].action == "created" and results[3].changed == ["h4: create"]
    assert {h for h, step in op.calls if step == "apply"} == {"h1", "h4"}
    assert len(sessions) == 4 and all(s.closed for s in sessions)  # every session closed at the end
    assert exit_code(results) == EXIT_PARTIAL
    assert "failed on 2 of 4 host(s): h2 (h2: cannot connect" in failure(results, "up").one_line()


def test_hosts_really_run_concurrently():
    """Two hosts that each wait for the other at a barrier both complete only if they run at once."""
    barrier = threading.Barrier(2, timeout=10)
    with fleet(["h1", "h2"]) as f:
        results = f.run(Recording({"h1": barrier.wait, "h2": barrier.wait}))
    assert [r.ok for r in results] == [True, True], [r.error for r in results]
    # The same two hosts one at a time never meet at the barrier: the test can fail.
    barrier = threading.Barrier(2, timeout=0.5)
    with fleet(["h1", "h2"], parallel=1) as f:
        results = f.run(Recording({"h1": barrier.wait, "h2": barrier.wait}))
    assert not any(r.ok for r in results) and "BrokenBarrierError" in results[0].error


def test_dry_run_stops_after_the_plan():
    op = Recording()
    with fleet(["h1"]) as f:
        [result] = f.run(op, dry_run=True)
    assert op.calls == [("h1", "read"), ("h1", "plan")]
    assert result.rows[0].action == "would-create" and result.changed == ["h1: create"]


def test_targets_are_resolved_once_per_host(monkeypatch):
    seen = []
    original = Inventory.server_for

    def counting(self, host, **kw):
        seen.append(host)
        return original(self, host, **kw)

    monkeypatch.setattr(Inventory, "server_for", counting)
    targets = resolve_targets(INV, "h1,h3")
    with Fleet(targets, session_factory=FakeSession) as f:
        f.run(Recording())
    assert seen == ["h1", "h3"]
    assert [(t.name, t.server.device, len(t.slots), t.expected_gpus) for t in targets] == [
        ("h1", "cpu", 1, 0), ("h3", "cpu", 1, 0)]


def test_a_host_the_inventory_cannot_place_is_bad_input_when_slots_are_required():
    inv = Inventory.model_validate({"hosts": {"h1": {"gpus": 0}}})  # device cuda with no GPUs
    assert resolve_targets(inv)[0].slots == ()  # hosts check / down / status still reach it
    with pytest.raises(InputError, match="gpus: 0"):
        resolve_targets(inv, require_slots=True)  # up and plan refuse it before touching any host
