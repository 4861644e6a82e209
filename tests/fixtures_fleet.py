"""Fixtures of the fleet lab (:mod:`petals_ops.lab.fleet_lab`): two SSH hosts with their own Docker engines,
the test image and a bootstrap DHT, started once per session."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from petals_ops.lab.fleet_lab import DOCKERD, SSHD, FleetLab

@pytest.fixture(scope="session")
def fleet_lab(tmp_path_factory):
    """Two SSH hosts with their own Docker engines, the test image, and a bootstrap DHT (all stopped at the
    end)."""
    for tool in (SSHD, DOCKERD):
        if not Path(tool).exists():
            pytest.fail(f"{tool} is missing: run ./install.sh --system (openssh-server, docker.io)")
    lab = FleetLab(Path(tempfile.mkdtemp(prefix="fleet-", dir="/tmp")))
    lab.start()
    try:
        yield lab
    finally:
        lab.stop()
