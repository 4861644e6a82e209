"""The lab's network emulation (petals_ops.lab.netem): the delaying proxy on a raw TCP echo, and a real
emulated local swarm with a delayed, an unreachable and a frozen server."""

from __future__ import annotations

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
