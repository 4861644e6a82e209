"""Session-wide real processes shared by the whole suite (CI has 2 cores: start each thing once).

- ``tiny_model_dir``: one tiny BLOOM made offline for every swarm of the session.
- ``local_swarm``: one real local swarm (bootstrap DHT + 2 CPU servers). Tests must not damage it;
  a test that stops servers starts its own swarm with ``swarm_factory``.
- ``run_cli``: runs the real ``petals-ops`` command in a subprocess, as an operator would.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# Fixtures of the other real parts live in their own modules (one per concern).
pytest_plugins: list[str] = ["tests.fixtures_prometheus", "tests.fixtures_fleet", "tests.fixtures_browser"]

REPO = Path(__file__).resolve().parents[1]


def cli_env(**extra: str) -> dict:
    env = dict(os.environ)
    env.pop("PETALS_OPS_SWARM_DIR", None)
    env.update(extra)
    return env


def _run_cli(*args: str, timeout: float = 300, env: dict | None = None, input: str | None = None):
    """Run ``petals-ops ARGS`` (the installed entry point of this interpreter) and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "petals_ops.cli.main", *map(str, args)],
        capture_output=True, text=True, timeout=timeout, env=env or cli_env(), input=input,
    )


@pytest.fixture(scope="session")
def run_cli():
    return _run_cli


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from petals_ops.lab.tiny_model import make_tiny_bloom

    return make_tiny_bloom(tmp_path_factory.mktemp("models") / "tiny-bloom")


@pytest.fixture(scope="session")
def swarm_factory(tmp_path_factory, tiny_model_dir):
    """Start extra local swarms (``servers``, ``replicas``, emulated ``delays_ms``); all are stopped at the
    end of the session."""
    from petals_ops.lab import local_swarm

    started = []

    def start(servers: int = 2, replicas: int = 1, model_dir=None, delays_ms=None, server_settings=None):
        """``delays_ms``: one emulated round trip per server (petals_ops.lab.netem), e.g. [0, 0, 80];
        ``server_settings``: run_server options over the local swarm's (local_swarm.SERVER_DEFAULTS)."""
        run_dir = tmp_path_factory.mktemp("swarm")
        swarm = local_swarm.up(run_dir, servers=servers, replicas=replicas,
                               model_dir=model_dir or tiny_model_dir, timeout=240, delays_ms=delays_ms,
                               server_settings=server_settings)
        started.append(run_dir)
        return swarm

    yield start
    failures = []
    for run_dir in started:  # stop every swarm even if one fails to stop
        try:
            local_swarm.down(run_dir)
        except Exception as e:
            failures.append(f"{run_dir}: {e}")
    assert not failures, failures


@pytest.fixture(scope="session")
def local_swarm(swarm_factory):
    """The session's shared, healthy local swarm (2 servers, blocks 0:2 and 2:4). Do not stop its servers."""
    return swarm_factory()


@pytest.fixture(scope="session")
def arith_swarm(swarm_factory):
    """A local swarm serving the shipped tiny BLOOM trained on arithmetic (2 servers)."""
    from petals_ops.lab.tiny_model import ARITH_MODEL_DIR

    return swarm_factory(model_dir=ARITH_MODEL_DIR)


@pytest.fixture(scope="session")
def delayed_swarm(swarm_factory):
    """A local swarm of 3 servers whose emulated round trips are 0, 0 and 80 ms (the third is the slow hop),
    shared by the tests that measure or name a slow hop. Read-only: inject no faults into it."""
    return swarm_factory(servers=3, delays_ms=[0, 0, 80])


@pytest.fixture(scope="session")
def gsm8k_dir() -> Path:
    """The GSM8K copy packaged in the checkout (petals_ops/data/gsm8k), never anything outside it."""
    path = REPO / "petals_ops" / "data" / "gsm8k"
    if not (path / "test.jsonl").is_file():
        pytest.fail(f"GSM8K data missing at {path}: "
                    "the checkout should carry petals_ops/data/gsm8k/test.jsonl")
    return path


def pytest_configure(config):
    from petals_ops.util import tmpclean

    config.stash[_SOCKETS_BEFORE] = tmpclean.hivemind_sockets()


def pytest_sessionfinish(session, exitstatus):
    session.config.stash[_EXIT_STATUS] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """End the test process once pytest is done (fixtures torn down, summary printed).

    Tests load the petals client in-process; interpreter teardown with it loaded can hang for ever (a
    petals/hivemind ``__del__`` waits on an event loop that is already stopped), which would stall CI
    after a green run. The CLI does the same (petals_ops.cli.main.main), and like it leaves no hivemind
    socket of the in-process clients behind.
    """
    from petals_ops.util import tmpclean

    if "hivemind" in sys.modules and _SOCKETS_BEFORE in config.stash:
        tmpclean.remove_stale_sockets(config.stash[_SOCKETS_BEFORE], exiting="petals" in sys.modules)
    tmpclean.remove_dead_multiprocessing_dirs()  # of the processes tests killed (kill -9 and resume)
    if "petals" in sys.modules and _EXIT_STATUS in config.stash:
        tmpclean.exit_now(config.stash[_EXIT_STATUS])


_EXIT_STATUS = pytest.StashKey[int]()
_SOCKETS_BEFORE = pytest.StashKey[set]()
