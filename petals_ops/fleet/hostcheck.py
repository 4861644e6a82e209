"""``petals-ops hosts check``: what each host has, over SSH, in parallel.

Per host: reachable, OS, GPUs (name, memory, driver from nvidia-smi), free disk, Docker installed and
running, the NVIDIA container toolkit configured, the SSH user can reach Docker, the server ports free.
A check fails only against what the inventory expects (a host with ``gpus: 0`` is fine without GPUs).
"""

from __future__ import annotations

import json
from typing import Sequence

from petals_ops.fleet import containers as C
from petals_ops.fleet.executor import Operation, Target, run_operation
from petals_ops.fleet.result import CheckRow, HostResult
from petals_ops.fleet.schema import Inventory
from petals_ops.fleet.ssh import HostSession, SSHOptions
from petals_ops.util.errors import one_line

MIN_FREE_DISK_GIB = 50  # a few nf4 BLOOM blocks plus the image

GPU_QUERY = ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader,nounits"]
# Listening TCP sockets as "address:port" (ss from iproute2; netstat as a fallback).
LISTEN_SCRIPT = ("if command -v ss >/dev/null 2>&1; then ss -Hltn | awk '{print $4}'; "
                 "else netstat -ltn 2>/dev/null | awk 'NR>2 {print $4}'; fi")
DOCKER_RUNNING_SCRIPT = ('if command -v systemctl >/dev/null 2>&1 '
                         '&& systemctl is-active --quiet docker 2>/dev/null; then echo systemd; '
                         'elif pgrep -x dockerd >/dev/null 2>&1; then echo process; else echo no; fi')


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


class HostsCheck(Operation):
    """Read-only: the checks are the reading; the result previews it."""

    def read(self, target: Target, session: HostSession) -> list[CheckRow]:
        return check_host(session, target)

    def preview(self, target: Target, plan: list[CheckRow]) -> HostResult:
        bad = [c.check for c in plan if not c.ok]
        return HostResult(target.name, ok=not bad, error=f"{target.name}: {', '.join(bad)}" if bad else None,
                          rows=plan)


def check_hosts(inventory: Inventory, hosts: Sequence[str] | None = None, *,
                opts: SSHOptions | None = None) -> list[HostResult]:
    return run_operation(HostsCheck(), inventory, hosts, opts=opts)


def check_host(session: HostSession, target: Target) -> list[CheckRow]:
    """Every check of one host, in order; os, gpus and free disk carry the fact they read."""
    host, spec = target.name, target.server
    checks: list[CheckRow] = []
    add = checks.append
    session.conn  # connect now: an unreachable host fails here, with one line
    osr = session.run(["cat", "/etc/os-release"])
    info = dict(line.split("=", 1) for line in osr.stdout.splitlines() if "=" in line)
    pretty = info.get("PRETTY_NAME", "unknown").strip('"')
    add(CheckRow("os", True, pretty, fact={"id": info.get("ID", "").strip('"'), "pretty": pretty,
                                           "version_id": info.get("VERSION_ID", "").strip('"')}))

    gpus = _gpus(session)
    expected = target.expected_gpus
    detail = (", ".join(f"{g['name']} {g['memory_mib']} MiB driver {g['driver']}" for g in gpus)
              or "none (no nvidia-smi or no GPU)")
    short = f"; inventory expects {expected}" if len(gpus) < expected else ""
    add(CheckRow("gpus", len(gpus) >= expected, detail + short, fact=gpus))

    docker_path = session.run(["sh", "-c", "command -v docker"]).stdout.strip()
    add(CheckRow("docker installed", bool(docker_path), docker_path or "no docker CLI on PATH"))
    info_r = session.run(["docker", "info", "--format", "{{json .}}"], sudo=True) if docker_path else None
    docker_info = {}
    if info_r is not None and info_r.ok:
        try:
            docker_info = json.loads(info_r.stdout)
        except ValueError:
            docker_info = {}
    how = session.script(DOCKER_RUNNING_SCRIPT).stdout.strip()
    running = bool(docker_info.get("ServerVersion")) or how in ("systemd", "process")
    add(CheckRow("docker running", running,
                 f"engine {docker_info.get('ServerVersion')}" if docker_info.get("ServerVersion")
                 else ("daemon running" if running else "no running Docker daemon")))
    reach = session.run(["docker", "version", "--format", "{{.Server.Version}}"]) if docker_path else None
    who = session.run(["id", "-un"]).stdout.strip()
    reach_ok = reach is not None and reach.ok
    add(CheckRow("user can reach docker", reach_ok,
                 f"{who} can" if reach_ok else
                 f"{who} cannot ({one_line(reach.stderr if reach else 'no docker', 120)}); "
                 "add the user to the docker group"))
    runtimes = docker_info.get("Runtimes") or {}
    ctk = session.run(["sh", "-c", "command -v nvidia-ctk || command -v nvidia-container-runtime"])
    ctk = ctk.stdout.strip()
    toolkit = "nvidia" in runtimes or (bool(ctk) and bool(gpus))
    needs_toolkit = expected > 0
    add(CheckRow("nvidia container toolkit", toolkit or not needs_toolkit,
                 ("configured (docker runtime nvidia)" if "nvidia" in runtimes
                  else f"installed ({ctk})" if toolkit
                  else "not installed"
                  + ("" if needs_toolkit else " (not needed: no GPUs in the inventory)"))))

    root = docker_info.get("DockerRootDir") or "/"
    df = session.script('d="$1"; [ -d "$d" ] || d=/; df -Pk "$d" | tail -1', root)
    try:
        free_gib = int(df.stdout.split()[3]) / 1024**2
        add(CheckRow("free disk", free_gib >= MIN_FREE_DISK_GIB,
                     f"{free_gib:.1f} GiB free on {root} (want >= {MIN_FREE_DISK_GIB})",
                     fact=round(free_gib, 1)))
    except (IndexError, ValueError):
        add(CheckRow("free disk", False, f"cannot read df for {root}"))

    listeners = session.script(LISTEN_SCRIPT).stdout.split()
    ours = set()
    if reach_ok:
        try:
            ours = {c.name for c in C.managed_containers(session.docker(), host) if c.status == "running"}
        except Exception:
            ours = set()
    for slot in target.slots:
        users = _port_users(listeners, slot.port, spec.listen_address)
        if not users:
            add(CheckRow(f"port {slot.port}", True, "free"))
        elif slot.container in ours:
            add(CheckRow(f"port {slot.port}", True, f"used by our server {slot.container}"))
        else:
            add(CheckRow(f"port {slot.port}", False,
                         f"in use ({', '.join(users)}); pick another server.port"))
    return checks


