"""``petals-ops hosts check``: what each host has, over SSH, in parallel.

Per host: reachable, OS, GPUs (name, memory, driver from nvidia-smi), free disk, Docker installed and
running, the NVIDIA container toolkit configured, the SSH user can reach Docker, the server ports free.
A check fails only against what the inventory expects (a host with ``gpus: 0`` is fine without GPUs).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Sequence

from petals_ops.fleet import containers as C
from petals_ops.fleet.schema import Inventory
from petals_ops.fleet.parallel import per_host
from petals_ops.fleet.result import HostResult
from petals_ops.fleet.ssh import HostSession, SSHOptions, select_hosts

MIN_FREE_DISK_GIB = 50  # a few nf4 BLOOM blocks plus the image

GPU_QUERY = ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader,nounits"]
# Listening TCP sockets as "address:port" (ss from iproute2; netstat as a fallback).
LISTEN_SCRIPT = ("if command -v ss >/dev/null 2>&1; then ss -Hltn | awk '{print $4}'; "
                 "else netstat -ltn 2>/dev/null | awk 'NR>2 {print $4}'; fi")
DOCKER_RUNNING_SCRIPT = ('if command -v systemctl >/dev/null 2>&1 '
                         '&& systemctl is-active --quiet docker 2>/dev/null; then echo systemd; '
                         'elif pgrep -x dockerd >/dev/null 2>&1; then echo process; else echo no; fi')


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class HostReport:
    host: str
    reachable: bool
    checks: list[Check] = field(default_factory=list)
    error: str | None = None
    facts: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.reachable and all(c.ok for c in self.checks)

    def check(self, name: str) -> Check | None:
        return next((c for c in self.checks if c.name == name), None)

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}

    def result(self) -> HostResult:
        """The fleet's one result shape: a row per check, with the fact it read (os, gpus, free disk)."""
        bad = [c.name for c in self.checks if not c.ok]
        facts = {"os": "os", "gpus": "gpus", "free disk": "free_disk_gib"}
        rows = [{"check": c.name, "ok": c.ok, "detail": c.detail,
                 **({"fact": self.facts[facts[c.name]]} if facts.get(c.name) in self.facts else {})}
                for c in self.checks]
        error = self.error or (f"{self.host}: {', '.join(bad)}" if bad else None)
        return HostResult(self.host, ok=self.ok, error=error, rows=rows)


def _gpus(session: HostSession) -> list[dict]:
    r = session.run(GPU_QUERY)
    if not r.ok:
        return []
    gpus = []
    for line in r.stdout.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3:
            gpus.append({"name": parts[0], "memory_mib": int(float(parts[1])), "driver": parts[2]})
    return gpus


def _port_users(listeners: list[str], port: int, address: str) -> list[str]:
    hits = []
    for item in listeners:
        addr, _, p = item.rpartition(":")
        addr = addr.strip("[]")
        if p == str(port) and (addr in ("0.0.0.0", "*", "::", address) or address in ("0.0.0.0", "::")):
            hits.append(item)
    return hits


