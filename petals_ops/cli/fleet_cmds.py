"""Fleet commands (top level): hosts check, provision, plan, up, down, status, logs, restart.

Thin: parse, call petals_ops.fleet, print a table or JSON, map failures to exit codes (0 ok, 1 all hosts
failed, 2 bad input, 3 some hosts failed). fabric, docker and petals load inside the commands.
"""

from __future__ import annotations

import json

import click

from petals_ops.cli.options import POSITIVE
from petals_ops.cli.progress import block_progress
from petals_ops.errors import EXIT_OK, EXIT_PARTIAL, OpsError, PartialFailure, redact
from petals_ops.output import OUTPUT_OPTION, emit_json, render_table


def _common(dry_run: bool = True):
    def deco(func):
        options = [
            click.option("--inventory", "-i", "inventory", type=click.Path(dir_okay=False), default=None,
                         envvar="PETALS_OPS_INVENTORY", help="Inventory YAML [default: ./petals-ops.yaml]."),
            click.option("--hosts", "hosts", default=None, metavar="A,B",
                         help="Hosts to act on (inventory names or ssh-config aliases) [default: all in the inventory]."),
            click.option("--accept-new-host-keys", is_flag=True,
                         help="Trust hosts whose SSH key is not in known_hosts yet, and record it (trust on first use)."),
        ]
        if dry_run:
            options.append(click.option("--dry-run", is_flag=True, help="Show what would change; change nothing."))
        for option in reversed(options):
            func = option(func)
        return func

    return deco


def _load(inventory, accept_new_host_keys):
    from petals_ops.fleet.inventory import load_inventory
    from petals_ops.fleet.ssh import SSHOptions

    inv = load_inventory(inventory)
    return inv, SSHOptions.from_inventory(inv, accept_new_host_keys=accept_new_host_keys)


def _finish(oks: list[bool], failures: list[str], what: str) -> None:
    from petals_ops.fleet.parallel import exit_code

    code = exit_code(oks)
    if code == EXIT_OK:
        return
    summary = f"{what} failed on {len(failures)} of {len(oks)} host(s): {'; '.join(failures)}"
    if code == EXIT_PARTIAL:
        raise PartialFailure(summary, fix="the other hosts are done; fix the failing ones and run it again")
    raise OpsError(summary, fix="fix the hosts and run it again")


# ---------------------------------------------------------------------------------------------------
@click.group("hosts")
def hosts_group():
    """The fleet's hosts over SSH (inventory: petals-ops.yaml)."""


@hosts_group.command("check")
@_common(dry_run=False)
@OUTPUT_OPTION
def hosts_check(inventory, hosts, accept_new_host_keys, output):
    """Per host, in parallel: reachable, OS, GPUs, free disk, Docker, NVIDIA toolkit, Docker access, ports.

    Exit code 1/3 when any host fails a check (3: some hosts are fine).
    """
    from petals_ops.fleet.hostcheck import check_hosts

    inv, opts = _load(inventory, accept_new_host_keys)
    reports = check_hosts(inv, hosts, opts=opts)
    if output == "json":
        emit_json([r.to_dict() for r in reports])
    else:
        names = []
        for r in reports:
            names += [c.name for c in r.checks if c.name not in names]
        rows = []
        for name in names:
            row = [name]
            for r in reports:
                c = r.check(name)
                row.append("" if c is None else f"{'ok' if c.ok else 'FAIL'}: {c.detail}")
            rows.append(row)
        rows.append(["result"] + ["ok" if r.ok else "FAIL" for r in reports])
        render_table(["check"] + [r.host for r in reports], rows, title="hosts check")
    _finish([r.ok for r in reports],
            [f"{r.host} ({r.error or ', '.join(c.name for c in r.checks if not c.ok)})" for r in reports if not r.ok],
            "hosts check")


