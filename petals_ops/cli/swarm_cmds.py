"""``petals-ops swarm``: the local swarm's life cycle and the status of any swarm."""

import click

from petals_ops.cli.options import DIR_PATH, POSITIVE, parse_probe_timeout, probe_option, swarm_target_options
from petals_ops.cli.terminal import terminal
from petals_ops.lab.local_swarm import default_run_dir
from petals_ops.util.output import OUTPUT_OPTION, info
from petals_ops.util.safe_text import inert_text, printable

RUN_DIR_OPTION = click.option(
    "--swarm-dir", "--run-dir", "run_dir", type=DIR_PATH, default=None,
    envvar="PETALS_OPS_SWARM_DIR",
    help=f"Where the local swarm keeps its state, logs and model [default: {default_run_dir()}].",
)


@click.group()
def swarm():
    """Inspect a swarm, and run a private one on this machine."""


@swarm.group()
def local():
    """A private swarm on 127.0.0.1 (a DHT and CPU servers), for laptops and tests."""


@local.command("up")
@RUN_DIR_OPTION
@click.option("--servers", default=2, show_default=True, type=int,
              help="Servers, each holding one block range.")
@click.option("--replicas", default=1, show_default=True, type=int,
              help="Copies of each block range (redundancy).")
@click.option("--model-dir", type=click.Path(), default=None,
              help="Model to serve [default: a tiny BLOOM made offline].")
@click.option("--dht-port", default=0, show_default=True, type=int,
              help="Bootstrap DHT port on 127.0.0.1 (0: a free one).")
@click.option("--timeout", default=300, show_default=True, type=POSITIVE,
              help="Seconds to wait until every block is served.")
@click.option("--hop-delay", default=None, metavar="DELAY",
              help="Emulated network round trip to every server, e.g. 50ms (0..10s; see docs/monitoring.md).")
@click.option("--server-delay", default=None, metavar="INDEX:DELAY,...",
              help="Emulated round trip per server, e.g. 0:20ms,1:80ms (overrides --hop-delay).")
def local_up(run_dir, servers, replicas, model_dir, dht_port, timeout, hop_delay, server_delay):
    """Start the local swarm and wait until every block has an ONLINE server.

    Prints the swarm's initial peers on stdout (give them to other tools as --initial-peers). With
    --hop-delay or --server-delay, a proxy in front of each server emulates a network's delay, and
    'swarm local fault' can change it and inject faults at run time.
    """
    from petals_ops.lab import local_swarm, netem

    delays = netem.plan_delays(servers * replicas, hop_delay, server_delay)
    with terminal.progress("blocks served", eta=False) as bar:
        swarm = local_swarm.up(
            run_dir, servers=servers, replicas=replicas, model_dir=model_dir, dht_port=dht_port,
            timeout=timeout, on_progress=lambda done, total, _now: bar.update(done, total), delays_ms=delays,
        )
    info(f"local swarm up in {swarm.ready_seconds:.1f} s: {len(swarm.servers)} servers, "
         f"{swarm.num_blocks} blocks of {swarm.dht_prefix}; state in {swarm.run_dir}")
    click.echo(printable(" ".join(swarm.initial_peers)))


@local.command("down")
@RUN_DIR_OPTION
def local_down(run_dir):
    """Stop every process of the local swarm (servers, DHT and their p2pd daemons)."""
    from petals_ops.lab import local_swarm

    swarm = local_swarm.down(run_dir)
    if swarm is None:
        info(f"no local swarm state in {run_dir or default_run_dir()}: nothing to stop")
    else:
        info(f"stopped {len(swarm.processes)} processes of the local swarm in {swarm.run_dir}")


@local.command("status")
@RUN_DIR_OPTION
@OUTPUT_OPTION
def local_status(run_dir, output):
    """The local swarm's processes (alive or not), ports and initial peers."""
    from petals_ops.lab import local_swarm

    from petals_ops.lab import netem

    swarm = local_swarm.load_running(run_dir)
    links = netem.describe(swarm.run_dir)
    rows = [
        {"name": p.name, "role": p.role, "pid": p.pid, "alive": p.alive(), "blocks": p.blocks, "log": p.log,
         "network": links.get(p.name)}
        for p in swarm.processes
    ]
    if output == "json":
        terminal.json({"run_dir": swarm.run_dir, "initial_peers": swarm.initial_peers,
                   "model_dir": swarm.model_dir, "dht_prefix": swarm.dht_prefix,
                   "num_blocks": swarm.num_blocks, "processes": rows})
        return
    terminal.table(["name", "role", "pid", "alive", "blocks", "delay", "fault", "log"],
                 [[r["name"], r["role"], r["pid"], r["alive"], r["blocks"], *_network_cells(r["network"]),
                   r["log"]] for r in rows],
                 title=f"local swarm in {swarm.run_dir}")
    click.echo(printable(f"initial peers: {' '.join(swarm.initial_peers)}"))


