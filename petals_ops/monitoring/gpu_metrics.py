"""GPU metric families of our hosts, from the fleet's nvidia-smi reads (:mod:`petals_ops.fleet.gpu`).

Hosts running NVIDIA's DCGM exporter are scraped by Prometheus directly (``DCGM_FI_*``, job ``dcgm``);
these families cover the hosts without it, labelled with our inventory's host name. The alert rules
(monitoring/rules/petals_alerts.yml) read both: a GPU fallen off the bus, missing, or out of memory.
Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric

from petals_ops.fleet.gpu import STATES, GpuHostStatus

GPU_LABELS = ["host", "gpu"]


def render_gpus(statuses: Iterable[GpuHostStatus]) -> list[Metric]:
    statuses = list(statuses)
    if not statuses:
        return []

    def gauge(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, doc + " (nvidia-smi over SSH, at the exporter's latest refresh)",
                                 labels=labels)

    state = gauge("petals_gpu_host_state", "1 for what nvidia-smi said of the host's GPUs "
                  "(ok, gpu_lost, no_devices, driver_error, no_nvidia_smi, error), 0 for the others",
                  ["host", "state"])
    expected = gauge("petals_gpu_expected", "GPUs the inventory says the host serves with", ["host"])
    visible = gauge("petals_gpu_visible", "GPUs nvidia-smi reads on the host (not counting lost ones)",
                    ["host"])
    lost = gauge("petals_gpu_lost", "1 for a GPU that has fallen off the bus or requires a reset",
                 ["host", "bus_id"])
    util = gauge("petals_gpu_utilization_ratio", "GPU utilisation over nvidia-smi's sample period (0-1)",
                 GPU_LABELS)
    used = gauge("petals_gpu_memory_used_bytes", "GPU memory in use", GPU_LABELS)
    total = gauge("petals_gpu_memory_total_bytes", "GPU memory on the device", GPU_LABELS)
    temp = gauge("petals_gpu_temperature_celsius", "GPU core temperature", GPU_LABELS)
    power = gauge("petals_gpu_power_watts", "GPU power draw", GPU_LABELS)
    limit = gauge("petals_gpu_power_limit_watts", "GPU power limit", GPU_LABELS)
    ecc = CounterMetricFamily("petals_gpu_ecc_errors",
                              "ECC errors since the driver loaded (volatile), by type (nvidia-smi over SSH)",
                              labels=GPU_LABELS + ["type"])
    info = InfoMetricFamily("petals_gpu", "The GPU's model, UUID and PCI bus id (nvidia-smi over SSH)",
                            labels=GPU_LABELS + ["name", "uuid", "bus_id"])
    for s in statuses:
        for st in STATES:
            state.add_metric([s.host, st], 1 if s.state == st else 0)
        expected.add_metric([s.host], s.expected)
        visible.add_metric([s.host], sum(1 for g in s.gpus if not g.requires_reset))
        for bus_id in s.lost:
            lost.add_metric([s.host, bus_id], 1)
        for g in s.gpus:
            labels = [s.host, str(g.index)]
            info.add_metric(labels + [g.name, g.uuid, g.bus_id], {})
            for family, value in ((util, g.utilization_ratio), (used, g.memory_used_bytes),
                                  (total, g.memory_total_bytes), (temp, g.temperature_celsius),
                                  (power, g.power_watts), (limit, g.power_limit_watts)):
                if value is not None:  # [N/A] is absent, not 0
                    family.add_metric(labels, value)
            for kind, value in (("corrected", g.ecc_corrected), ("uncorrected", g.ecc_uncorrected)):
                if value is not None:
                    ecc.add_metric(labels + [kind], value)
    return [state, expected, visible, lost, util, used, total, temp, power, limit, ecc, info]
