"""Fixtures of the lab's real Prometheus and exporter (:mod:`petals_ops.lab.prometheus_lab`): one
Prometheus for the session's monitoring tests, and a factory of exporter processes stopped after each test.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from petals_ops.lab.prometheus_lab import PROMETHEUS, ExporterProcess, start_prometheus


@pytest.fixture(scope="session")
def prometheus(tmp_path_factory):
    if not Path(PROMETHEUS).exists():
        pytest.fail(f"{PROMETHEUS} missing: install Debian's prometheus package (./install.sh --system)")
    try:
        prom = start_prometheus(tmp_path_factory.mktemp("prometheus"))
    except RuntimeError as e:
        pytest.fail(str(e))
    try:
        yield prom
    finally:
        prom.stop()


@pytest.fixture
def exporter_process(tmp_path):
    """Factory: ``exporter_process(args)`` starts an exporter; every one is stopped after the test."""
    started: list[ExporterProcess] = []

    def start(args: list[str], env: dict | None = None) -> ExporterProcess:
        e = ExporterProcess([str(a) for a in args], tmp_path / f"exporter-{len(started)}.log", env)
        started.append(e)
        return e

    yield start
    for e in started:
        e.stop()
