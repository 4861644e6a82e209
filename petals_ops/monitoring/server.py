"""The exporter's HTTP server and run loop: ``/metrics`` for Prometheus, ``/`` the swarm map,
``/map.json`` its data.

The server binds before the refresher starts, so a bad or busy ``--listen`` fails at once with one line.
SIGTERM and SIGINT stop it gracefully: the HTTP server finishes, the refresher's DHT node shuts down.
A connection gets :data:`REQUEST_TIMEOUT` seconds per read and at most :data:`MAX_CONNECTIONS` are served at
once (more are closed at once), so idle or slow clients cannot pile up threads. If the refresher thread
ever dies the exporter exits non-zero rather than serve a frozen state.
"""

from __future__ import annotations

import logging
import re
import signal
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, ProcessCollector, generate_latest

from petals_ops.util.errors import InputError, OpsError
from petals_ops.monitoring.collector import SwarmCollector
from petals_ops.monitoring.map_page import page_bytes
from petals_ops.monitoring.map_state import MAP_PATH, MapBody
from petals_ops.monitoring.refresher import Refresher

DEFAULT_LISTEN = "127.0.0.1:9469"
MAX_REFRESH = 24 * 3600.0  # a walk a day at least: beyond that the staleness alert (3 x interval) is moot
REQUEST_TIMEOUT = 10.0  # seconds a connection may stay silent
MAX_CONNECTIONS = 64  # served at once; Prometheus and a few map pages need a handful
log = logging.getLogger("petals_ops.exporter")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str, *, option: str = "--refresh", minimum: float = 0.1,
                   maximum: float = MAX_REFRESH) -> float:
    """'30s', '2m', '500ms', '1.5' (seconds) -> seconds, from ``minimum`` to ``maximum``."""
    m = _DURATION.match(str(text)[:100])
    if not m:
        raise InputError(f"{option} {str(text)[:40]!r} is not a duration",
                         fix=f"use e.g. {option} 30s, 2m or 500ms")
    seconds = float(m.group(1)) * _UNITS[m.group(2)]
    if seconds < minimum:
        raise InputError(f"{option} {text} is shorter than {minimum:g} s", fix=f"use e.g. {option} 30s")
    if seconds > maximum:
        raise InputError(f"{option} {str(text)[:40]} is longer than {maximum:g} s ({maximum / 3600:g} h)",
                         fix=f"use e.g. {option} 30s")
    return seconds


def parse_listen(text: str) -> tuple[str, int]:
    """'HOST:PORT' (or ':PORT', or '[::1]:PORT') -> (host, port)."""
    text = str(text).strip()
    m = re.match(r"^(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:\[\]]*)):(?P<port>\d{1,5})$", text)
    port = int(m.group("port")) if m else -1
    if not m or not 0 <= port <= 65535:
        raise InputError(f"--listen {text!r} is not HOST:PORT", fix=f"use e.g. --listen {DEFAULT_LISTEN}")
    host = m.group("v6") or m.group("host") or "0.0.0.0"
    return host, port


class _Server(ThreadingMixIn, WSGIServer):
    """A thread per connection, at most :data:`MAX_CONNECTIONS` of them (the rest are closed at once)."""

    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False
    max_connections = MAX_CONNECTIONS

    def server_activate(self) -> None:
        super().server_activate()
        self._slots = threading.BoundedSemaphore(self.max_connections)

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # a scrape retries; a flood gets no thread
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request, client_address) -> None:
        """A client that went silent or away is routine: no traceback on the exporter's stderr."""
        import sys

        error = sys.exc_info()[1]
        if isinstance(error, (TimeoutError, ConnectionError)):
            return
        log.warning("request from %s failed: %r", client_address[0], error)