def _network_cells(link: dict | None) -> list[str]:
    if link is None:
        return ["", ""]
    delay = "" if link["delay_ms"] is None else f"{link['delay_ms']:g} ms"
    return [delay, link["fault"] or ("" if link["delay_ms"] is None else "none")]


@local.command("fault")
@RUN_DIR_OPTION
@click.argument("server")
@click.argument("action")
@click.argument("value", required=False)
def local_fault(run_dir, server, action, value):
    """Inject a fault into a server of the running local swarm (SERVER: server-1 or 1).

    \b
      freeze | thaw            SIGSTOP / SIGCONT of the server's process group (a hung server)
      delay 80ms               its emulated round trip, changed at once (needs --hop-delay/--server-delay)
      unreachable | reachable  its proxy stops / resumes forwarding; the server keeps running and its
                               DHT record stays ONLINE (a server behind a broken NAT or firewall)
    """
    from petals_ops.lab import local_swarm, netem

    netem.check_fault(action, value)
    swarm = local_swarm.load_running(run_dir)
    name, link = netem.apply_fault(swarm, server, action, value)
    delay = "no emulated delay" if link.upstream_port is None else f"delay {link.delay_ms:g} ms"
    info(f"{name}: {action} ({delay}, faults: {link.fault() or 'none'})")


@swarm.command("status")
@swarm_target_options
@probe_option
@OUTPUT_OPTION
def status(initial_peers, model, dht_prefix, num_blocks, swarm_dir, probe_timeout, no_probe, output):
    """Blocks and servers of a swarm (the local one by default), with a coverage summary.

    Each server the DHT lists as ONLINE is probed (petals' rpc_info, --probe-timeout) and each initial
    peer pinged: a server that does not answer is shown "unreachable" and counts for no block. Exit code
    1 when some block has no reachable ONLINE server (the model cannot serve a forward pass). The block
    map draws one character per block for each server, with a red ✗ under blocks no ONLINE server holds.
    """
    from petals_ops.swarm.health import format_block_ranges, take_snapshot
    from petals_ops.swarm.reachability import probe_snapshot, summary_lines
    from petals_ops.lab.target import resolve_target

    timeout = parse_probe_timeout(probe_timeout)
    target = resolve_target(initial_peers, model, dht_prefix=dht_prefix, num_blocks=num_blocks,
                            run_dir=swarm_dir)
    if no_probe:
        snap = take_snapshot(target.initial_peers, target.model)
    else:
        snap = probe_snapshot(target.initial_peers, target.model, timeout=timeout)
    if output == "json":
        terminal.json(snap.to_dict())
    else:
        terminal.table(
            ["peer id", "name", "state", "reachable", "blocks", "throughput", "cache tokens left", "version",
             "dtype", "quant"],
            [[s.peer_id, s.public_name, _state_cell(s), _reach_cell(s), f"{s.start_block}:{s.end_block}",
              f"{s.throughput:.1f}", s.cache_tokens_left, s.version, s.torch_dtype, s.quant_type]
             for s in snap.servers],
            title=f"servers of {snap.dht_prefix}",
        )
        print_block_map(snap, own_peer_ids(target.local_run_dir))
        cov = snap.coverage()
        uncovered = format_block_ranges(cov["uncovered_blocks"]) or "none"
        click.echo(printable(
            f"coverage: {cov['blocks_total']} blocks, uncovered: {uncovered}, ONLINE servers per block "
            f"min {cov['min_online_servers_per_block']} mean {cov['mean_online_servers_per_block']}, "
            f"full forward pass: {'yes' if cov['fully_served'] else 'NO'}"
        ))
        for line in summary_lines(snap):
            click.echo(printable(line))
    if not snap.fully_served:
        raise SystemExit(1)


def _state_cell(server) -> str:
    return f"{server.state} (unreachable)" if server.reachable is False else server.state


def _reach_cell(server) -> str:
    r = server.reachability
    if r is None:
        return ""
    return f"yes, {r.latency * 1000:.0f} ms" if r.reachable else f"NO: {r.error}"


