"""``petals-ops doctor``: what is wrong with the swarm and our servers, each finding with a one-line fix."""

import click

from petals_ops.cli.options import parse_probe_timeout, swarm_target_options
from petals_ops.cli.terminal import terminal
from petals_ops.util.output import OUTPUT_OPTION
from petals_ops.util.safe_text import printable

ICON = {"critical": "CRITICAL", "warning": "warning", "info": "info"}


@click.command()
@swarm_target_options
@click.option("--inventory", "-i", "inventory", type=click.Path(dir_okay=False), default=None,
              help="Fleet inventory: also check our containers (zombies: running, but their server is absent "
                   "from the DHT or does not answer), and check the swarm they serve.")
@click.option("--hosts", default=None, metavar="A,B", help="With --inventory: these hosts only.")
@click.option("--accept-new-host-keys", is_flag=True, help="Trust hosts whose SSH key is not known yet.")
@click.option("--probe-timeout", default="5s", show_default=True, metavar="DURATION",
              help="How long each server's rpc_info probe and each initial peer's ping may take.")
@click.option("--trace", is_flag=True,
              help="Also run a short canary generation through each route (swarm trace) and name the "
                   "slowest hop with its evidence (needs the model's checkpoint here).")
@click.option("--trace-steps", default=4, show_default=True, type=click.IntRange(1, 64),
              help="Greedy decoding steps per traced route.")
@OUTPUT_OPTION
def doctor(initial_peers, model, dht_prefix, num_blocks, swarm_dir, inventory, hosts, accept_new_host_keys,
           probe_timeout, trace, trace_steps, output):
    """What is wrong with the swarm (and, with --inventory, our servers), each finding with its fix.

    \b
    Checks: blocks with no reachable ONLINE server or only one; servers that announce ONLINE but do not
    answer petals' rpc_info; initial peers that are down; version and dtype skew; with --inventory,
    zombies (our container runs, its server is absent from the DHT or unreachable), stopped containers,
    unreachable hosts; with --trace, the slowest hop. Exit code 0: nothing wrong, 3: warnings only (the
    swarm serves), 1: a critical finding (some block cannot be served, a zombie absent from the DHT).
    """
    from petals_ops.fleet.doctor import fleet_swarm, run_doctor
    from petals_ops.lab.target import resolve_target

    timeout = parse_probe_timeout(probe_timeout)
    inv = opts = None
    own = {}
    if inventory:
        from petals_ops.fleet.inventory import load_inventory
        from petals_ops.fleet.ssh import SSHOptions

        inv = load_inventory(inventory)
        opts = SSHOptions.from_inventory(inv, accept_new_host_keys=accept_new_host_keys)
    if inv is not None and not initial_peers:
        peers, ref = fleet_swarm(inv, hosts, opts)
    else:
        target = resolve_target(initial_peers, model, dht_prefix=dht_prefix, num_blocks=num_blocks,
                                run_dir=swarm_dir)
        peers, ref = target.initial_peers, target.model
        own = _local_hosts(target.local_run_dir)
    report = run_doctor(peers, ref, probe_timeout=timeout, inventory=inv, hosts=hosts, ssh_opts=opts,
                        own_hosts=own, trace=trace, trace_steps=trace_steps)
    if output == "json":
        terminal.json(report.to_dict())
    else:
        terminal.table(["severity", "what", "subject", "finding", "fix"],
                       [[ICON[f.severity], f.kind, f.subject, f.message, f.fix] for f in report.findings],
                       title=f"doctor: {report.dht_prefix}")
        for line in report.checked:
            click.echo(printable(f"checked: {line}"))
        for line in report.notes:
            click.echo(printable(f"note: {line}"))
        verdict = {0: "nothing wrong found", 3: "warnings: the swarm serves, something needs care",
                   1: "CRITICAL: see the findings above"}[report.exit_code]
        click.echo(printable(f"doctor: {verdict}"))
    if report.exit_code:
        raise SystemExit(report.exit_code)


def _local_hosts(run_dir) -> dict[str, str]:
    """peer id -> "local/server-N" for the local swarm's servers (from their identity files)."""
    if not run_dir:
        return {}
    from petals_ops.client import door
    from petals_ops.monitoring.refresher import local_identities

    identities = local_identities(run_dir)
    return {door.peer_id_of_identity(path.read_bytes()): host for host, path in identities.items()}