# ---------------------------------------------------------------------------------------------------
@click.command("provision")
@_common()
@OUTPUT_OPTION
def provision_cmd(inventory, hosts, accept_new_host_keys, dry_run, output):
    """Install Docker and the NVIDIA container toolkit where missing (Ubuntu 22.04), idempotently.

    Checks each step, applies only what is missing, verifies; restarts Docker only when its config
    changed. --dry-run prints what would change and changes nothing.
    """
    from petals_ops.fleet.provision import provision

    inv, opts = _load(inventory, accept_new_host_keys)
    reports = provision(inv, hosts, opts=opts, dry_run=dry_run)
    if output == "json":
        emit_json([r.to_dict() for r in reports])
    else:
        rows = []
        for r in reports:
            if r.error:
                rows.append([r.host, "-", "FAILED", r.error])
            for s in r.steps:
                rows.append([r.host, s.name, s.status, s.detail + ("".join(f"\n  $ {c.splitlines()[0]}" + (" ..." if "\n" in c else "")
                                                                           for c in s.commands) if dry_run else "")])
        render_table(["host", "step", "status", "detail"], rows, title="provision" + (" (dry run: nothing changed)" if dry_run else ""))
    _finish([r.ok for r in reports],
            [f"{r.host} ({r.error or ', '.join(s.name for s in r.steps if s.status in ('failed', 'manual'))})" for r in reports if not r.ok],
            "provision")


# ---------------------------------------------------------------------------------------------------
@click.command("plan")
@_common(dry_run=False)
@OUTPUT_OPTION
@click.option("--as-model", default=None, metavar="MODEL",
              help="Assign contiguous block ranges as if each server held MODEL's real blocks on its host's GPU "
                   "(e.g. bigscience/bloom: five A10s in nf4 get 0:14 ... 56:70); the inventory's model must have "
                   "as many blocks (a rehearsal's tiny BLOOM with --layers 70).")
@click.option("--quant", type=click.Choice(["none", "int8", "nf4"]), default="nf4", show_default=True,
              help="With --as-model: the quantisation the real servers would use.")
def plan_cmd(inventory, hosts, accept_new_host_keys, output, as_model, quant):
    """Blocks per GPU (Petals' memory accounting) per quantisation and cache size, coverage, exact commands.

    Offline: GPU memory comes from the inventory (hosts.NAME.gpu_memory_bytes; default an A10).
    With --as-model the plan assigns the ranges (JSON: "assignment", host -> ranges).
    """
    from petals_ops.fleet.plan import make_plan, plan_as_if
    from petals_ops.swarm_health import format_block_ranges

    inv, opts = _load(inventory, accept_new_host_keys)
    if as_model:
        plan = plan_as_if(inv, hosts, as_model=as_model, quant=quant, opts=opts)
    else:
        plan = make_plan(inv, hosts, opts=opts)
    if output == "json":
        emit_json(json.loads(redact(json.dumps(plan.to_dict()))))  # the inventory refuses tokens; belt and braces
        return
    for s in plan.servers:
        if s.fits:
            caches = sorted(next(iter(s.fits.values())))
            render_table(["quant \\ attn_cache_tokens"] + [str(t) for t in caches],
                         [[q] + [s.fits[q][t] for t in caches] for q in s.fits],
                         title=f"{s.host}/{s.container} ({s.device}, {s.gpu_memory_gib} GiB): blocks that fit")
    render_table(["host", "container", "device", "quant", "cache tokens", "fit", "blocks"],
                 [[s.host, s.container, s.device, s.chosen_quant, s.chosen_cache_tokens, s.blocks_fit, s.blocks]
                  for s in plan.servers],
                 title=f"plan for {plan.model} ({plan.num_blocks} blocks)" + (f", as if serving {plan.as_model}" if plan.as_model else ""))
    cover = {True: "yes", False: "NO", "likely": "likely (enough blocks; Petals picks the spans)"}[plan.covers_model]
    click.echo(f"covers the whole model: {cover}; uncovered pinned blocks: {format_block_ranges(plan.uncovered) or 'none'}; "
               f"blocks assigned: {plan.total_blocks_assigned}")
    for w in plan.warnings:
        click.echo(f"warning: {w}")
    for s in plan.servers:
        click.echo(redact(f"{s.host}/{s.container}: {s.command_line}"))


