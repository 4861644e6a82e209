"""``petals-ops exporter``: serve the swarm's health (and our containers') to Prometheus and as a map page."""

import click

from petals_ops.cli.options import POSITIVE, parse_probe_timeout, probe_option, swarm_target_options
from petals_ops.util.output import info


@click.command()
@swarm_target_options(multiple_models=True)
@click.option("--listen", default="127.0.0.1:9469", show_default=True, envvar="PETALS_OPS_EXPORTER_LISTEN",
              help="HOST:PORT to serve / (the map), /map.json and /metrics on "
                   "(0.0.0.0:9469 for every interface).")
@click.option("--refresh", default="30s", show_default=True, envvar="PETALS_OPS_EXPORTER_REFRESH",
              help="How often to walk the DHT (e.g. 30s, 1m). Scrapes in between serve the latest walk.")
@click.option("--inventory", type=click.Path(dir_okay=False), default=None, envvar="PETALS_OPS_INVENTORY",
              help="Fleet inventory: also export our containers (running, restarts, last exit code) and "
                   "label our servers with their host.")
@click.option("--canary-every", default=None, metavar="DURATION",
              help="Run a canary generation (a few greedy steps, timed per hop) this often, e.g. 5m; "
                   "off by default. Needs the model's checkpoint here (--model DIR or the local swarm).")
@click.option("--canary-timeout", default="60s", show_default=True, metavar="DURATION",
              help="Longest a canary run may take.")
@click.option("--canary-slo", default=0.5, show_default=True, type=POSITIVE,
              help="Steps/s the canary should reach (exported for the PetalsCanarySlow alert).")
@probe_option
@click.option("--probe-ttl", default="25s", show_default=True, metavar="DURATION",
              help="Reuse a server's answer to the reachability probe this long (a server that did not "
                   "answer is probed again at every refresh).")
def exporter(initial_peers, model, dht_prefix, num_blocks, swarm_dir, listen, refresh, inventory,
             canary_every, canary_timeout, canary_slo, probe_timeout, no_probe, probe_ttl):
    """Prometheus exporter of swarm health, and a live swarm map page for people.

    \b
    Walks the DHT every --refresh in the background; each scrape of /metrics serves the latest walk
    and its age (petals_exporter_snapshot_age_seconds). / is a map of servers x blocks per model that
    redraws itself (our servers marked, from --inventory or the local swarm); /map.json is its data.
    Monitors the local swarm unless --initial-peers and --model are given. Each refresh also probes the
    ONLINE servers (petals' rpc_info) and the initial peers (petals_server_reachable,
    petals_bootstrap_peer_alive). Metrics: docs/monitoring.md.
    Stop with Ctrl-C or SIGTERM.
    """
    from petals_ops.monitoring.refresher import Refresher, load_fleet_api, local_identities
    from petals_ops.monitoring.server import parse_duration, parse_listen, run_until_signalled, start_exporter
    from petals_ops.lab.target import resolve_target

    parse_listen(listen)
    interval = parse_duration(refresh)
    every = timeout = None
    if canary_every is not None:
        every = parse_duration(canary_every, option="--canary-every", minimum=5.0)
        timeout = parse_duration(canary_timeout, option="--canary-timeout", minimum=1.0)
    probe_s = None if no_probe else parse_probe_timeout(probe_timeout)
    ttl = parse_duration(probe_ttl, option="--probe-ttl", minimum=0.0)
    targets = [resolve_target(initial_peers, m, dht_prefix=dht_prefix, num_blocks=num_blocks,
                              run_dir=swarm_dir)
               for m in (model or (None,))]
    inv, read_fleet = None, None
    if inventory:
        load_inventory, read_fleet = load_fleet_api()
        inv = load_inventory(inventory)
    local_dir = targets[0].local_run_dir
    rediscover = None
    if local_dir:  # the local swarm may be restarted (a new DHT port): re-read its state when cut off
        from petals_ops.lab.local_swarm import load_running

        def rediscover():
            return load_running(local_dir).initial_peers, local_identities(local_dir)
    refresher = Refresher(
        targets[0].initial_peers, [t.model for t in targets], interval=interval, inventory=inv,
        read_fleet=read_fleet, identities=local_identities(local_dir), rediscover=rediscover,
        probe_timeout=probe_s, probe_ttl=ttl,
    )
    if every is not None:
        from petals_ops.monitoring.canary import Canary

        refresher.canary = Canary(lambda: refresher.initial_peers, targets[0].model, every=every,
                                  timeout=timeout, slo=canary_slo)
    running = start_exporter(refresher, listen)
    host, port = running.address
    models = ", ".join(t.model.dht_prefix for t in targets)
    shown = f"[{host}]" if ":" in host else host
    info(f"exporter serving the swarm map at http://{shown}:{port}/ and metrics at /metrics for {models} "
         f"(DHT walk every {interval:g} s); stop with Ctrl-C or SIGTERM")
    run_until_signalled(running, on_stop=lambda name: info(f"{name}: stopping the exporter"))
    info("exporter stopped")
