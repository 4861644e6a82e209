"""GPU health of our hosts: ``nvidia-smi --query-gpu`` over SSH, parsed into plain records.

Hosts that run NVIDIA's DCGM exporter are scraped by Prometheus directly (monitoring/prometheus.yml, job
``dcgm``); this is the fallback that needs nothing on the host but the driver. The states that matter to an
operator are told apart here, because each needs a different fix: a GPU that has fallen off the bus
(``Unable to determine the device handle for GPU ...: GPU is lost``, exit code 15, or fields reading
``[GPU requires reset]``: reboot or reset), no devices, the driver not loaded, no nvidia-smi at all.
Nothing here imports more than the standard library; the parser is pure (tests feed it recorded outputs).
"""

from __future__ import annotations

import math

import re
from dataclasses import dataclass

FIELDS = (
    "index", "uuid", "name", "pci.bus_id", "utilization.gpu", "memory.used", "memory.total",
    "temperature.gpu", "power.draw", "power.limit",
    "ecc.errors.corrected.volatile.total", "ecc.errors.uncorrected.volatile.total",
)
# Exit 127 from our own check means "no nvidia-smi on PATH" (nvidia-smi itself never exits 127).
QUERY_SCRIPT = ('command -v nvidia-smi >/dev/null 2>&1 || exit 127; '
                'exec nvidia-smi --query-gpu="$1" --format=csv,noheader,nounits 2>&1')
NO_NVIDIA_SMI = 127
EXIT_GPU_LOST = 15  # nvidia-smi's documented return value: "GPU has fallen off the bus"
MIB = 1024 * 1024
STATES = ("ok", "gpu_lost", "no_devices", "driver_error", "no_nvidia_smi", "error")

_LOST_RE = re.compile(r"Unable to determine the device handle for GPU\s*([0-9A-Fa-f:.]+):\s*(.*)")
_RESET = "[GPU requires reset]"


@dataclass(frozen=True)
class GpuReading:
    """One GPU as nvidia-smi reports it; None where it reports ``[N/A]``/``[Not Supported]``."""

    index: int
    uuid: str
    name: str
    bus_id: str
    utilization_ratio: float | None
    memory_used_bytes: int | None
    memory_total_bytes: int | None
    temperature_celsius: float | None
    power_watts: float | None
    power_limit_watts: float | None
    ecc_corrected: int | None
    ecc_uncorrected: int | None
    requires_reset: bool = False


@dataclass(frozen=True)
class GpuHostStatus:
    """A host's GPUs: its ``state`` (one of STATES), the readings, the bus ids of lost GPUs, what the
    inventory expects (``gpus`` of a cuda host, else 0) and one line saying what nvidia-smi said."""

    host: str
    state: str
    gpus: tuple[GpuReading, ...] = ()
    lost: tuple[str, ...] = ()
    expected: int = 0
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.state == "ok" and len(self.gpus) >= self.expected


def _value(text: str) -> str | None:
    text = text.strip()
    return None if text.startswith("[") or text in ("", "N/A") else text


def _number(text: str, scale: float = 1.0) -> float | None:
    v = _value(text)
    try:
        number = None if v is None else float(v) * scale
    except ValueError:
        return None
    return number if number is not None and math.isfinite(number) else None  # 'nan', 'inf': not a reading


def _int(text: str, scale: int = 1) -> int | None:
    v = _number(text, scale)
    return None if v is None else int(v)


def _reading(parts: list[str]) -> GpuReading:
    return GpuReading(
        index=int(parts[0]), uuid=parts[1].strip(), name=parts[2].strip(), bus_id=parts[3].strip(),
        utilization_ratio=_number(parts[4], 0.01), memory_used_bytes=_int(parts[5], MIB),
        memory_total_bytes=_int(parts[6], MIB), temperature_celsius=_number(parts[7]),
        power_watts=_number(parts[8]), power_limit_watts=_number(parts[9]),
        ecc_corrected=_int(parts[10]), ecc_uncorrected=_int(parts[11]),
        requires_reset=any(p.strip() == _RESET for p in parts[4:]),
    )


def parse_query(host: str, output: str, exit_code: int, *, expected: int = 0) -> GpuHostStatus:
    """The host's GPU status from what :data:`QUERY_SCRIPT` printed and its exit code."""
    if exit_code == NO_NVIDIA_SMI:
        return GpuHostStatus(host, "no_nvidia_smi", expected=expected,
                             detail="no nvidia-smi on the host's PATH (no NVIDIA driver installed)")
    gpus, lost, other = [], [], []
    for line in output.splitlines():
        if not line.strip():
            continue
        m = _LOST_RE.search(line)
        parts = line.split(",")
        if m:
            lost.append(m.group(1).upper())
            other.append(line.strip())
        elif len(parts) == len(FIELDS) and parts[0].strip().isdigit():
            reading = _reading(parts)
            gpus.append(reading)
            if reading.requires_reset:
                lost.append(reading.bus_id.upper())
        else:
            other.append(line.strip())
    detail = " | ".join(other)[:300]
    if lost or exit_code == EXIT_GPU_LOST:
        state = "gpu_lost"
        detail = detail or f"GPU(s) {', '.join(lost)} require a reset (fallen off the bus)"
    elif "No devices were found" in output:
        state = "no_devices"
    elif "couldn't communicate with the NVIDIA driver" in output or exit_code == 9:
        state = "driver_error"
    elif exit_code != 0 or (not gpus and other):
        state = "error"
        detail = detail or f"nvidia-smi exited {exit_code}"
    else:
        state = "ok"
    return GpuHostStatus(host, state, tuple(gpus), tuple(lost), expected, detail)


def read_gpus(session, expected: int = 0) -> GpuHostStatus:
    """nvidia-smi on the host behind ``session`` (a :class:`~petals_ops.fleet.ssh.HostSession`)."""
    r = session.script(QUERY_SCRIPT, ",".join(FIELDS), timeout=30)
    return parse_query(session.name, r.stdout or "", r.exited, expected=expected)

