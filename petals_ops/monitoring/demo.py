"""The demo's exporter step: start the exporter against the local swarm, scrape it once, show a few
metrics."""

from __future__ import annotations

import time
import urllib.request

from petals_ops.util.errors import OpsError

SHOWN = (
    "petals_model_fully_served", "petals_model_uncovered_blocks", "petals_model_min_online_servers",
    "petals_block_online_servers", "petals_model_servers", "petals_own_server_online",
    "petals_server_throughput_tokens_per_second", "petals_exporter_up",
    "petals_exporter_refresh_duration_seconds",
)


def show_exporter(swarm, *, refresh: float = 2.0, timeout: float = 60.0) -> str:
    """Run an exporter on a free 127.0.0.1 port until its first DHT walk, print chosen samples, stop it."""
    from prometheus_client.parser import text_string_to_metric_families

    from petals_ops.monitoring.refresher import Refresher, local_identities
    from petals_ops.monitoring.server import start_exporter

    refresher = Refresher(swarm.initial_peers, [swarm.model], interval=refresh,
                          identities=local_identities(swarm.run_dir))
    exporter = start_exporter(refresher, "127.0.0.1:0")
    host, port = exporter.address
    url = f"http://{host}:{port}/metrics"
    try:
        deadline = time.monotonic() + timeout
        while refresher.state.refreshes == 0 or not refresher.state.up:
            if time.monotonic() > deadline:
                raise OpsError(f"the exporter did not walk the swarm in {timeout:.0f} s "
                               f"({refresher.state.last_error})",
                               fix="check the swarm with 'petals-ops swarm status'")
            time.sleep(0.2)
        with urllib.request.urlopen(url, timeout=10) as r:
            text = r.read().decode()
    finally:
        exporter.close()
    print(f"scraped {url} ({len(text.splitlines())} lines); a few samples:")
    for family in text_string_to_metric_families(text):
        if family.name in SHOWN or family.name + "_total" in SHOWN:
            for s in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in s.labels.items() if k != "public_name")
                print(f"  {s.name}{{{labels}}} {s.value:g}" if labels else f"  {s.name} {s.value:g}")
    print("exporter stopped (run it yourself: petals-ops exporter; metrics in docs/monitoring.md)")
    return text