def own_peer_ids(local_run_dir) -> set[str]:
    """Peer ids of the local swarm's servers (from their identity files), marked as ours on the map."""
    if not local_run_dir:
        return set()
    from petals_ops.client import door
    from petals_ops.monitoring.refresher import local_identities

    return {door.peer_id_of_identity(path.read_bytes()) for path in local_identities(local_run_dir).values()}


def print_block_map(snap, own: set[str] = frozenset()) -> None:
    """The terminal block map (petals_ops.swarm.block_map) of ``snap``, fitted to the terminal's width."""
    from petals_ops.swarm.block_map import block_map

    terminal.show(inert_text(f"block map of {snap.dht_prefix}"), style="italic")
    terminal.show(block_map(snap, own))


@swarm.command("trace")
@swarm_target_options
@click.option("--route", "routes", multiple=True, metavar="PEER,PEER,...",
              help="Trace the chain through exactly these servers (peer id prefixes or suffixes, 4+ "
                   "characters); repeatable.")
@click.option("--server", "through", multiple=True, metavar="PEER",
              help="Trace only routes through this server; repeatable.")
@click.option("--max-routes", default=4, show_default=True, type=int,
              help="Routes to trace at most (1..16).")
@click.option("--steps", default=8, show_default=True, type=int,
              help="Greedy decoding steps per route (1..64).")
@click.option("--timeout", default=120.0, show_default=True, type=POSITIVE,
              help="Seconds for the whole trace; routes left when it is spent are reported as skipped.")
@click.option("--request-timeout", default=20.0, show_default=True, type=POSITIVE,
              help="Seconds the client waits for one server's answer.")
@OUTPUT_OPTION
def trace(initial_peers, model, dht_prefix, num_blocks, swarm_dir, routes, through, max_routes, steps,
          timeout, request_timeout, output):
    """Where each step's time goes: a short canary generation pinned through one route at a time.

    \b
    Per hop: the server, its blocks, the time per step spent there (measured on the client), the
    rpc_info round trip to it (measured: the network estimate) and the rest (inferred: the server's
    queue and compute); per route: steps/s end to end and petals' retries. Names the slowest hop.
    Exit code 0 when every route was traced, 3 when some failed, 1 when none could be.
    """
    from petals_ops.lab.target import resolve_target
    from petals_ops.swarm import trace as tracing
    from petals_ops.util.errors import EXIT_PARTIAL

    tracing.check_bounds(steps=steps, max_routes=max_routes, timeout=timeout)
    target = resolve_target(initial_peers, model, dht_prefix=dht_prefix, num_blocks=num_blocks,
                            run_dir=swarm_dir)
    route_peers = [[p for p in r.replace(" ", ",").split(",") if p] for r in routes]
    report = tracing.trace_routes(target.initial_peers, target.model, routes=route_peers, through=through,
                                  max_routes=max_routes, steps=steps, timeout=timeout,
                                  request_timeout=request_timeout)
    if output == "json":
        terminal.json(report.to_dict())
    else:
        _print_trace(report)
    tracing.require_some_route(report)
    if not all(r.ok for r in report.routes):
        raise SystemExit(EXIT_PARTIAL)


def _print_trace(report) -> None:
    def ms(seconds):
        return "" if seconds is None else f"{seconds * 1000:.1f}"

    for i, route in enumerate(report.routes):
        chain = " → ".join(f"…{h.peer_id[-6:]}[{h.start}:{h.end}]" for h in route.route)
        rate = f"{route.steps_per_second:.2f} steps/s" if route.steps_per_second else "no steps"
        title = f"route {i + 1}: {chain}: {rate}, {route.retries} retries"
        rows = [[h.peer_id, h.public_name or "", h.blocks, ms(h.seconds), ms(h.network_seconds),
                 ms(h.server_seconds), h.steps, h.failures] for h in route.hops]
        if route.ok:
            rows.append(["(client)", "", "", ms(route.client_seconds), "", "", route.steps, ""])
        terminal.table(["server", "name", "blocks", "ms/step", "network ms (rpc_info, measured)",
                        "server ms (inferred)", "steps", "failed"], rows, title=title)
        if route.error:
            terminal.echo(printable(f"route {i + 1} failed: {route.error}"))
    slowest = report.slowest_hop
    if slowest is not None:
        terminal.echo(printable(f"slowest hop: {slowest.evidence}"))
