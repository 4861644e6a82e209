"""GPU health of our hosts. There is no GPU on this machine: the parser runs on nvidia-smi outputs kept in
tests/data/nvidia-smi/ (error lines verbatim as reported by operators, data lines in nvidia-smi's CSV
format; see the README there), the metrics are rendered from them and linted by promtool, and the
collection itself runs over the real test sshd, whose host has no nvidia-smi (a clear state, not a crash).
The alerts on these metrics are unit-tested by promtool in monitoring/rules/petals_alerts_test.yml."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from petals_ops.fleet.gpu import MIB, NO_NVIDIA_SMI, GpuHostStatus, parse_query
from petals_ops.fleet.status import ContainerStatus
from petals_ops.monitoring.collector import SwarmCollector
from petals_ops.monitoring.refresher import ExporterState
from petals_ops.lab.prometheus_lab import PROMTOOL

DATA = Path(__file__).parent / "data" / "nvidia-smi"

# fixture file -> (nvidia-smi's exit code in that situation, expected state, GPUs read, lost bus ids)
CASES = {
    "healthy_a10.txt": (0, "ok", 1, ()),
    "healthy_2xa100_one_full.txt": (0, "ok", 2, ()),
    "na_fields.txt": (0, "ok", 2, ()),
    "ecc_errors.txt": (0, "ok", 1, ()),
    "fallen_off_bus.txt": (15, "gpu_lost", 0, ("0000:00:1E.0",)),
    "fallen_off_bus_one_of_two.txt": (15, "gpu_lost", 1, ("0000:0B:00.0",)),
    "requires_reset.txt": (0, "gpu_lost", 1, ("00000000:00:1E.0",)),
    "no_devices.txt": (6, "no_devices", 0, ()),
    "driver_not_loaded.txt": (9, "driver_error", 0, ()),
}


def parse(name: str, expected: int = 1) -> GpuHostStatus:
    code = CASES[name][0]
    return parse_query("a10-1", (DATA / name).read_text(), code, expected=expected)


def test_every_recorded_output_has_a_case():
    assert {p.name for p in DATA.glob("*.txt")} == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_states_of_recorded_outputs(name):
    _, state, count, lost = CASES[name]
    status = parse(name)
    assert (status.state, len(status.gpus), status.lost) == (state, count, lost)
    assert status.ok == (state == "ok")
    if state != "ok":
        assert status.detail  # one line saying what nvidia-smi said


def test_values_of_a_healthy_a10():
    (g,) = parse("healthy_a10.txt").gpus
    assert (g.index, g.name, g.bus_id) == (0, "NVIDIA A10", "00000000:00:1E.0")
    assert g.uuid.startswith("GPU-")
    assert g.utilization_ratio == pytest.approx(0.87)
    assert (g.memory_used_bytes, g.memory_total_bytes) == (21013 * MIB, 23028 * MIB)
    assert (g.temperature_celsius, g.power_watts, g.power_limit_watts) == (61, 142.31, 150)
    assert (g.ecc_corrected, g.ecc_uncorrected, g.requires_reset) == (0, 0, False)


def test_nan_and_inf_readings_are_unknown():
    """Issue 23.15: 'nan' was shown as 'nan%' and 'inf' in an integer field was a traceback."""
    line = ("0, GPU-3c1e7a2b-5d4f-8e21-9a6b-0f2d4c8e1a37, NVIDIA A10, 00000000:00:1E.0, nan, inf, 23028, "
            "-inf, NaN, 150.00, 0, 0")
    status = parse_query("a10-1", line + "\n", 0, expected=1)
    (g,) = status.gpus
    assert g.utilization_ratio is None and g.memory_used_bytes is None
    assert g.temperature_celsius is None and g.power_watts is None and g.memory_total_bytes == 23028 * MIB


def test_na_fields_are_unknown_not_zero():
    geforce, t4 = parse("na_fields.txt").gpus
    assert geforce.ecc_corrected is None and geforce.ecc_uncorrected is None  # no ECC on a GeForce
    assert t4.utilization_ratio is None and t4.power_watts is None and t4.memory_used_bytes == 0
    assert parse("ecc_errors.txt").gpus[0].ecc_uncorrected == 3


def test_fallen_off_bus_and_missing_gpus():
    status = parse("fallen_off_bus.txt")
    assert "GPU is lost" in status.detail and not status.ok
    # Fewer GPUs than the inventory says is not ok, even when nvidia-smi is happy with the ones it sees.
    assert not parse("healthy_a10.txt", expected=2).ok and parse("healthy_a10.txt", expected=1).ok
    assert parse_query("h", "", NO_NVIDIA_SMI).state == "no_nvidia_smi"
    assert parse_query("h", "garbage\n", 255).state == "error"


# ---------------------------------------------------------------------------------------------- metrics
def samples(state: ExporterState) -> tuple[str, dict]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SwarmCollector(lambda: state))
    text = generate_latest(registry).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return text, out


def counts(got: dict, host: str) -> tuple[float, float]:
    """(GPUs visible, GPUs expected) of ``host`` in rendered samples."""
    return tuple(got[(f"petals_gpu_{n}", (("host", host),))] for n in ("visible", "expected"))


def fleet_state() -> ExporterState:
    healthy = parse("healthy_a10.txt")
    lost = parse_query("a10-2", (DATA / "fallen_off_bus.txt").read_text(), 15, expected=1)
    both = parse_query("a10-3", (DATA / "ecc_errors.txt").read_text(), 0, expected=2)
    container = ContainerStatus("a10-1", "petals-server-0", True, 0, None, "QmA", None)
    return ExporterState(refresh_interval=30, containers=(container,), gpus=(healthy, lost, both),
                         fleet_ok=True, up=True, last_success=time.time())


def test_gpu_metrics_with_the_host_label():
    text, got = samples(fleet_state())
    g0 = (("gpu", "0"), ("host", "a10-1"))
    assert got[("petals_gpu_utilization_ratio", g0)] == pytest.approx(0.87)
    assert got[("petals_gpu_memory_used_bytes", g0)] == 21013 * MIB
    assert got[("petals_gpu_memory_total_bytes", g0)] == 23028 * MIB
    assert got[("petals_gpu_temperature_celsius", g0)] == 61 and got[("petals_gpu_power_watts", g0)] == 142.31
    assert got[("petals_gpu_host_state", (("host", "a10-1"), ("state", "ok")))] == 1
    # The GPU that fell off the bus: its own series, and the host's state.
    assert got[("petals_gpu_lost", (("bus_id", "0000:00:1E.0"), ("host", "a10-2")))] == 1
    assert got[("petals_gpu_host_state", (("host", "a10-2"), ("state", "gpu_lost")))] == 1
    assert counts(got, "a10-2") == (0, 1)
    # ECC errors as counters, by type; fewer GPUs than expected on a10-3.
    g3 = (("gpu", "0"), ("host", "a10-3"))
    assert got[("petals_gpu_ecc_errors_total", g3 + (("type", "uncorrected"),))] == 3
    assert got[("petals_gpu_ecc_errors_total", g3 + (("type", "corrected"),))] == 12
    assert counts(got, "a10-3") == (1, 2)
    # GPU entries are not containers.
    assert ("petals_container_running", (("container", "petals-server-0"), ("host", "a10-1"))) in got
    assert not any(k[0] == "petals_container_running" and dict(k[1])["host"] != "a10-1" for k in got)
    result = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_na_values_are_absent_from_metrics():
    na = parse_query("g", (DATA / "na_fields.txt").read_text(), 0)
    _, got = samples(ExporterState(refresh_interval=30, containers=(), gpus=(na,), fleet_ok=True))
    t4 = (("gpu", "1"), ("host", "g"))
    assert ("petals_gpu_utilization_ratio", t4) not in got and ("petals_gpu_power_watts", t4) not in got
    assert got[("petals_gpu_power_limit_watts", t4)] == 70


# ---------------------------------------------------------------------------------------------- over SSH
def test_collection_over_real_sshd_without_nvidia_smi(fleet_lab, tmp_path):
    """The lab hosts (real sshd) have no nvidia-smi: each gives the no_nvidia_smi state next to its
    containers, and a host the inventory says has a GPU is then short of GPUs (PetalsGpuMissing fires)."""
    from petals_ops.fleet import load_inventory, read_fleet

    inv = {"ssh_config": str(fleet_lab.ssh_config), "known_hosts": str(fleet_lab.known_hosts),
           "hosts": {"a10-1": {"gpus": 1}, "a10-2": {"gpus": 0, "server": {"device": "cpu"}}}}
    path = fleet_lab.write_inventory(tmp_path / "gpu.yaml", inv)
    reading = read_fleet(load_inventory(path))
    gpus = {e.host: e for e in reading.gpus}
    assert set(gpus) == {"a10-1", "a10-2"}
    for host, expected in (("a10-1", 1), ("a10-2", 0)):
        assert (gpus[host].state, gpus[host].gpus, gpus[host].expected) == ("no_nvidia_smi", (), expected)
        assert "no nvidia-smi" in gpus[host].detail
    _, got = samples(ExporterState(refresh_interval=30, containers=reading.containers, gpus=reading.gpus,
                                   fleet_ok=True))
    visible, expected = counts(got, "a10-1")
    assert visible == 0 < expected
    assert got[("petals_gpu_host_state", (("host", "a10-2"), ("state", "no_nvidia_smi")))] == 1
