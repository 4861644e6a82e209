"""A real network's delays and faults for the local swarm: a delaying TCP proxy in front of each server.

Loopback costs microseconds where a real swarm's hops cost tens of milliseconds, and this kernel has no
``netem`` qdisc. So each server of an emulated swarm listens on a private port and announces (petals'
``--announce_maddrs``) a port of one proxy process instead; peers learn addresses only from what servers
announce (relays are switched off), so every connection that reaches a server -- a client's, another
server's push or DHT call, a ping -- goes through its proxy. libp2p authenticates peer ids, not
addresses, so forwarding the bytes untouched is transparent.

What is emulated, per server (a "link"):
- ``delay``: every chunk of bytes is held ``delay / 2`` in each direction, in order, so a request/response
  round trip through the link costs ``delay`` more. It is propagation delay only: no bandwidth limit, no
  loss, no jitter. It applies to connections *to* the server; a connection the server opens itself costs
  the delay of the server it dials (so between two servers the round trip is the dialled one's delay).
- ``unreachable``: the proxy stops forwarding (a black hole, like a firewall that drops packets): open
  connections stall, new ones are accepted and held. The server keeps running and keeps announcing
  itself ONLINE through its own outgoing DHT connections, as a server behind a broken NAT does.
- ``frozen``: the server's process group is stopped (SIGSTOP) and continued (SIGCONT): a hung process.

``netem.json`` in the swarm dir is the wanted state (written by ``up`` and ``fault``; the proxy polls it,
so a delay changes at run time without restarting anything); ``netem-proxy.json`` is what the proxy
reports (its ports and per-link counters).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from petals_ops.util.errors import InputError, OpsError
from petals_ops.util.fsutil import read_json, write_json_atomic

if TYPE_CHECKING:  # no import at run time: local_swarm imports this module
    from petals_ops.lab.local_swarm import LocalSwarm, SwarmProcess

CONTROL_FILE = "netem.json"
PROXY_FILE = "netem-proxy.json"
PROXY_NAME = "netem"  # the proxy's name (and role) among the swarm's processes
LOOPBACK = "127.0.0.1"
MAX_DELAY_MS = 10_000.0
POLL_SECONDS = 0.05  # how often the proxy looks at netem.json
CHUNK = 64 * 1024
QUEUE_CHUNKS = 256  # per direction of a connection: at most 16 MiB in flight inside the proxy
DELAY_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s)?\s*$", re.IGNORECASE)
ACTIONS = ("freeze", "thaw", "delay", "unreachable", "reachable")


@dataclass
class Link:
    """The emulated network in front of one server, and its faults."""

    upstream_port: int | None = None  # the server's real port (None: this swarm has no proxy)
    delay_ms: float = 0.0
    unreachable: bool = False
    frozen: bool = False

    def fault(self) -> str:
        return ",".join(f for f, on in (("frozen", self.frozen), ("unreachable", self.unreachable)) if on)


# ---- inputs -------------------------------------------------------------------------------------------

def parse_delay(text: str, *, option: str) -> float:
    """``80ms``, ``0.08s`` or ``0`` as milliseconds (0..10 s); a one-line error otherwise."""
    m = DELAY_RE.match(str(text))
    if not m or (m.group(2) is None and float(m.group(1)) != 0):
        raise InputError(f"{option} {text!r} is not a delay",
                         fix="write it with a unit, e.g. 80ms or 0.08s (0 needs none)")
    ms = float(m.group(1)) * (1000.0 if (m.group(2) or "ms").lower() == "s" else 1.0)
    if ms > MAX_DELAY_MS:
        raise InputError(f"{option} {text!r} is more than {MAX_DELAY_MS / 1000:.0f} s",
                         fix="use a delay between 0ms and 10s")
    return ms


def plan_delays(servers: int, hop_delay: str | None, server_delay: str | None) -> list[float] | None:
    """Round-trip delay (ms) of each of ``servers`` servers from ``--hop-delay`` (all) and
    ``--server-delay INDEX:DELAY,...`` (overrides); None when neither is given (no proxy at all)."""
    if hop_delay is None and server_delay is None:
        return None
    delays = [parse_delay(hop_delay, option="--hop-delay") if hop_delay is not None else 0.0] * servers
    for item in (server_delay or "").split(","):
        if not item.strip():
            continue
        index, sep, value = item.partition(":")
        if not sep or not index.strip().isdigit():
            raise InputError(f"--server-delay item {item.strip()!r} is not INDEX:DELAY",
                             fix="write it as 0:20ms,1:80ms (server index: delay)")
        i = int(index)
        if i >= servers:
            raise InputError(f"--server-delay names server {i}, but the swarm has {servers} servers",
                             fix=f"use indexes 0..{servers - 1}")
        delays[i] = parse_delay(value, option=f"--server-delay {i}:")
    return delays


def server_name(text: str, swarm: "LocalSwarm") -> "SwarmProcess":
    """A server of ``swarm`` by its name (``server-1``) or index (``1``)."""
    name = f"server-{text.strip()}" if str(text).strip().isdigit() else str(text).strip()
    servers = [p for p in swarm.processes if p.role == "server"]
    for p in servers:
        if p.name == name:
            return p
    raise InputError(f"the local swarm has no server {text!r}",
                     fix=f"use one of {', '.join(p.name for p in servers)} (or its index)")


# ---- the state files ----------------------------------------------------------------------------------

def read_links(run_dir: str | Path) -> dict[str, Link]:
    """The wanted state of each server's link ({} when the swarm has never had emulation or a fault)."""
    path = Path(run_dir) / CONTROL_FILE
    if not path.is_file():
        return {}
    try:
        return {name: Link(**fields) for name, fields in read_json(path)["links"].items()}
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise OpsError(f"the network emulation state {path} is unreadable ({e})",
                       fix="run 'petals-ops swarm local down' and start the swarm again") from e