# ---------------------------------------------------------------------------------------------------
def _fleet_table(result, title: str) -> None:
    rows = []
    for r in result.rows():
        detail = r["error"] or ""
        if r["log_tail"]:
            detail += "\n" + "\n".join(r["log_tail"][-8:])
        rows.append([r["host"], r["container"], r["action"], r["peer_id"], r["blocks"], r["dht_state"],
                     "ok" if not r["error"] else "FAILED", detail])
    render_table(["host", "container", "action", "peer id", "blocks", "DHT", "result", "detail"], rows, title=title)


def _fleet_finish(result, what: str) -> None:
    bad = []
    for h in result.hosts:
        if not result.host_ok(h):
            err = result.host_errors.get(h) or next(s.error for s in result.servers if s.host == h and s.error)
            bad.append(f"{h} ({err})")
    _finish([result.host_ok(h) for h in result.hosts], bad, what)


@click.command("up")
@_common()
@OUTPUT_OPTION
@click.option("--timeout", default=1800, show_default=True, type=POSITIVE,
              help="Seconds to wait until every server is ONLINE in the swarm's DHT.")
@click.option("--no-wait", is_flag=True, help="Do not wait for the servers to be ONLINE.")
@click.option("--parallel", default=None, type=click.IntRange(min=1), help="Hosts at a time [default: all].")
def up_cmd(inventory, hosts, accept_new_host_keys, dry_run, output, timeout, no_wait, parallel):
    """Create or replace each host's server containers (one per GPU), then wait until the DHT shows them ONLINE.

    Idempotent: a container whose configuration hash is unchanged is left alone; a changed one is
    recreated (same identity file, so the same peer id). On failure the table shows the container's last
    log lines.
    """
    from petals_ops.fleet.up import apply

    inv, opts = _load(inventory, accept_new_host_keys)
    with block_progress("servers ONLINE") as update:
        result = apply(inv, hosts, opts=opts, dry_run=dry_run, wait=not no_wait, timeout=timeout,
                       parallel=parallel, on_progress=update)
    if output == "json":
        emit_json({"seconds": result.seconds, "servers": result.rows(), "dry_run": dry_run})
    else:
        _fleet_table(result, "up" + (" (dry run: nothing changed)" if dry_run else f" in {result.seconds:.1f} s"))
    _fleet_finish(result, "up")


@click.command("restart")
@_common()
@OUTPUT_OPTION
@click.option("--timeout", default=1800, show_default=True, type=POSITIVE, help="Seconds to wait until ONLINE again.")
@click.option("--no-wait", is_flag=True, help="Do not wait for the servers to be ONLINE.")
def restart_cmd(inventory, hosts, accept_new_host_keys, dry_run, output, timeout, no_wait):
    """Restart the server containers (same peer ids) and wait until they are ONLINE again."""
    from petals_ops.fleet.up import restart

    inv, opts = _load(inventory, accept_new_host_keys)
    with block_progress("servers ONLINE") as update:
        result = restart(inv, hosts, opts=opts, dry_run=dry_run, wait=not no_wait, timeout=timeout, on_progress=update)
    if output == "json":
        emit_json({"seconds": result.seconds, "servers": result.rows(), "dry_run": dry_run})
    else:
        _fleet_table(result, "restart" + (" (dry run: nothing changed)" if dry_run else ""))
    _fleet_finish(result, "restart")


@click.command("down")
@_common()
@OUTPUT_OPTION
def down_cmd(inventory, hosts, accept_new_host_keys, dry_run, output):
    """Stop and remove the server containers (SIGINT first: a clean OFFLINE); the cache volume and identities stay."""
    from petals_ops.fleet.down import down

    inv, opts = _load(inventory, accept_new_host_keys)
    rows, _code = down(inv, hosts, opts=opts, dry_run=dry_run)
    if output == "json":
        emit_json([r.__dict__ for r in rows])
    else:
        render_table(["host", "container", "action", "error"], [[r.host, r.container, r.action, r.error] for r in rows],
                     title="down" + (" (dry run: nothing changed)" if dry_run else ""))
    hosts_seen = list(dict.fromkeys(r.host for r in rows))
    _finish([all(r.action != "failed" for r in rows if r.host == h) for h in hosts_seen],
            [f"{r.host} ({r.error})" for r in rows if r.action == "failed"], "down")


