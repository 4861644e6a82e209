#!/usr/bin/env python
"""The Grafana dashboard "Petals swarm health", built in code with Grafana's own Python SDK
(grafana-foundation-sdk, generated for Grafana 11.6: the compose file's), instead of edited by hand.

    .venv/bin/python monitoring/dashboard.py           # writes grafana/dashboards/petals-swarm.json
    .venv/bin/python monitoring/dashboard.py --check   # exit 1 if the checked-in JSON differs from the code

A panel is one call below (its title, description, queries, unit); the layout flows left to right in rows
of 24 columns, so adding a panel never means recomputing coordinates. Every query reads the exporter's
metrics (docs/monitoring.md) through the datasource the provisioning names (uid ``petals-prometheus``).
tests/test_dashboard.py checks that the checked-in JSON is what this builds; tests/test_monitoring.py runs
every query against a real Prometheus.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard, prometheus, stat, table, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as models
from grafana_foundation_sdk.models import prometheus as prometheus_models

OUTPUT = Path(__file__).resolve().parent / "grafana" / "dashboards" / "petals-swarm.json"
DATASOURCE = models.DataSourceRef(type_val="prometheus", uid="petals-prometheus")
WIDTH = 24
MODEL = '{model=~"$model"}'


def query(expr: str, legend: str = "", ref: str = "A", table_format: bool = False) -> prometheus.Dataquery:
    q = prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref).datasource(DATASOURCE)
    if table_format:  # one row per series at the dashboard's end time
        q = q.instant().format(prometheus_models.PromQueryFormat.TABLE)
    return q


def thresholds(*steps: tuple[str, float | None]) -> dashboard.ThresholdsConfig:
    return (
        dashboard.ThresholdsConfig()
        .mode(models.ThresholdsMode.ABSOLUTE)
        .steps([models.Threshold(color=color, value=value) for color, value in steps])
    )


class Layout:
    """Places panels left to right, wrapping at 24 columns; a row starts on a line of its own."""

    def __init__(self, board: dashboard.Dashboard):
        self.board, self.x, self.y, self.line = board, 0, 0, 0

    def row(self, panel_id: int, title: str) -> None:
        self._newline()
        self.board.with_row(
            dashboard.Row(title).id(panel_id).grid_pos(models.GridPos(h=1, w=WIDTH, x=0, y=self.y))
        )
        self.y += 1

    def add(self, panel, w: int, h: int) -> None:
        if self.x + w > WIDTH:
            self._newline()
        self.board.with_panel(
            panel.grid_pos(models.GridPos(h=h, w=w, x=self.x, y=self.y)).datasource(DATASOURCE)
        )
        self.x += w
        self.line = max(self.line, h)

    def _newline(self) -> None:
        self.x, self.y, self.line = 0, self.y + self.line, 0


def graph(
    panel_id: int,
    title: str,
    description: str,
    *targets,
    unit: str = "short",
    min_value: float | None = None,
    max_value: float | None = None,
    decimals: int | None = None,
) -> timeseries.Panel:
    panel = timeseries.Panel().id(panel_id).title(title).description(description).unit(unit)
    for target in targets:
        panel = panel.with_target(target)
    if min_value is not None:
        panel = panel.min(min_value)
    if max_value is not None:
        panel = panel.max(max_value)
    if decimals is not None:
        panel = panel.decimals(decimals)
    return panel


def big_number(
    panel_id: int, title: str, description: str, expr: str, *, colored=None, mappings=None
) -> stat.Panel:
    panel = (
        stat.Panel()
        .id(panel_id)
        .title(title)
        .description(description)
        .unit("short")
        .with_target(query(expr, "{{model}}"))
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]))
    )
    if colored is not None:
        panel = panel.thresholds(colored).color_mode(common.BigValueColorMode.BACKGROUND)
    if mappings is not None:
        panel = panel.mappings(mappings)
    return panel


def listing(panel_id: int, title: str, description: str, *exprs: str) -> table.Panel:
    panel = table.Panel().id(panel_id).title(title).description(description).unit("short").show_header(True)
    for ref, expr in zip("ABCDEFGH", exprs):
        panel = panel.with_target(query(expr, ref=ref, table_format=True))
    return panel


def build() -> dict:
    """The dashboard as Grafana's JSON model (a dict)."""
    board = (
        dashboard.Dashboard("Petals swarm health")
        .uid("petals-swarm")
        .tags(["petals", "petals-ops"])
        .timezone("browser")
        .readonly()
        .refresh("30s")
        .time("now-3h", "now")
        .version(1)
        .with_variable(
            dashboard.QueryVariable("model")
            .label("model")
            .datasource(DATASOURCE)
            .query("label_values(petals_model_blocks, model)")
            .include_all(True)
            .multi(True)
            .all_value(".*")
            .refresh(models.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(models.VariableSort.ALPHABETICAL_ASC)
            .current(models.VariableOption(selected=True, text=["All"], value=["$__all"]))
        )
    )
    grid = Layout(board)

    grid.row(100, "Model coverage")
    yes_no = [
        models.ValueMap(
            options={
                "0": models.ValueMappingResult(text="NO", color="red"),
                "1": models.ValueMappingResult(text="yes", color="green"),
            }
        )
    ]
    grid.add(
        big_number(
            1,
            "Full forward pass",
            "1: every block has an ONLINE server. 0: some block has none, so no request can complete.",
            f"petals_model_fully_served{MODEL}",
            colored=thresholds(("red", None), ("green", 1)),
            mappings=yes_no,
        ),
        6,
        4,
    )
    grid.add(
        big_number(
            2,
            "Blocks with no ONLINE server",
            "Blocks of the model no ONLINE server holds.",
            f"petals_model_uncovered_blocks{MODEL}",
            colored=thresholds(("green", None), ("red", 1)),
        ),
        6,
        4,
    )
    grid.add(
        big_number(
            3,
            "Fewest ONLINE servers on a block",
            "Redundancy of the thinnest block: 1 means one server loss breaks the model.",
            f"petals_model_min_online_servers{MODEL}",
            colored=thresholds(("red", None), ("orange", 1), ("green", 2)),
        ),
        6,
        4,
    )
    grid.add(big_number(4, "Blocks", "Blocks (layers) of the model.", f"petals_model_blocks{MODEL}"), 6, 4)
    grid.add(
        graph(
            5,
            "ONLINE servers per block over time",
            "Coverage of each block over time. A line at 0 is a hole in the model.",
            query(f"petals_block_online_servers{MODEL}", "block {{block}}"),
            min_value=0,
            decimals=0,
        ),
        16,
        9,
    )
    grid.add(
        graph(
            6,
            "Servers by state",
            "Servers announcing blocks of the model, by announced state.",
            query(f"petals_model_servers{MODEL}", "{{state}}"),
            min_value=0,
            decimals=0,
        ),
        8,
        9,
    )

    grid.row(101, "Servers")
    grid.add(
        graph(
            7,
            "Our nodes: ONLINE in the swarm",
            "1 while our server (local swarm or inventory host) is ONLINE; 0 when OFFLINE, JOINING or "
            "absent.",
            query("petals_own_server_online", "{{host}}"),
            min_value=0,
            max_value=1,
            decimals=0,
        ),
        12,
        8,
    )
    grid.add(
        listing(
            8,
            "Our nodes: blocks held",
            "First and last block of each of our servers, as announced.",
            'petals_server_first_block{host!=""}',
            'petals_server_last_block{host!=""}',
        ),
        12,
        8,
    )
    grid.add(
        graph(
            9,
            "Throughput per server",
            "Throughput each server announces (tokens/s, Petals' figure).",
            query(f"petals_server_throughput_tokens_per_second{MODEL}", "{{host}} {{peer_id}}"),
        ),
        12,
        8,
    )
    grid.add(
        graph(
            10,
            "Attention cache left per server",
            "KV-cache tokens left for new inference sessions; near 0 means new sessions are refused.",
            query(f"petals_server_cache_left_tokens{MODEL}", "{{host}} {{peer_id}}"),
        ),
        12,
        8,
    )
    grid.add(
        listing(
            11,
            "Servers (info)",
            "Version, dtype and quantisation of every server in the swarm.",
            f"petals_server_info{MODEL}",
        ),
        24,
        7,
    )

    grid.row(105, "Reachability (the exporter's probes)")
    grid.add(
        big_number(
            27,
            "Servers ONLINE but unreachable",
            "Servers announcing ONLINE that did not answer the exporter's rpc_info probe: they count for no "
            "block (PetalsServerUnreachable).",
            f"petals_model_unreachable_servers{MODEL}",
            colored=thresholds(("green", None), ("red", 1)),
        ),
        6,
        8,
    )
    grid.add(
        graph(
            28,
            "Servers answering the probe",
            "1 while the ONLINE server answers petals' rpc_info within the probe timeout; 0: listed ONLINE, "
            "nobody gets through.",
            query(f"petals_server_reachable{MODEL}", "{{host}} {{peer_id}}"),
            min_value=0,
            max_value=1,
            decimals=0,
        ),
        9,
        8,
    )
    grid.add(
        graph(
            29,
            "Probe round trip per server",
            "Round trip of the exporter's rpc_info probe to each reachable server.",
            query(f"petals_server_probe_latency_seconds{MODEL}", "{{host}} {{peer_id}}"),
            unit="s",
            min_value=0,
        ),
        9,
        8,
    )
    grid.add(
        graph(
            30,
            "Bootstrap peers alive",
            "1 while the initial peer (a bootstrap DHT node) answers a dial and a DHT ping "
            "(PetalsBootstrapPeerDown).",
            query("petals_bootstrap_peer_alive", "{{address}}"),
            min_value=0,
            max_value=1,
            decimals=0,
        ),
        8,
        7,
    )
    grid.add(
        graph(
            31,
            "Bootstrap peer round trip",
            "Round trip of the dial and DHT ping to each live initial peer.",
            query("petals_bootstrap_peer_ping_seconds", "{{address}}"),
            unit="s",
            min_value=0,
        ),
        8,
        7,
    )
    grid.add(
        listing(
            32,
            "Servers' own round trips to their next servers",
            "next_pings: the round trip (seconds) each server measured to the servers of its next blocks, "
            "as it announces them (+Inf: its ping failed). petals routes by these.",
            f"petals_server_next_ping_seconds{MODEL}",
        ),
        8,
        7,
    )

    grid.row(104, "Canary (exporter --canary-every)")
    grid.add(
        graph(
            22,
            "Canary steps/s against its objective",
            "Greedy decoding steps/s of the latest canary run through the swarm (0 when it failed), and "
            "the objective (--canary-slo) PetalsCanarySlow compares it with.",
            query(f"petals_canary_steps_per_second{MODEL}", "{{model}}"),
            query(f"petals_canary_slo_steps_per_second{MODEL}", "objective", ref="B"),
            min_value=0,
        ),
        8,
        8,
    )
    grid.add(
        graph(
            23,
            "Canary: seconds per step at each hop",
            "Median client-side time of each server's part of a decoding step in the latest canary run "
            "(network, queue and compute); 'petals-ops swarm trace' splits it.",
            query(f"petals_canary_hop_seconds{MODEL}", "{{host}} {{peer_id}}"),
            unit="s",
            min_value=0,
        ),
        8,
        8,
    )
    grid.add(
        graph(
            24,
            "Canary: network round trip per hop",
            "Fastest rpc_info round trip to each server of the latest canary run: its network share.",
            query(f"petals_canary_hop_network_seconds{MODEL}", "{{host}} {{peer_id}}"),
            unit="s",
            min_value=0,
        ),
        8,
        8,
    )
    grid.add(
        graph(
            25,
            "Canary failures in the last hour",
            "Failed canary runs over the past hour.",
            query('increase(petals_canary_runs_total{result="failure",model=~"$model"}[1h])', "{{model}}"),
            min_value=0,
        ),
        12,
        7,
    )
    grid.add(
        graph(
            26,
            "Time since the latest canary run",
            "Seconds since the latest canary run ended; past the period (--canary-every) the canary is "
            "stuck or the exporter is down.",
            query(f"time() - petals_canary_last_run_timestamp_seconds{MODEL}", "{{model}}"),
            unit="s",
        ),
        12,
        7,
    )

    grid.row(102, "Exporter")
    grid.add(
        graph(
            12,
            "Exporter sees the swarm",
            "petals_exporter_up: the latest DHT walk succeeded; up: Prometheus reached the exporter.",
            query("petals_exporter_up", "{{instance}}"),
            query('up{job="petals-exporter"}', "scrape {{instance}}", ref="B"),
            min_value=0,
            max_value=1,
        ),
        6,
        7,
    )
    grid.add(
        graph(
            13,
            "Snapshot age",
            "Age of the data served; it grows past the refresh period when walks fail.",
            query("petals_exporter_snapshot_age_seconds", "{{instance}}"),
            unit="s",
        ),
        6,
        7,
    )
    grid.add(
        graph(
            14,
            "DHT walk duration",
            "Wall time of the latest DHT walk, and of its reachability probes (part of the walk).",
            query("petals_exporter_refresh_duration_seconds", "{{instance}}"),
            query("petals_exporter_probe_duration_seconds", "probes {{instance}}", ref="B"),
            unit="s",
        ),
        6,
        7,
    )
    grid.add(
        graph(
            15,
            "Refresh errors per second",
            "Failed refreshes, by source (swarm: DHT walk; fleet: container status).",
            query("rate(petals_exporter_refresh_errors_total[$__rate_interval])", "{{source}}"),
            unit="ops",
        ),
        6,
        7,
    )

    grid.row(103, "GPUs (our hosts)")
    grid.add(
        listing(
            16,
            "GPU state per host",
            "What nvidia-smi said of each host's GPUs over SSH (ok, gpu_lost, no_devices, driver_error, "
            "no_nvidia_smi, error), and GPUs seen against the inventory's count. Hosts scraped through "
            "DCGM are not listed here.",
            "petals_gpu_host_state == 1",
            "petals_gpu_visible - petals_gpu_expected",
        ),
        8,
        8,
    )
    per_gpu = "{{host}} GPU {{gpu}}"
    grid.add(
        graph(
            17,
            "GPU utilisation",
            "Utilisation per GPU, from nvidia-smi over SSH or (hosts running it) NVIDIA's DCGM exporter.",
            query("petals_gpu_utilization_ratio or on(host, gpu) (DCGM_FI_DEV_GPU_UTIL / 100)", per_gpu),
            unit="percentunit",
        ),
        8,
        8,
    )
    grid.add(
        graph(
            18,
            "GPU memory used",
            "Share of GPU memory in use; pinned near 1 the next allocation fails (CUDA out of memory).",
            query(
                "petals_gpu_memory_used_bytes / petals_gpu_memory_total_bytes or on(host, gpu) "
                "(DCGM_FI_DEV_FB_USED / (DCGM_FI_DEV_FB_USED + DCGM_FI_DEV_FB_FREE))",
                per_gpu,
            ),
            unit="percentunit",
        ),
        8,
        8,
    )
    grid.add(
        graph(
            19,
            "GPU temperature",
            "Core temperature per GPU.",
            query("petals_gpu_temperature_celsius or on(host, gpu) DCGM_FI_DEV_GPU_TEMP", per_gpu),
            unit="celsius",
        ),
        8,
        8,
    )
    grid.add(
        graph(
            20,
            "GPU power",
            "Power draw per GPU (its limit: petals_gpu_power_limit_watts).",
            query("petals_gpu_power_watts or on(host, gpu) DCGM_FI_DEV_POWER_USAGE", per_gpu),
            unit="watt",
        ),
        8,
        8,
    )
    grid.add(
        graph(
            21,
            "GPU ECC errors",
            "ECC errors since the driver loaded, corrected and uncorrected; uncorrected ones fire "
            "PetalsGpuEccErrors.",
            query("petals_gpu_ecc_errors_total", "{{host}} GPU {{gpu}} {{type}}"),
        ),
        8,
        8,
    )

    data = json.loads(JSONEncoder().encode(board.build()))
    data["id"] = None  # provisioned by uid: Grafana assigns its own numeric id
    return data


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        same = OUTPUT.is_file() and OUTPUT.read_text() == text
        print(f"{OUTPUT}: {'matches' if same else 'DIFFERS from'} monitoring/dashboard.py", file=sys.stderr)
        return 0 if same else 1
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
