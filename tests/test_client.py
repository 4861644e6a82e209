"""The client layer's own units: the one retry policy, the client options, and their CLI spellings.

The retry policy is exercised with a stand-in backend: what is under test is the policy (attempts,
backoff, bans, refusals, cancellation), not the swarm; its use through a real swarm is in
tests/test_bench_swarm.py (a replica server stopped mid-run) and tests/test_tune.py (a server killed).
"""

import os
import threading
import time

import pytest

from petals_ops.client.decoding import Cancelled
from petals_ops.client.options import ClientOptions
from petals_ops.client.retry import RetriesExhausted, RetryPolicy, run_with_retries
from petals_ops.util.errors import InputError
from tests.helpers import assert_one_line_error

PEER = "12D3KooW" + "A" * 44


class _Backend:
    """Collects and bans like a Backend; the bans are the peers named in the error."""

    def __init__(self, ban_fails: bool = False):
        self.collected, self.banned, self.ban_fails = 0, [], ban_fails

    def collect(self):
        self.collected += 1

    def after_failure(self, error):
        if self.ban_fails:
            raise RuntimeError("routing is gone")
        names = [w for w in str(error).split() if w.startswith("12D3KooW")]
        self.banned += names
        return names


def _flaky(failures: int):
    calls = []

    def work(attempt):
        calls.append(attempt)
        if len(calls) <= failures:
            raise ConnectionError(f"failed to dial {PEER}\n  (attempt {attempt})")
        return "done"

    return work, calls


def test_a_unit_is_retried_with_bans_and_doubling_backoff(monkeypatch):
    slept = []
    monkeypatch.setattr(time, "sleep", slept.append)
    backend = _Backend()
    work, calls = _flaky(2)
    result, failures = run_with_retries(work, RetryPolicy(retries=3, backoff=0.5), backend)
    assert result == "done" and calls == [1, 2, 3]
    assert [f.attempt for f in failures] == [1, 2] and backend.banned == [PEER, PEER]
    assert slept == [0.5, 1.0] and backend.collected == 2
    assert failures[0].describe() == f"ConnectionError: failed to dial {PEER} (attempt 1) [avoiding {PEER}]"


def test_after_the_last_retry_every_failure_is_returned(monkeypatch):
    monkeypatch.setattr(time, "sleep", lambda s: None)
    work, calls = _flaky(10)
    with pytest.raises(RetriesExhausted) as caught:
        run_with_retries(work, RetryPolicy(retries=2, backoff=0), _Backend(ban_fails=True))
    assert calls == [1, 2, 3] and len(caught.value.failures) == 3
    assert caught.value.failures[-1].describe().endswith("[avoiding (could not ban: routing is gone)]")


def test_a_refused_error_is_not_retried_and_cancel_stops_the_wait():
    work, calls = _flaky(5)

    def refuse(error):
        raise InputError("no retry fixes this", fix="change the input")

    with pytest.raises(InputError):
        run_with_retries(work, RetryPolicy(retries=5), _Backend(), refuse=refuse)
    assert calls == [1]
    cancel = threading.Event()
    cancel.set()
    work, calls = _flaky(5)
    with pytest.raises(Cancelled):
        run_with_retries(work, RetryPolicy(retries=5, backoff=60), _Backend(), cancel=cancel)
    assert calls == [1]


def test_backoff_is_capped_and_bad_values_are_refused():
    assert [RetryPolicy(backoff=1).delay(a) for a in (1, 2, 6, 20)] == [1, 2, 30.0, 30.0]
    for bad in (RetryPolicy(retries=-1), RetryPolicy(backoff=float("nan")), RetryPolicy(backoff=-1)):
        with pytest.raises(InputError):
            bad.validate()
    for bad, needle in ((ClientOptions(backend="gpu"), "--backend gpu"),
                        (ClientOptions(client_retries=-1), "--client-retries"),
                        (ClientOptions(request_timeout=float("inf")), "--request-timeout")):
        with pytest.raises(InputError, match=needle):
            bad.validate()


@pytest.mark.parametrize("args, needles", [
    (["generate", "x", "--max-retries", "-1"], ["--max-retries"]),
    (["generate", "x", "--max-retries", "1", "--client-retries", "2"],
     ["--max-retries 1", "--client-retries 2"]),
    (["tune", "gsm8k", "--step-retries", "1", "--retries", "2"], ["--step-retries 1", "--retries 2"]),
    (["tune", "gsm8k", "--client-retries", "-1"], ["--client-retries"]),
    (["bench", "gsm8k", "--backoff", "nan"], ["--backoff"]),
    (["bench", "gsm8k", "--backend", "gpu"], ["--backend"]),
])
def test_shared_options_and_old_spellings_are_checked_alike(run_cli, args, needles):
    assert_one_line_error(run_cli(*args, env=None, timeout=60), *needles, code=2)


def test_old_spellings_are_hidden_and_new_ones_shared(run_cli):
    helps = {cmd: run_cli(*cmd.split(), "--help", env=None, timeout=60).stdout
             for cmd in ("bench gsm8k", "tune gsm8k", "generate")}
    for cmd, text in helps.items():
        for option in ("--backend", "--client-retries", "--request-timeout", "--initial-peers"):
            assert option in text, (cmd, option)
        assert "--max-retries" not in text and "--step-retries" not in text, cmd
    assert "--retries" in helps["bench gsm8k"] and "--retries" in helps["tune gsm8k"]


def test_work_runs_with_the_loaded_objects_frozen_out_of_gc_and_its_own_torch_threads():
    """quiet_gc: automatic GC off and what was alive at the start never scanned (a full collection of a
    loaded client held the GIL ~0.5 s per question); torch_threads: set while work runs, then restored."""
    import gc

    import torch

    from petals_ops.client.backends import Backend, client_threads

    backend = Backend(loaded=None)
    enabled, threads = gc.isenabled(), torch.get_num_threads()
    with backend.quiet_gc(), backend.torch_threads(1):
        assert not gc.isenabled() and gc.get_freeze_count() > 1000
        assert torch.get_num_threads() == 1
        backend.collect()
    assert gc.isenabled() == enabled and gc.get_freeze_count() == 0
    assert torch.get_num_threads() == threads
    with backend.torch_threads(None):  # None: left as they are
        assert torch.get_num_threads() == threads
    # the lab's servers share this machine's cores: one thread; else each question its share, at least 1
    assert client_threads(8, servers_here=True) == 1
    assert client_threads(1, servers_here=False) == (os.cpu_count() or 1)
    assert client_threads(10_000, servers_here=False) == 1
