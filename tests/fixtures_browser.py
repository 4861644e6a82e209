"""A real headless Chromium (Debian's ``chromium``) for page tests, driven over the DevTools protocol.

The protocol runs over a WebSocket; a minimal client (RFC 6455 text frames, stdlib only) is enough to
navigate, evaluate JavaScript in the live page and take screenshots, without a new dependency.

- ``browser`` (session): one Chromium process (own process group, fresh ``--user-data-dir``), stopped at
  the end of the session; ``browser.page()`` connects to its tab.
- ``artefacts_dir`` (session): where page tests save screenshots: ``--artefacts DIR`` or a pytest temp dir
  (``browser-artefacts*`` under pytest's basetemp).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import itertools
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Flags that work as root in a container with no network (see docs: background networking floods it).
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio", "--window-size=1400,900",
    "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
]
_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def pytest_addoption(parser):
    parser.addoption("--artefacts", default=None,
                     help="Directory for test artefacts (the map page's screenshots).")


class CDPError(AssertionError):
    pass


class Page:
    """One DevTools connection to a tab: ``call`` a protocol method, ``eval`` JavaScript, ``screenshot``."""

    def __init__(self, ws_url: str, timeout: float = 30.0):
        url = urlparse(ws_url)
        self.sock = socket.create_connection((url.hostname, url.port), timeout=timeout)
        key = base64.b64encode(os.urandom(16))
        self.sock.sendall(
            f"GET {url.path} HTTP/1.1\r\nHost: {url.hostname}:{url.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key.decode()}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise CDPError(f"DevTools closed the handshake: {head!r}")
            head += chunk
        head, self._buf = head.split(b"\r\n\r\n", 1)
        accept = base64.b64encode(hashlib.sha1(key + _WS_GUID).digest())
        if b" 101 " not in head.split(b"\r\n", 1)[0] or accept not in head:
            raise CDPError(f"DevTools refused the WebSocket: {head[:200]!r}")
        self._ids = itertools.count(1)

    # -- RFC 6455 framing (client frames are masked) --------------------------------------------------
    def _send_frame(self, opcode: int, payload: bytes) -> None:
        n = len(payload)
        header = bytes([0x80 | opcode])
        if n < 126:
            header += bytes([0x80 | n])
        elif n < 1 << 16:
            header += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            header += bytes([0x80 | 127]) + struct.pack("!Q", n)
        mask = os.urandom(4)
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def _read(self, n: int) -> bytes:
        while len(self._buf) < n:
            chunk = self.sock.recv(max(65536, n - len(self._buf)))
            if not chunk:
                raise CDPError("DevTools closed the connection")
            self._buf += chunk
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def _recv_message(self) -> dict:
        parts = []
        while True:
            b0, b1 = self._read(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", self._read(8))[0]
            payload = self._read(n)  # server frames are not masked
            opcode = b0 & 0x0F
            if opcode == 0x8:
                raise CDPError("DevTools closed the WebSocket")
            if opcode == 0x9:
                self._send_frame(0xA, payload)
                continue
            if opcode in (0x0, 0x1, 0x2):
                parts.append(payload)
                if b0 & 0x80:
                    return json.loads(b"".join(parts))

    # -- the protocol ---------------------------------------------------------------------------------
    def call(self, method: str, **params) -> dict:
        msg_id = next(self._ids)
        self._send_frame(0x1, json.dumps({"id": msg_id, "method": method, "params": params}).encode())
        while True:
            msg = self._recv_message()
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise CDPError(f"{method}: {msg['error']}")
                return msg["result"]

    def eval(self, expression: str):
        """The value of ``expression`` in the page (promises awaited); a JavaScript exception fails the
        test."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise CDPError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30.0, what: str | None = None):
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            value = self.eval(expression)
            if value:
                return value
            time.sleep(0.25)
        raise AssertionError(f"page: {what or expression} not true within {timeout:.0f} s (last {value!r})")

    def navigate(self, url: str, timeout: float = 30.0) -> None:
        self.call("Page.navigate", url=url)
        self.wait_for(f"document.readyState === 'complete' && location.href === {json.dumps(url)}", timeout,
                      f"load of {url}")

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class Browser:
    """A headless Chromium process with remote debugging on a free 127.0.0.1 port."""

    def __init__(self):
        if not CHROMIUM:
            raise RuntimeError("chromium is not installed "
                               "(apt-get install chromium; ./install.sh --system does)")
        # one dir for all it writes (profile, log, and its own TMPDIR files): close removes it whole
        self.root = Path(tempfile.mkdtemp(prefix="petals-ops-chromium-"))
        self.profile, self.log, tmp = self.root / "profile", self.root / "chromium.log", self.root / "tmp"
        tmp.mkdir()
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                env={**os.environ, "TMPDIR": str(tmp)},
            )
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.is_file() and len(port_file.read_text().split()) >= 2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = self.log.read_text(errors="replace")[-1500:]
                self.close()
                raise RuntimeError(f"chromium did not start: {log}")
            time.sleep(0.1)
        self.port = int(port_file.read_text().split()[0])

    def page(self) -> Page:
        """A DevTools connection to the browser's (first) tab."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list", timeout=10) as r:
            targets = json.load(r)
        tab = next(t for t in targets if t.get("type") == "page")
        return Page(tab["webSocketDebuggerUrl"])

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # renderer and GPU helpers left in the group, if any
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def browser():
    """The session's headless Chromium (started on first use)."""
    b = Browser()
    try:
        yield b
    finally:
        b.close()


@pytest.fixture(scope="session")
def artefacts_dir(request, tmp_path_factory) -> Path:
    """Where tests keep artefacts for people to look at: ``--artefacts DIR`` or pytest's temp dir."""
    chosen = request.config.getoption("--artefacts")
    path = Path(chosen) if chosen else tmp_path_factory.mktemp("browser-artefacts")
    path.mkdir(parents=True, exist_ok=True)
    return path