class _V6Server(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    timeout = REQUEST_TIMEOUT  # StreamRequestHandler sets it on the connection: an idle client is dropped

    def log_message(self, *args) -> None:  # one line per scrape is noise for operators
        pass


class MetricsBody:
    """The /metrics text: the state's families encoded once per refresh, plus the per-scrape ones.

    Encoding thousands of series (400 servers: ~0.5 MB) costs tens of milliseconds; the state changes only
    once per refresh, so scrapes reuse its encoding and only render the snapshot's age. The refresher calls
    :meth:`prepare` before it publishes a state, so no scrape pays the encoding (it used to set the p99).
    """

    def __init__(self, get_state: Callable[[], Any], live: CollectorRegistry):
        self.get_state = get_state
        self.live = live
        self._cached: tuple[Any, bytes] | None = None

    @staticmethod
    def encode(state: Any) -> bytes:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(SwarmCollector(lambda: state, "state"))
        return generate_latest(registry)

    def prepare(self, state: Any) -> None:
        self._cached = (state, self.encode(state))

    def __call__(self) -> bytes:
        state = self.get_state()
        cached = self._cached
        if cached is None or cached[0] is not state:
            cached = self._cached = (state, self.encode(state))
        return cached[1] + generate_latest(self.live)


PAGE_HEADERS = [
    ("Content-Type", "text/html; charset=utf-8"),
    # The page loads nothing from elsewhere; its own inline script and style are all it may run.
    ("Content-Security-Policy", ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                                 "connect-src 'self'; img-src 'self'")),
    ("X-Content-Type-Options", "nosniff"),
]


def make_app(body: Callable[[], bytes], map_body: Callable[[], bytes] | None = None) -> Callable:
    """The WSGI app: /metrics (Prometheus), / (the swarm map page) and /map.json (the page's data)."""
    page = page_bytes()

    def respond(start_response, status: str, headers: list[tuple[str, str]], data: bytes):
        start_response(status, [*headers, ("Content-Length", str(len(data)))])
        return [data]

    def app(environ, start_response):
        path = environ.get("PATH_INFO", "/")
        if path == "/metrics":
            return respond(start_response, "200 OK", [("Content-Type", CONTENT_TYPE_LATEST)], body())
        if path == MAP_PATH and map_body is not None:
            return respond(start_response, "200 OK", [("Content-Type", "application/json"),
                                                      ("Cache-Control", "no-store")], map_body())
        if path in ("/", "/index.html"):
            return respond(start_response, "200 OK", PAGE_HEADERS, page)
        return respond(start_response, "404 Not Found", [("Content-Type", "text/plain")],
                       f"not found: try / (the swarm map), {MAP_PATH} or /metrics\n".encode())

    return app


@dataclass
class Exporter:
    """A running exporter: HTTP server thread + refresher thread. ``close()`` stops both."""

    refresher: Refresher
    httpd: Any
    thread: threading.Thread
    registry: CollectorRegistry

    @property
    def address(self) -> tuple[str, int]:
        return self.httpd.server_address[:2]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)
        self.refresher.stop()


def start_exporter(refresher: Refresher, listen: str = DEFAULT_LISTEN, *,
                   process_metrics: bool = True) -> Exporter:
    """Bind ``listen``, then start the refresher and serve. Raises InputError for a bad/busy address."""
    host, port = parse_listen(listen)
    registry = CollectorRegistry(auto_describe=False)  # the per-scrape part: snapshot age, process metrics
    registry.register(SwarmCollector(lambda: refresher.state, "live"))
    if process_metrics:
        ProcessCollector(registry=registry)
    body = MetricsBody(lambda: refresher.state, registry)
    map_body = MapBody(lambda: refresher.state)
    refresher.before_publish.extend([body.prepare, map_body.prepare])
    server_class = _V6Server if ":" in host else _Server
    try:
        httpd = make_server(host, port, make_app(body, map_body), server_class=server_class,
                            handler_class=_QuietHandler)
    except (OSError, OverflowError) as e:
        reason = getattr(e, "strerror", None) or str(e)
        raise InputError(f"--listen {listen}: cannot listen there ({reason})",
                         fix="choose a free port on an address of this machine, "
                             "e.g. --listen 127.0.0.1:9469") from e
    thread = threading.Thread(target=httpd.serve_forever, name="petals-exporter-http", daemon=True)
    thread.start()
    refresher.start()
    return Exporter(refresher=refresher, httpd=httpd, thread=thread, registry=registry)


def run_until_signalled(exporter: Exporter, on_stop: Callable[[str], None] | None = None) -> str:
    """Block until SIGTERM or SIGINT, then close the exporter gracefully; return the signal's name."""
    stop = threading.Event()
    received = {"name": ""}

    def handler(signum, _frame):
        received["name"] = signal.Signals(signum).name
        stop.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while not stop.wait(1.0):
            if not exporter.refresher.alive():
                exporter.close()
                raise OpsError("the exporter's refresher thread stopped: it would serve a frozen state",
                               fix="restart the exporter (run it with --debug to see why)")
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    if on_stop:
        on_stop(received["name"])
    exporter.close()
    return received["name"]
