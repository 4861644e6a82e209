"""The lab's network emulation (petals_ops.lab.netem): the delaying proxy on a raw TCP echo, and a real
emulated local swarm with a delayed, an unreachable and a frozen server."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import socket
import socketserver
import statistics
import threading
import time

import pytest

from petals_ops.lab import local_swarm, netem
from petals_ops.lab.local_swarm import SwarmProcess
from petals_ops.util import procs
from tests.helpers import assert_one_line_error


class _Echo(socketserver.BaseRequestHandler):
    def handle(self):
        while data := self.request.recv(65536):
            self.request.sendall(data)


@pytest.fixture
def echo_behind_proxy(tmp_path):
    """A TCP echo server on 127.0.0.1 and the real proxy process in front of it (link ``server-0``)."""
    echo = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    echo.daemon_threads = True
    threading.Thread(target=echo.serve_forever, daemon=True).start()
    started = []

    def launch(cmd):
        popen = procs.spawn(cmd, log_path=tmp_path / "netem.log", cwd=tmp_path)
        started.append(popen.pid)
        return SwarmProcess(name="netem", role="netem", pid=popen.pid, pgid=popen.pid,
                            log=str(tmp_path / "netem.log"), start_time=procs.start_time(popen.pid))

    links = netem.start_proxy(tmp_path, [0.0], launch)
    # the proxy connects to the port start_proxy chose for the server: point it at the echo server
    wanted = netem.read_links(tmp_path)
    wanted["server-0"].upstream_port = echo.server_address[1]
    netem.write_links(tmp_path, wanted)
    time.sleep(0.3)
    yield tmp_path, links["server-0"][1]
    for pid in started:
        assert procs.stop_group(pid)
    echo.shutdown()


def _set(run_dir, **fields):
    links = netem.read_links(run_dir)
    for key, value in fields.items():
        setattr(links["server-0"], key, value)
    netem.write_links(run_dir, links)
    time.sleep(netem.POLL_SECONDS * 4)  # the proxy polls the control file


def _round_trips(sock, n=10) -> list[float]:
    times = []
    for i in range(n):
        started = time.monotonic()
        sock.sendall(b"%03d" % i)
        assert sock.recv(3) == b"%03d" % i
        times.append(time.monotonic() - started)
    return times


def test_proxy_delays_round_trips_keeps_order_and_holds_when_unreachable(echo_behind_proxy):
    run_dir, port = echo_behind_proxy
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        base = statistics.median(_round_trips(sock))
        assert base < 0.02

        _set(run_dir, delay_ms=100.0)  # changed at run time, on an open connection
        delayed = statistics.median(_round_trips(sock))
        assert 0.095 <= delayed < 0.2, delayed

        payload = os.urandom(3 * 1024 * 1024)  # many chunks, each held 50 ms each way: order kept
        threading.Thread(target=sock.sendall, args=(payload,), daemon=True).start()
        got = bytearray()
        while len(got) < len(payload):
            got += sock.recv(1 << 20)
        assert bytes(got) == payload

        _set(run_dir, delay_ms=0.0, unreachable=True)
        sock.sendall(b"abc")
        sock.settimeout(1.0)
        with pytest.raises(socket.timeout):
            sock.recv(3)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as other:  # accepted, then held
            other.settimeout(0.5)
            other.sendall(b"xyz")
            with pytest.raises(socket.timeout):
                other.recv(3)
            _set(run_dir, unreachable=False)
            other.settimeout(5)
            assert other.recv(3) == b"xyz"
        sock.settimeout(5)
        assert sock.recv(3) == b"abc"  # held, not lost: delivered once reachable again

    deadline = time.monotonic() + 5
    while (stats := netem.read_proxy(run_dir)["links"]["server-0"])["accepted"] < 2:
        assert time.monotonic() < deadline, stats
        time.sleep(0.1)
    assert stats["bytes_to_server"] >= len(payload) and stats["reachable"] is True


@pytest.mark.parametrize("args, needle", [
    (["--hop-delay", "50"], "--hop-delay '50' is not a delay"),
    (["--hop-delay", "11s"], "more than 10 s"),
    (["--hop-delay", "-5ms"], "is not a delay"),
    (["--server-delay", "2:10ms"], "names server 2, but the swarm has 2 servers"),
    (["--server-delay", "one:10ms"], "is not INDEX:DELAY"),
])
def test_bad_delays_are_one_line_errors_before_anything_starts(run_cli, tmp_path, args, needle):
    result = run_cli("swarm", "local", "up", "--run-dir", tmp_path / "swarm", *args, timeout=60)
    assert_one_line_error(result, needle, code=2)
    assert not (tmp_path / "swarm" / local_swarm.STATE_FILE).exists()


@pytest.mark.parametrize("args, needle", [
    (["server-0", "explode"], "fault 'explode' is unknown"),
    (["server-0", "delay"], "needs a value"),
    (["server-0", "delay", "20s"], "more than 10 s"),
    (["server-0", "freeze", "10ms"], "takes no value"),
])
def test_bad_faults_are_one_line_errors(run_cli, tmp_path, args, needle):
    result = run_cli("swarm", "local", "fault", "--run-dir", tmp_path, *args, timeout=60)
    assert_one_line_error(result, needle, code=2)


# ---- a real emulated swarm ---------------------------------------------------------------------------

def _connected_from(swarm) -> dict[str, set[str]]:
    """For each server: who holds a connection to its proxy port (a swarm process's name, or 'client'
    for this test process), from the kernel's socket table."""
    import psutil

    ports = {n: s["port"] for n, s in netem.read_proxy(swarm.run_dir)["links"].items()}
    names = {p.pgid: p.name for p in swarm.processes}
    names[os.getpgid(0)] = "client"  # the client's p2pd daemon runs in this test's process group
    conns = psutil.net_connections(kind="tcp")
    owner = {(c.laddr.ip, c.laddr.port): c.pid for c in conns if c.laddr and c.pid}
    found: dict[str, set[str]] = {n: set() for n in ports}
    for c in conns:
        for name, port in ports.items():
            if c.laddr and c.laddr.port == port and c.raddr and c.status == "ESTABLISHED":
                pid = owner.get((c.raddr.ip, c.raddr.port))
                with contextlib.suppress(ProcessLookupError, TypeError):
                    found[name].add(names.get(os.getpgid(pid), f"pid {pid}"))
    return found