def write_links(run_dir: str | Path, links: dict[str, Link]) -> None:
    write_json_atomic(Path(run_dir) / CONTROL_FILE, {"links": {n: asdict(k) for n, k in links.items()}})


def read_proxy(run_dir: str | Path) -> dict | None:
    """What the proxy last reported (ports, counters), or None."""
    try:
        return read_json(Path(run_dir) / PROXY_FILE)
    except (FileNotFoundError, ValueError):
        return None


def clear(run_dir: str | Path) -> None:
    """Forget the emulation state (``up`` before starting, ``down`` after stopping)."""
    for name in (CONTROL_FILE, PROXY_FILE):
        (Path(run_dir) / name).unlink(missing_ok=True)


def emulated(run_dir: str | Path) -> bool:
    return any(link.upstream_port is not None for link in read_links(run_dir).values())


def describe(run_dir: str | Path) -> dict[str, dict]:
    """Per server: its emulated round-trip delay (None without a proxy), its faults, its proxy port and
    the connections the proxy forwarded to it (for ``swarm local status``)."""
    proxy = read_proxy(run_dir) or {}
    out = {}
    for name, link in read_links(run_dir).items():
        stats = proxy.get("links", {}).get(name, {})
        out[name] = {
            "delay_ms": link.delay_ms if link.upstream_port is not None else None,
            "fault": link.fault(),
            "announced_port": stats.get("port"),
            "server_port": link.upstream_port,
            "connections": stats.get("accepted"),
        }
    return out


# ---- starting the proxy (from local_swarm.up) ---------------------------------------------------------

def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def start_proxy(run_dir: str | Path, delays_ms: Sequence[float],
                launch: Callable[[list[str]], "SwarmProcess"], timeout: float = 60.0) -> dict[str, tuple]:
    """Start the proxy for servers ``server-0..`` with these delays; return, per server, (the port it
    listens on, the port it announces)."""
    links = {f"server-{i}": Link(upstream_port=_free_port(), delay_ms=float(d))
             for i, d in enumerate(delays_ms)}
    write_links(run_dir, links)
    (Path(run_dir) / PROXY_FILE).unlink(missing_ok=True)
    proc = launch([sys.executable, "-m", "petals_ops.lab.netem", str(Path(run_dir).resolve())])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ports = {n: s.get("port") for n, s in ((read_proxy(run_dir) or {}).get("links") or {}).items()}
        if all(ports.get(n) for n in links):
            return {n: (links[n].upstream_port, ports[n]) for n in links}
        if not proc.alive():
            break
        time.sleep(0.1)
    raise OpsError(f"the network emulation proxy did not start (log {proc.log})", fix="read the log")


# ---- faults (``petals-ops swarm local fault``) --------------------------------------------------------

def check_fault(action: str, value: str | None) -> float | None:
    """A one-line error for a bad fault (checked before any swarm is read); the delay of ``delay``."""
    if action not in ACTIONS:
        raise InputError(f"fault {action!r} is unknown", fix=f"use one of {', '.join(ACTIONS)}")
    if (action == "delay") != (value is not None):
        raise InputError(f"fault {action} {'needs a' if action == 'delay' else 'takes no'} value",
                         fix="e.g. 'fault server-1 delay 80ms' or 'fault server-1 freeze'")
    return parse_delay(value, option="fault delay") if action == "delay" else None