def check_host(session: HostSession, inventory: Inventory) -> HostReport:
    host = session.name
    hspec = inventory.host(host)
    spec = inventory.server_for(host)
    report = HostReport(host=host, reachable=True)
    add = report.checks.append
    session.conn  # connect now: an unreachable host fails here, with one line
    osr = session.run(["cat", "/etc/os-release"])
    info = dict(line.split("=", 1) for line in osr.stdout.splitlines() if "=" in line)
    pretty = info.get("PRETTY_NAME", "unknown").strip('"')
    report.facts["os"] = {"id": info.get("ID", "").strip('"'), "pretty": pretty,
                          "version_id": info.get("VERSION_ID", "").strip('"')}
    add(Check("os", True, pretty))

    gpus = _gpus(session)
    report.facts["gpus"] = gpus
    expected = hspec.gpus if spec.device == "cuda" else 0
    detail = (", ".join(f"{g['name']} {g['memory_mib']} MiB driver {g['driver']}" for g in gpus)
              or "none (no nvidia-smi or no GPU)")
    short = f"; inventory expects {expected}" if len(gpus) < expected else ""
    add(Check("gpus", len(gpus) >= expected, detail + short))

    docker_path = session.run(["sh", "-c", "command -v docker"]).stdout.strip()
    add(Check("docker installed", bool(docker_path), docker_path or "no docker CLI on PATH"))
    info_r = session.run(["docker", "info", "--format", "{{json .}}"], sudo=True) if docker_path else None
    docker_info = {}
    if info_r is not None and info_r.ok:
        try:
            docker_info = json.loads(info_r.stdout)
        except ValueError:
            docker_info = {}
    how = session.script(DOCKER_RUNNING_SCRIPT).stdout.strip()
    running = bool(docker_info.get("ServerVersion")) or how in ("systemd", "process")
    add(Check("docker running", running,
              f"engine {docker_info.get('ServerVersion')}" if docker_info.get("ServerVersion")
              else ("daemon running" if running else "no running Docker daemon")))
    reach = session.run(["docker", "version", "--format", "{{.Server.Version}}"]) if docker_path else None
    who = session.run(["id", "-un"]).stdout.strip()
    reach_ok = reach is not None and reach.ok
    add(Check("user can reach docker", reach_ok,
              f"{who} can" if reach_ok else
              f"{who} cannot ({' '.join((reach.stderr if reach else 'no docker').split())[:120]}); "
              "add the user to the docker group"))
    runtimes = docker_info.get("Runtimes") or {}
    ctk = session.run(["sh", "-c", "command -v nvidia-ctk || command -v nvidia-container-runtime"])
    ctk = ctk.stdout.strip()
    toolkit = "nvidia" in runtimes or (bool(ctk) and bool(gpus))
    needs_toolkit = expected > 0
    add(Check("nvidia container toolkit", toolkit or not needs_toolkit,
              ("configured (docker runtime nvidia)" if "nvidia" in runtimes
               else f"installed ({ctk})" if toolkit
               else "not installed" + ("" if needs_toolkit else " (not needed: no GPUs in the inventory)"))))

    root = docker_info.get("DockerRootDir") or "/"
    df = session.script('d="$1"; [ -d "$d" ] || d=/; df -Pk "$d" | tail -1', root)
    try:
        free_gib = int(df.stdout.split()[3]) / 1024**2
        report.facts["free_disk_gib"] = round(free_gib, 1)
        add(Check("free disk", free_gib >= MIN_FREE_DISK_GIB,
                  f"{free_gib:.1f} GiB free on {root} (want >= {MIN_FREE_DISK_GIB})"))
    except (IndexError, ValueError):
        add(Check("free disk", False, f"cannot read df for {root}"))

    listeners = session.script(LISTEN_SCRIPT).stdout.split()
    ours = set()
    if reach_ok:
        try:
            ours = {c.name for c in C.managed_containers(session.docker(), host) if c.status == "running"}
        except Exception:
            ours = set()
    for slot in C.server_slots(host, hspec, spec) if expected or spec.device == "cpu" else []:
        users = _port_users(listeners, slot.port, spec.listen_address)
        if not users:
            add(Check(f"port {slot.port}", True, "free"))
        elif slot.container in ours:
            add(Check(f"port {slot.port}", True, f"used by our server {slot.container}"))
        else:
            add(Check(f"port {slot.port}", False, f"in use ({', '.join(users)}); pick another server.port"))
    return report


def check_hosts(inventory: Inventory, hosts: Sequence[str] | None = None, *,
                opts: SSHOptions | None = None) -> list[HostReport]:
    opts = opts or SSHOptions.from_inventory(inventory)
    names = select_hosts(inventory, hosts, opts)

    def one(h: str) -> HostReport:
        with HostSession(h, inventory.host(h), opts) as session:
            return check_host(session, inventory)

    return [o.value if o.ok else HostReport(host=o.host, reachable=False, error=o.error,
                                           checks=[Check("reachable", False, o.error)])
            for o in per_host(names, one)]
