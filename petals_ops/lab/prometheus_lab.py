"""A real Prometheus and a real ``petals-ops exporter`` as lab parts (the monitoring tests and the rehearsal).

Prometheus (Debian's package) runs with its own config derived from the checkout's
monitoring/prometheus.yml (same job and rule files, 1 s scrape and evaluation interval), a temp TSDB and a
free 127.0.0.1 port. Targets come from a file_sd file, so a caller points it at its own exporter with
``prometheus.set_targets([...])`` without a restart. The pytest fixtures live in
``tests/fixtures_prometheus.py``.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

from petals_ops.lab.fleet_lab import CODE_ROOT

MONITORING = CODE_ROOT / "monitoring"  # the checkout's Prometheus config and alert rules
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
JOB = "petals-exporter"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 10.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


class Prometheus:
    def __init__(self, url: str, targets_file: Path, proc: subprocess.Popen, log: Path):
        self.url, self.targets_file, self.proc, self.log = url, targets_file, proc, log

    def api(self, path: str, **params) -> dict:
        query = urllib.parse.urlencode(params, doseq=True)
        try:
            body = http_get(f"{self.url}/api/v1/{path}?{query}")
        except urllib.error.HTTPError as e:  # 400/422 carry a JSON error: return it to the caller
            body = e.read().decode()
        return json.loads(body)

    def query(self, expr: str) -> list[dict]:
        """Instant query; raises AssertionError with Prometheus' message when the expression fails."""
        data = self.api("query", query=expr)
        assert data.get("status") == "success", f"{expr}: {data.get('errorType')}: {data.get('error')}"
        return data["data"]["result"]

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def wait_for(self, expr: str, predicate, timeout: float = 60.0, interval: float = 0.5):
        """Poll ``expr`` until ``predicate(result)`` is true; return the result or fail with the last one."""
        deadline = time.monotonic() + timeout
        result = None
        while time.monotonic() < deadline:
            result = self.query(expr)
            if predicate(result):
                return result
            time.sleep(interval)
        raise AssertionError(f"{expr}: condition not met in {timeout:.0f} s; last result {result}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def set_targets(self, targets: list[str], timeout: float = 30.0) -> None:
        """Scrape exactly ``targets`` (host:port) under the job of monitoring/prometheus.yml."""
        tmp = self.targets_file.with_suffix(".tmp")
        tmp.write_text(json.dumps([{"targets": targets, "labels": {}}]))
        tmp.replace(self.targets_file)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            active = {t["labels"]["instance"] for t in self.api("targets")["data"]["activeTargets"]}
            if active == set(targets):
                return
            time.sleep(0.3)
        raise AssertionError(f"Prometheus did not pick up targets {targets} (active: {active})")


def make_test_config(base: Path, targets_file: Path) -> dict:
    """monitoring/prometheus.yml with a 1 s interval, absolute rule paths and file_sd targets."""
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str((MONITORING / f).resolve()) for f in config["rule_files"]]
    # fixed targets of other jobs (watch's 127.0.0.1:9470) are not this machine's: a test scrapes only its own
    config["scrape_configs"] = [j for j in config["scrape_configs"]
                                if j["job_name"] == JOB or "static_configs" not in j]
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == JOB]
    job.update(scrape_interval="1s", scrape_timeout="1s")
    job.pop("static_configs")
    job["file_sd_configs"] = [{"files": [str(targets_file)], "refresh_interval": "1s"}]
    return config


def start_prometheus(base: Path, config: dict | None = None) -> Prometheus:
    """A Prometheus on a free 127.0.0.1 port with ``config`` (default: :func:`make_test_config`), targets from
    ``base/targets.json`` (empty at first), TSDB under ``base``. Plain code: the rehearsal uses it too."""
    targets_file = base / "targets.json"
    targets_file.write_text("[]")
    config_file = base / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config or make_test_config(base, targets_file), sort_keys=False))
    port = free_port()
    log = base / "prometheus.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config_file}", f"--storage.tsdb.path={base / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1h"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    prom = Prometheus(url, targets_file, proc, log)
    deadline = time.monotonic() + 60
    while True:
        try:
            if "Ready" in http_get(f"{url}/-/ready", timeout=2):
                return prom
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            prom.stop()
            raise RuntimeError(f"Prometheus did not start: {log.read_text()[-2000:]}")
        time.sleep(0.3)


class ExporterProcess:
    """A real ``petals-ops exporter`` subprocess (own process group) on a free 127.0.0.1 port."""

    def __init__(self, args: list[str], log: Path, env: dict | None = None):
        import os
        import sys

        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log = log
        cmd = [sys.executable, "-m", "petals_ops.cli.main", "exporter", "--listen", self.address, *args]
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True, env=env or dict(os.environ))

    def metrics(self) -> str:
        return http_get(f"http://{self.address}/metrics")

    def sample(self, name: str, **labels) -> float | None:
        from prometheus_client.parser import text_string_to_metric_families

        for family in text_string_to_metric_families(self.metrics()):
            for s in family.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    return s.value
        return None

    def wait_for(self, predicate, timeout: float = 90.0, what: str = "condition"):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"exporter exited {self.proc.returncode}: "
                                     f"{self.log.read_text()[-2000:]}")
            try:
                last = predicate(self)
                if last:
                    return last
            except OSError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"exporter: {what} not met in {timeout:.0f} s; "
                             f"log: {self.log.read_text()[-1500:]}")

    def wait_up(self, timeout: float = 120.0) -> None:
        self.wait_for(lambda e: e.sample("petals_exporter_up") == 1, timeout, "petals_exporter_up == 1")

    def stop(self, sig: int | None = None, timeout: float = 30.0) -> int:
        """SIGTERM (default) and wait; returns the exit code (SIGKILLs the group if it hangs)."""
        import os
        import signal

        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig or signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
                return -9
        with __import__("contextlib").suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # leftovers of the group (the DHT's p2pd), if any
        return self.proc.returncode