@click.command("status")
@_common(dry_run=False)
@OUTPUT_OPTION
def status_cmd(inventory, hosts, accept_new_host_keys, output):
    """Containers per host side by side with what the swarm's DHT says of each server (matched by peer id).

    Exit code 1/3 when a host is unreachable or a server is not running/ONLINE (3: others are fine).
    """
    from petals_ops.fleet.ssh import select_hosts
    from petals_ops.fleet.status import ContainerStatus, container_statuses
    from petals_ops.fleet.up import _model_ref

    inv, opts = _load(inventory, accept_new_host_keys)
    names = select_hosts(inv, hosts, opts)
    statuses = container_statuses(inv, names, opts=opts)
    found = {s.host for s in statuses}
    for h in names:  # a reachable host without servers must not pass silently
        if h not in found:
            statuses.append(ContainerStatus(host=h, container="", running=False, restart_count=0, exit_code=None,
                                            peer_id=None, error=f"{h}: no petals-ops containers (run 'petals-ops up')"))
    statuses.sort(key=lambda s: names.index(s.host))
    peers = list(dict.fromkeys(p for h in names for p in inv.server_for(h).initial_peers))
    snap, dht_error = None, None
    if peers and any(s.peer_id for s in statuses):
        from petals_ops.swarm_health import take_snapshot

        try:
            snap = take_snapshot(peers, _model_ref(inv, names))
        except OpsError as e:
            dht_error = e.one_line()
    rows = []
    for s in statuses:
        rec = snap.server(s.peer_id) if snap and s.peer_id else None
        rows.append({**s.__dict__, "dht_state": (rec.state if rec else ("absent" if snap else None)),
                     "dht_blocks": f"{rec.start_block}:{rec.end_block}" if rec else None,
                     "throughput": rec.throughput if rec else None})
    if output == "json":
        emit_json({"containers": rows, "dht_error": dht_error,
                   "coverage": snap.coverage() if snap else None})
    else:
        render_table(["host", "container", "running", "restarts", "exit code", "peer id", "DHT state", "DHT blocks", "error"],
                     [[r["host"], r["container"], r["running"] if not r["error"] else "", r["restart_count"] if not r["error"] else "",
                       r["exit_code"], r["peer_id"], r["dht_state"], r["dht_blocks"], r["error"]] for r in rows],
                     title="fleet status")
        if snap:
            cov = snap.coverage()
            click.echo(f"swarm {snap.dht_prefix}: uncovered blocks {cov['uncovered_blocks'] or 'none'}, "
                       f"full forward pass: {'yes' if cov['fully_served'] else 'NO'}")
        elif dht_error:
            click.echo(f"swarm: {dht_error}")
    by_host: dict[str, bool] = {}
    for r in rows:
        good = not r["error"] and r["running"] and (snap is None or r["dht_state"] == "ONLINE")
        by_host[r["host"]] = by_host.get(r["host"], True) and bool(good)
    _finish(list(by_host.values()),
            [f"{h} ({next((r['error'] for r in rows if r['host'] == h and r['error']), 'a server is not running/ONLINE')})"
             for h, ok in by_host.items() if not ok], "status")


@click.command("logs")
@click.argument("host")
@click.option("--inventory", "-i", "inventory", type=click.Path(dir_okay=False), default=None, envvar="PETALS_OPS_INVENTORY",
              help="Inventory YAML [default: ./petals-ops.yaml].")
@click.option("--container", default=None, help="Which server container (when the host runs several).")
@click.option("--tail", default=100, show_default=True, type=click.IntRange(min=-1), help="Last N lines (-1: all).")
@click.option("--follow", "-f", is_flag=True, help="Keep streaming new lines (Ctrl-C stops).")
@click.option("--accept-new-host-keys", is_flag=True, help="Trust a host whose SSH key is not in known_hosts yet.")
def logs_cmd(host, inventory, container, tail, follow, accept_new_host_keys):
    """The log of HOST's server container(s)."""
    import sys

    from petals_ops.fleet.logs import stream_logs

    inv, opts = _load(inventory, accept_new_host_keys)

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    stream_logs(inv, host, write, container=container, tail=None if tail < 0 else tail, follow=follow, opts=opts)


COMMANDS = [hosts_group, provision_cmd, plan_cmd, up_cmd, down_cmd, status_cmd, logs_cmd, restart_cmd]