def _bypassing(swarm) -> list:
    """Connections on a server's real port whose other end is neither the proxy nor the bootstrap DHT
    (libp2p reuses its listen port for outgoing connections, so those two are the only legal peers)."""
    import psutil

    real = {link.upstream_port for link in netem.read_links(swarm.run_dir).values()}
    proxy_pid = netem.read_proxy(swarm.run_dir)["pid"]
    conns = psutil.net_connections(kind="tcp")
    owner = {(c.laddr.ip, c.laddr.port): c.pid for c in conns if c.laddr and c.pid}
    return [c for c in conns if c.laddr and c.laddr.port in real and c.raddr and c.status == "ESTABLISHED"
            and owner.get((c.raddr.ip, c.raddr.port)) != proxy_pid and c.raddr.port != swarm.dht_port]


def _seconds_per_step(loaded, tokens=12, tries=3) -> tuple[float, list[int]]:
    """Median decoding step over ``tries`` greedy generations (robust to the machine's other work)."""
    from petals_ops.client import generation

    gaps, ids = [], None
    for _ in range(tries):
        clock = generation.StepClock()
        out = generation.generate(loaded, "hello swarm, this is", max_new_tokens=tokens, streamer=clock)
        gc.collect()
        gaps += clock.gaps()
        ids = out.new_token_ids[0]
    return statistics.median(gaps), ids


def _fault(run_cli, run_dir, *args):
    result = run_cli("swarm", "local", "fault", "--run-dir", run_dir, *args, timeout=60)
    assert result.returncode == 0, result.stderr


def _online(run_cli, run_dir) -> tuple[int, dict]:
    result = run_cli("swarm", "status", "--swarm-dir", run_dir, "--output", "json", timeout=120)
    snap = json.loads(result.stdout)
    return result.returncode, {(s["start_block"], s["end_block"]): (s["state"], s.get("reachable"))
                               for s in snap["servers"]}