def apply_fault(swarm: "LocalSwarm", server: str, action: str, value: str | None = None) -> tuple[str, Link]:
    """Freeze/thaw a server's process group, or change its link (delay, unreachable, reachable) at run
    time; the new state is kept in the swarm dir. Returns (server name, its link)."""
    delay_ms = check_fault(action, value)
    proc = server_name(server, swarm)
    links = read_links(swarm.run_dir)
    link = links.setdefault(proc.name, Link())
    if action in ("delay", "unreachable", "reachable") and link.upstream_port is None:
        raise InputError(f"the local swarm in {swarm.run_dir} runs without network emulation, so "
                         f"'{action}' cannot act on {proc.name}",
                         fix="start it with 'petals-ops swarm local up --hop-delay 0ms' (freeze/thaw work)")
    if action in ("freeze", "thaw"):
        if not proc.running():
            raise OpsError(f"{proc.name} of the local swarm is not running", fix="see 'swarm local status'")
        os.killpg(proc.pgid, signal.SIGSTOP if action == "freeze" else signal.SIGCONT)
        link.frozen = action == "freeze"
    elif action == "delay":
        link.delay_ms = delay_ms
    else:
        link.unreachable = action == "unreachable"
    write_links(swarm.run_dir, links)
    return proc.name, link


# ---- the proxy process --------------------------------------------------------------------------------

class _Route:
    """One server's link inside the proxy: a listening socket and the connections forwarded through it."""

    def __init__(self, name: str, upstream_port: int):
        self.name, self.upstream_port = name, upstream_port
        self.delay = 0.0  # round trip, seconds
        self.reachable = asyncio.Event()
        self.reachable.set()
        self.port = None
        self.accepted = self.active = self.bytes_to_server = self.bytes_from_server = 0

    def apply(self, link: Link) -> None:
        self.delay = link.delay_ms / 1000.0
        self.upstream_port = link.upstream_port or self.upstream_port  # for new connections
        (self.reachable.clear if link.unreachable else self.reachable.set)()

    def stats(self) -> dict:
        return {"port": self.port, "server_port": self.upstream_port, "delay_ms": self.delay * 1000,
                "reachable": self.reachable.is_set(), "accepted": self.accepted, "active": self.active,
                "bytes_to_server": self.bytes_to_server, "bytes_from_server": self.bytes_from_server}

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.active += 1
        up_writer = None
        try:
            await self.reachable.wait()  # unreachable: accepted and held, nothing reaches the server
            up_reader, up_writer = await asyncio.open_connection(LOOPBACK, self.upstream_port)
            tasks = [asyncio.ensure_future(self._forward(reader, up_writer, "bytes_to_server")),
                     asyncio.ensure_future(self._forward(up_reader, writer, "bytes_from_server"))]
            try:
                await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        except OSError:
            pass  # the server is gone or refused: close the client's side too
        finally:
            self.active -= 1
            for w in (writer, up_writer):
                if w is not None:
                    w.close()

    async def _forward(self, reader, writer, counter: str) -> None:
        """Copy one direction, each chunk leaving ``delay / 2`` after it arrived, in arrival order."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue(QUEUE_CHUNKS)

        async def pull():
            while True:
                await self.reachable.wait()
                data = await reader.read(CHUNK)
                await queue.put((loop.time() + self.delay / 2, data))
                if not data:
                    return

        puller = asyncio.ensure_future(pull())
        try:
            while True:
                due, data = await queue.get()
                if due > loop.time():
                    await asyncio.sleep(due - loop.time())
                await self.reachable.wait()
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()
                setattr(self, counter, getattr(self, counter) + len(data))
        finally:
            puller.cancel()
            await asyncio.gather(puller, return_exceptions=True)


async def _serve(run_dir: Path) -> None:
    control = run_dir / CONTROL_FILE
    links = read_links(run_dir)
    routes = {n: _Route(n, link.upstream_port) for n, link in links.items() if link.upstream_port}
    for name, route in routes.items():
        route.apply(links[name])
        server = await asyncio.start_server(route.handle, LOOPBACK, 0)
        route.port = server.sockets[0].getsockname()[1]
    seen, reported, last_report = None, None, 0.0
    while True:
        try:
            st = control.stat()
            if (st.st_mtime_ns, st.st_size, st.st_ino) != seen:
                seen = (st.st_mtime_ns, st.st_size, st.st_ino)
                for name, link in read_links(run_dir).items():
                    if name in routes:
                        routes[name].apply(link)
        except (OSError, OpsError) as e:  # a half-removed swarm dir: keep the last state
            print(f"netem: cannot read {control}: {e}", file=sys.stderr, flush=True)
        stats = {"pid": os.getpid(), "links": {n: r.stats() for n, r in routes.items()}}
        if stats != reported and time.monotonic() - last_report > 0.5 or reported is None:
            write_json_atomic(run_dir / PROXY_FILE, stats)
            reported, last_report = stats, time.monotonic()
        await asyncio.sleep(POLL_SECONDS)


def main(argv: list[str] | None = None) -> None:
    """``python -m petals_ops.lab.netem RUN_DIR``: the swarm's proxy (started by ``swarm local up``)."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        sys.exit("usage: python -m petals_ops.lab.netem RUN_DIR")
    asyncio.run(_serve(Path(argv[0])))


if __name__ == "__main__":
    main()
