"""Fleet commands (top level): hosts check, provision, plan, up, down, status, logs, restart.

Thin: parse, call petals_ops.fleet, print its per-host results (:func:`report`: a table or JSON) and end
with their exit code (0 ok, 1 all hosts failed, 2 bad input, 3 some hosts failed). fabric, docker and
petals load inside the commands. A new fleet command is one module in petals_ops/fleet/ (an
``Operation``) plus its click command here, added to ``COMMANDS`` (docs/fleet.md).
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any, Sequence

import click

from petals_ops.cli.options import POSITIVE
from petals_ops.cli.terminal import terminal
from petals_ops.util.errors import EXIT_OK, redact
from petals_ops.util.output import OUTPUT_OPTION
from petals_ops.util.safe_text import printable


def report(results: Sequence, what: str, columns: Sequence[str], *, output: str = "table",
           dry_run: bool = False, title: str | None = None, extra: dict[str, Any] | None = None,
           notes: Sequence[str] = ()) -> None:
    """Print a fleet command's per-host results and raise the error their exit code needs (returns only
    when every host is ok).

    ``columns``: the row fields shown in the table, after ``host``; the table ends with result and detail
    (a dry run also shows each row's commands). JSON: ``{command, dry_run, ok, exit_code, hosts, **extra}``.
    """
    from petals_ops.fleet.result import exit_code, failure

    code = exit_code(results)
    if output == "json":
        terminal.json({"command": what, "dry_run": dry_run, "ok": code == EXIT_OK, "exit_code": code,
                   "hosts": [r.to_dict() for r in results], **(extra or {})})
    else:
        table = []
        for r in results:
            rows = [row if isinstance(row, dict) else dataclasses.asdict(row) for row in r.rows]
            if r.error and not any(row.get("error") or row.get("ok") is False for row in rows):
                rows.append({"error": r.error})  # a failure no row shows gets a row of its own
            for row in rows:
                bad = bool(row.get("error")) or row.get("ok") is False
                detail = row.get("error") or row.get("detail") or ""
                if dry_run:  # the commands a dry run would run, first line of each
                    detail += "".join(f"\n  $ {c.splitlines()[0]}" + (" ..." if "\n" in c else "")
                                      for c in row.get("commands") or ())
                if row.get("log_tail"):
                    detail += "\n" + "\n".join(row["log_tail"][-8:])
                cells = [_cell(row.get(c)) for c in columns]
                table.append([r.host, *cells, "FAILED" if bad else "ok", detail])
        suffix = " (dry run: nothing changed)" if dry_run else ""
        terminal.table(["host", *columns, "result", "detail"], table, title=(title or what) + suffix)
        for line in notes:
            terminal.echo(line)
    error = failure(results, what)
    if error is not None:
        raise error


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _common(dry_run: bool = True, dry_run_help: str = "Print the changes computed from each host's state; "
                                                          "change nothing."):
    def deco(func):
        options = [
            click.option("--inventory", "-i", "inventory", type=click.Path(dir_okay=False), default=None,
                         envvar="PETALS_OPS_INVENTORY", help="Inventory YAML [default: ./petals-ops.yaml]."),
            click.option("--hosts", "hosts", default=None, metavar="A,B",
                         help="Hosts to act on (inventory names or ssh-config aliases) "
                              "[default: all in the inventory]."),
            click.option("--accept-new-host-keys", is_flag=True,
                         help="Trust hosts whose SSH key is not in known_hosts yet, and record it "
                              "(trust on first use)."),
        ]
        if dry_run:
            options.append(click.option("--dry-run", is_flag=True, help=dry_run_help))
        for option in reversed(options):
            func = option(func)
        return func

    return deco


def _load(inventory, accept_new_host_keys):
    from petals_ops.fleet.inventory import load_inventory
    from petals_ops.fleet.ssh import SSHOptions

    inv = load_inventory(inventory)
    return inv, SSHOptions.from_inventory(inv, accept_new_host_keys=accept_new_host_keys)


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
    report(check_hosts(inv, hosts, opts=opts), "hosts check", ["check"], output=output)


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
    results = provision(inv, hosts, opts=opts, dry_run=dry_run)
    report(results, "provision", ["step", "status"], output=output, dry_run=dry_run)


# ---------------------------------------------------------------------------------------------------
@click.command("plan")
@_common(dry_run=False)
@OUTPUT_OPTION
@click.option("--as-model", default=None, metavar="MODEL",
              help="Assign contiguous block ranges as if each server held MODEL's real blocks on its "
                   "host's GPU (e.g. bigscience/bloom: five A10s in nf4 get 0:14 ... 56:70); the inventory's "
                   "model must have as many blocks (a rehearsal's tiny BLOOM with --layers 70).")
@click.option("--quant", type=click.Choice(["none", "int8", "nf4"]), default=None,
              help="With --as-model: the quantisation the real servers would use [default: nf4].")
def plan_cmd(inventory, hosts, accept_new_host_keys, output, as_model, quant):
    """Blocks per GPU (Petals' memory accounting) per quantisation and cache size, coverage, exact commands.

    Offline: GPU memory comes from the inventory (hosts.NAME.gpu_memory_bytes; default an A10).
    With --as-model the plan assigns the ranges (JSON: "assignment", host -> ranges).
    """
    from petals_ops.fleet.plan import make_plan, plan_as_if
    from petals_ops.swarm.health import format_block_ranges

    if quant and not as_model:
        from petals_ops.util.errors import InputError

        raise InputError("--quant applies only with --as-model",
                         fix="add --as-model bigscience/bloom, or set server.quant_type in the inventory")
    inv, opts = _load(inventory, accept_new_host_keys)
    if as_model:
        plan = plan_as_if(inv, hosts, as_model=as_model, quant=quant or "nf4", opts=opts)
    else:
        plan = make_plan(inv, hosts, opts=opts)
    if output == "json":
        # the inventory refuses tokens; belt and braces
        terminal.json(json.loads(redact(json.dumps(plan.to_dict()))))
        return
    for s in plan.servers:
        if s.fits:
            caches = sorted(next(iter(s.fits.values())))
            terminal.table(["quant \\ attn_cache_tokens"] + [str(t) for t in caches],
                           [[q] + [s.fits[q][t] for t in caches] for q in s.fits],
                           title=f"{s.host}/{s.container} ({s.device}, {s.gpu_memory_gib} GiB): "
                                 "blocks that fit")
    terminal.table(["host", "container", "device", "quant", "cache tokens", "fit", "blocks"],
                   [[s.host, s.container, s.device, s.chosen_quant, s.chosen_cache_tokens, s.blocks_fit,
                     s.blocks] for s in plan.servers],
                   title=f"plan for {plan.model} ({plan.num_blocks} blocks)"
                         + (f", as if serving {plan.as_model}" if plan.as_model else ""))
    cover = {True: "yes", False: "NO",
             "likely": "likely (enough blocks; Petals picks the spans)"}[plan.covers_model]
    click.echo(f"covers the whole model: {cover}; "
               f"uncovered pinned blocks: {format_block_ranges(plan.uncovered) or 'none'}; "
               f"blocks assigned: {plan.total_blocks_assigned}")
    click.echo(f"swarm: {plan.swarm}")
    for w in plan.warnings:
        click.echo(f"warning: {w}")
    for s in plan.servers:
        click.echo(redact(f"{s.host}/{s.container}: {s.command_line}"))


# ---------------------------------------------------------------------------------------------------
SERVER_COLUMNS = ["container", "action", "peer_id", "blocks", "dht_state"]


def _changes_notes(results, dry_run: bool) -> list[str]:
    """--dry-run: the computed changes, one line each (what the apply step would do)."""
    if not dry_run:
        return []
    lines = [f"{r.host}: {c}" for r in results for c in r.changed]
    return ["changes:"] + [f"  {line}" for line in lines] if lines else ["no changes"]


@click.command("up")
@_common()
@OUTPUT_OPTION
@click.option("--timeout", default=1800, show_default=True, type=POSITIVE,
              help="Seconds to wait until every server is ONLINE in the swarm's DHT.")
@click.option("--no-wait", is_flag=True, help="Do not wait for the servers to be ONLINE.")
@click.option("--parallel", default=None, type=click.IntRange(min=1), help="Hosts at a time [default: all].")
def up_cmd(inventory, hosts, accept_new_host_keys, dry_run, output, timeout, no_wait, parallel):
    """Create or replace each host's server containers (one per GPU), then wait until the DHT shows them
    ONLINE.

    Idempotent: a container whose configuration hash is unchanged is left alone; a changed one is
    recreated (same identity file, so the same peer id). On failure the table shows the container's last
    log lines.
    """
    from petals_ops.fleet.up import up

    inv, opts = _load(inventory, accept_new_host_keys)
    started = time.monotonic()
    with terminal.progress("servers ONLINE", eta=False) as bar:
        results = up(inv, hosts, opts=opts, dry_run=dry_run, wait=not no_wait, timeout=timeout,
                     parallel=parallel, on_progress=lambda done, total, _now: bar.update(done, total))
    seconds = round(time.monotonic() - started, 2)
    report(results, "up", SERVER_COLUMNS, output=output, dry_run=dry_run, extra={"seconds": seconds},
           title=None if dry_run else f"up in {seconds:.1f} s", notes=_changes_notes(results, dry_run))


@click.command("restart")
@_common()
@OUTPUT_OPTION
@click.option("--timeout", default=1800, show_default=True, type=POSITIVE,
              help="Seconds to wait until ONLINE again.")
@click.option("--no-wait", is_flag=True, help="Do not wait for the servers to be ONLINE.")
def restart_cmd(inventory, hosts, accept_new_host_keys, dry_run, output, timeout, no_wait):
    """Restart the server containers (same peer ids) and wait until they are ONLINE again."""
    from petals_ops.fleet.up import restart

    inv, opts = _load(inventory, accept_new_host_keys)
    started = time.monotonic()
    with terminal.progress("servers ONLINE", eta=False) as bar:
        results = restart(inv, hosts, opts=opts, dry_run=dry_run, wait=not no_wait, timeout=timeout,
                          on_progress=lambda done, total, _now: bar.update(done, total))
    report(results, "restart", SERVER_COLUMNS, output=output, dry_run=dry_run,
           extra={"seconds": round(time.monotonic() - started, 2)}, notes=_changes_notes(results, dry_run))


@click.command("down")
@_common()
@OUTPUT_OPTION
def down_cmd(inventory, hosts, accept_new_host_keys, dry_run, output):
    """Stop and remove the server containers (SIGINT first: a clean OFFLINE); the cache volume and the
    identities stay."""
    from petals_ops.fleet.down import down

    inv, opts = _load(inventory, accept_new_host_keys)
    results = down(inv, hosts, opts=opts, dry_run=dry_run)
    report(results, "down", ["container", "action"], output=output, dry_run=dry_run)


@click.command("status")
@_common(dry_run=False)
@OUTPUT_OPTION
def status_cmd(inventory, hosts, accept_new_host_keys, output):
    """Containers per host side by side with what the swarm's DHT says of each server (matched by peer id).

    Exit code 1/3 when a host is unreachable or a server is not running/ONLINE (3: others are fine).
    """
    from petals_ops.fleet.status import fleet_status

    inv, opts = _load(inventory, accept_new_host_keys)
    st = fleet_status(inv, hosts, opts=opts)
    notes = []
    if st.coverage:
        notes.append(f"swarm {st.dht_prefix}: uncovered blocks {st.coverage['uncovered_blocks'] or 'none'}, "
                     f"full forward pass: {'yes' if st.coverage['fully_served'] else 'NO'}")
    elif st.dht_error:
        notes.append(f"swarm: {st.dht_error}")
    if st.public_swarm:
        notes.append("swarm: the public one (no initial_peers in the inventory): "
                     "checked through petals' published peers")
    notes += [f"gpus {g.host}: {_gpu_line(g)}" for g in st.gpus]
    report(st.hosts, "status", ["container", "running", "restart_count", "exit_code", "peer_id", "dht_state",
                                "dht_blocks"], output=output, title="fleet status", notes=notes,
           extra={"dht_error": st.dht_error, "coverage": st.coverage,
                  "gpus": [dataclasses.asdict(g) for g in st.gpus]})


def _gpu_line(g) -> str:
    """One line per host: state, then each GPU's utilisation, memory, temperature, power, ECC."""
    if not g.gpus:
        return f"{g.state}" + (f" ({g.detail})" if g.detail else "")
    parts = []
    for x in g.gpus:
        mem = (f"{x.memory_used_bytes / 2**30:.1f}/{x.memory_total_bytes / 2**30:.1f} GiB"
               if x.memory_used_bytes is not None and x.memory_total_bytes else "mem ?")
        util = f"{x.utilization_ratio:.0%}" if x.utilization_ratio is not None else "?"
        parts.append(f"#{x.index} {x.name} {util} {mem} {x.temperature_celsius or '?'} C "
                     f"{x.power_watts or '?'} W ecc "
                     f"{x.ecc_uncorrected if x.ecc_uncorrected is not None else '-'}")
    return f"{g.state}: " + "; ".join(parts)


@click.command("logs")
@click.argument("host")
@click.option("--inventory", "-i", "inventory", type=click.Path(dir_okay=False), default=None,
              envvar="PETALS_OPS_INVENTORY",
              help="Inventory YAML [default: ./petals-ops.yaml].")
@click.option("--container", default=None, help="Which server container (when the host runs several).")
@click.option("--tail", default=100, show_default=True, type=click.IntRange(min=-1),
              help="Last N lines (-1: all).")
@click.option("--follow", "-f", is_flag=True, help="Keep streaming new lines (Ctrl-C stops).")
@click.option("--accept-new-host-keys", is_flag=True,
              help="Trust a host whose SSH key is not in known_hosts yet.")
def logs_cmd(host, inventory, container, tail, follow, accept_new_host_keys):
    """The log of HOST's server container(s)."""
    import sys

    from petals_ops.fleet.logs import stream_logs

    inv, opts = _load(inventory, accept_new_host_keys)

    def write(text: str) -> None:
        sys.stdout.write(printable(text, keep_newlines=True))  # a server's log quotes remote peers
        sys.stdout.flush()

    stream_logs(inv, host, write, container=container, tail=None if tail < 0 else tail, follow=follow,
                opts=opts)


@click.command("watch")
@_common(dry_run_help="Take --bad-readings readings, print the remediations watch would make, exit; "
                      "change nothing.")
@click.option("--interval", default="60s", show_default=True, envvar="PETALS_OPS_WATCH_INTERVAL",
              help="Time between passes (e.g. 30s, 2m).")
@click.option("--once", is_flag=True, help="One pass (read, plan, act), then exit (for cron).")
@click.option("--bad-readings", default=3, show_default=True, type=click.IntRange(1, 100),
              help="Consecutive bad readings of a server before acting on it.")
@click.option("--backoff", default="30s", show_default=True,
              help="Wait after a server's first attempt; doubles with each further attempt (up to 30m).")
@click.option("--max-per-server-per-hour", default=4, show_default=True, type=click.IntRange(1, 1000),
              help="Actions on one server per hour; more are held back (a flapping server).")
@click.option("--max-actions-per-pass", default=2, show_default=True, type=click.IntRange(1, 1000),
              help="Actions in one pass across the fleet (no restart storm).")
@click.option("--healthy-reset", default="10m", show_default=True,
              help="Healthy this long after an action: the server's ladder (restart, recreate, give up) "
                   "starts again.")
@click.option("--startup-grace", default="5m", show_default=True,
              help="A container started this recently and not ONLINE yet is starting, not a zombie.")
@click.option("--give-back-after", default="10m", show_default=True,
              help="A spare's range goes back once its host's server has been healthy this long.")
@click.option("--probe-timeout", default="5s", show_default=True,
              help="Each pass calls every ONLINE server of ours as a client would (rpc_info); one that "
                   "does not answer within this is bad (a hung server, a broken NAT). 0: no probes.")
@click.option("--stop-timeout", default=30, show_default=True, type=click.IntRange(1, 600),
              help="Seconds a server gets to stop (SIGINT) before SIGKILL, on restart/recreate/give back.")
@click.option("--journal", default=None, type=click.Path(dir_okay=False), envvar="PETALS_OPS_WATCH_JOURNAL",
              help="The append-only journal [default: ~/.petals-ops/watch/INVENTORY-HASH.jsonl].")
@click.option("--metrics-listen", default=None, metavar="HOST:PORT", envvar="PETALS_OPS_WATCH_METRICS",
              help="Serve petals_ops_watch_* metrics for Prometheus here (e.g. 127.0.0.1:9470).")
def watch_cmd(inventory, hosts, accept_new_host_keys, dry_run, interval, once, bad_readings, backoff,
              max_per_server_per_hour, max_actions_per_pass, healthy_reset, startup_grace, give_back_after,
              probe_timeout, stop_timeout, journal, metrics_listen):
    """Keep the fleet serving: each --interval read the containers (SSH) and the swarm (DHT), restart a
    server that exited, froze or vanished from the DHT, recreate it if restarts fail, give up (alert) after
    that, and start the range of a host that is gone on a spare host (inventory 'spare: true').

    
    A host that cannot be read is unknown, never dead: it is not acted on.
    Backoff, a per-server hourly limit and a per-pass cap stop restart storms.
    Every action and its outcome goes to the journal, which a restarted
    watch replays (nothing is done twice). --dry-run prints the remediations
    it would make and exits. One watch per inventory (a lock).
    docs/fleet.md, "watch".
    """
    from petals_ops.fleet.watch.loop import InventoryLock, make_watch, serve_metrics
    from petals_ops.fleet.watch.model import Policy
    from petals_ops.monitoring.server import parse_duration, parse_listen

    every = parse_duration(interval, option="--interval", minimum=1, maximum=86400)
    policy = Policy(bad_readings=bad_readings,
                    backoff_base=parse_duration(backoff, option="--backoff", minimum=0, maximum=86400),
                    max_per_server_per_hour=max_per_server_per_hour,
                    max_actions_per_pass=max_actions_per_pass,
                    healthy_reset=parse_duration(healthy_reset, option="--healthy-reset", minimum=0,
                                                 maximum=7 * 86400),
                    give_back_after=parse_duration(give_back_after, option="--give-back-after", minimum=0,
                                                   maximum=7 * 86400),
                    startup_grace=parse_duration(startup_grace, option="--startup-grace", minimum=0,
                                                 maximum=86400))
    listen = parse_listen(metrics_listen) if metrics_listen else None
    inv, opts = _load(inventory, accept_new_host_keys)

    def log(line: str) -> None:
        terminal.echo(printable(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {line}"))

    lock = None if dry_run else InventoryLock(inv.source or "petals-ops.yaml")
    probe_seconds = parse_duration(probe_timeout, option="--probe-timeout", minimum=0, maximum=300)
    watch, close = make_watch(inv, hosts, opts=opts, policy=policy, interval=every, journal_path=journal,
                              stop_timeout=stop_timeout, log=log, probe_timeout=probe_seconds or None)
    try:
        if dry_run:
            rems = watch.dry_run()
            terminal.echo("\n".join(printable(r.line()) for r in rems) if rems
                          else "no remediations: every server of ours is healthy, or not bad for long enough")
            return
        lock.acquire()
        if listen:
            serve_metrics(watch.stats, every, listen)
        watch.start()
        log(f"watch: {len(watch.targets)} host(s), every {every:g} s, journal {watch.journal_path}"
            + (f", metrics on {listen[0]}:{listen[1]}" if listen else ""))
        if once:
            done = watch.once()
            if any(d.outcome != "ok" for d in done):
                from petals_ops.util.errors import OpsError

                raise OpsError(f"{sum(d.outcome != 'ok' for d in done)} remediation(s) failed",
                               fix="see the lines above and the journal")
        else:
            watch.run()
            log("watch: stopped")
    finally:
        close()
        if lock is not None:
            lock.release()


COMMANDS = [hosts_group, provision_cmd, plan_cmd, up_cmd, down_cmd, status_cmd, logs_cmd, restart_cmd,
            watch_cmd]