def test_emulated_swarm_delay_unreachable_freeze_and_down(run_cli, tmp_path, tiny_model_dir):
    """Three servers behind the proxy: clients and servers reach each server only through it; 80 ms on
    server-1 slows each greedy step by about a round trip; unreachable fails generation while the DHT
    lists the server ONLINE; a frozen server answers again after thaw; down stops everything."""
    from petals_ops.client import generation, loading

    run_dir = tmp_path / "swarm"
    up = run_cli("swarm", "local", "up", "--run-dir", run_dir, "--model-dir", tiny_model_dir, "--servers", 3,
                 "--hop-delay", "0ms", "--server-delay", "2:0.0s", timeout=300)
    assert up.returncode == 0, up.stderr
    swarm = local_swarm.LocalSwarm.load(run_dir)
    gc.disable()  # see STACK.md: the client's sessions are collected here, between steps, not on its loop
    try:
        # no server-to-server push: each step then pays every hop's round trip exactly once (a push can
        # hide part of a hop's delay behind the previous server's compute, which makes a bound fuzzy)
        with loading.load_swarm_model(swarm.model, swarm.initial_peers, request_timeout=8,
                                      max_retries=1, use_server_to_server=False) as loaded:
            _seconds_per_step(loaded, tries=1)  # warm-up: routes, connections
            base, base_ids = _seconds_per_step(loaded)
            reached = _connected_from(swarm)
            assert {"client", "server-0"} <= reached["server-1"], reached  # a client and a server's push
            assert {"client", "server-1"} <= reached["server-2"], reached
            assert _bypassing(swarm) == []

            _fault(run_cli, run_dir, "server-1", "delay", "80ms")
            delayed, delayed_ids = _seconds_per_step(loaded)
            assert delayed_ids == base_ids
            # Without server-to-server pushes the client waits for server-1's reply once per step: +80 ms
            # (measured +88 and +225 ms on a 2-core machine at load 10-13). A generous lower bound:
            print(f"median step {base * 1000:.0f} ms, with 80 ms on server-1 {delayed * 1000:.0f} ms")
            assert delayed - base >= 0.04, (base, delayed)
            status = json.loads(run_cli("swarm", "local", "status", "--run-dir", run_dir, "--output",
                                        "json").stdout)
            network = {p["name"]: p["network"] for p in status["processes"] if p["role"] == "server"}
            assert network["server-1"]["delay_ms"] == 80 and network["server-0"]["delay_ms"] == 0

            _fault(run_cli, run_dir, "server-1", "delay", "0")
            _fault(run_cli, run_dir, "server-1", "unreachable")
            # the record lies: still ONLINE (read first: held connections can also stall the server's own
            # re-announcements, so on a slow machine the record may expire a minute later); the probe does
            # not: swarm status names it unreachable and exits 1, its block being held by nobody else
            code, states = _online(run_cli, run_dir)
            assert code == 1 and states[(2, 3)] == ("ONLINE", False), states
            assert states[(0, 2)] == states[(3, 4)] == ("ONLINE", True), states
            started = time.monotonic()
            with pytest.raises(Exception):
                generation.generate(loaded, "hello swarm, this is", max_new_tokens=4)
            assert time.monotonic() - started < 60
            gc.collect()
            _fault(run_cli, run_dir, "server-1", "reachable")
            assert _seconds_per_step(loaded, tries=1)[1] == base_ids

            victim = swarm.process("server-1")
            _fault(run_cli, run_dir, "1", "freeze")
            assert {procs._proc_stat(pid)[0] for pid in procs.group_members(victim.pgid)} == {"T"}
            _fault(run_cli, run_dir, "1", "thaw")
            assert "T" not in {procs._proc_stat(pid)[0] for pid in procs.group_members(victim.pgid)}
            assert _seconds_per_step(loaded, tries=1)[1] == base_ids
    finally:
        gc.enable()
        _fault(run_cli, run_dir, "server-0", "freeze")  # down must stop a frozen server too
        pgids = {p.pgid for p in swarm.processes}
        down = run_cli("swarm", "local", "down", "--run-dir", run_dir, timeout=120)
        assert down.returncode == 0, down.stderr
    assert not [g for g in pgids if procs.group_members(g)]
    assert not (run_dir / netem.CONTROL_FILE).exists() and not (run_dir / netem.PROXY_FILE).exists()
