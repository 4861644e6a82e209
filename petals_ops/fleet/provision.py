"""``petals-ops provision``: the idempotent install of Docker and the NVIDIA container toolkit (Ubuntu 22.04).

Each step is check -> apply (only when the check fails) -> verify. Docker is restarted only when
``nvidia-ctk runtime configure`` changed ``/etc/docker/daemon.json``. ``--dry-run`` runs the checks and
prints what would change; it changes nothing. Drivers are not installed (rented A10 VMs ship them, and a
driver install needs a reboot): a missing driver is reported.

The apply commands are constants (the official Docker and NVIDIA instructions); they take no input from
the inventory except the SSH user's name, passed as a positional parameter.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Sequence

from petals_ops.fleet.inventory import Inventory
from petals_ops.fleet.parallel import per_host
from petals_ops.fleet.ssh import HostError, HostSession, SSHOptions, select_hosts

SUPPORTED = ("ubuntu", "22.04")

DOCKER_INSTALL = r"""set -e
export DEBIAN_FRONTEND=noninteractive
for p in docker.io docker-doc docker-compose docker-compose-v2 podman-docker containerd runc; do apt-get remove -y -qq $p >/dev/null 2>&1 || true; done
apt-get update -qq
apt-get install -y -qq ca-certificates curl
install -m 0755 -d /etc/apt/keyrings
curl -fsSL https://download.docker.com/linux/ubuntu/gpg -o /etc/apt/keyrings/docker.asc
chmod a+r /etc/apt/keyrings/docker.asc
. /etc/os-release
printf 'Types: deb\nURIs: https://download.docker.com/linux/ubuntu\nSuites: %s\nComponents: stable\nArchitectures: %s\nSigned-By: /etc/apt/keyrings/docker.asc\n' "${UBUNTU_CODENAME:-$VERSION_CODENAME}" "$(dpkg --print-architecture)" > /etc/apt/sources.list.d/docker.sources
apt-get update -qq
apt-get install -y -qq docker-ce docker-ce-cli containerd.io docker-buildx-plugin docker-compose-plugin
systemctl enable --now docker"""

TOOLKIT_REPO = r"""set -e
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq curl gnupg2
curl -fsSL https://nvidia.github.io/libnvidia-container/gpgkey | gpg --batch --yes --dearmor -o /usr/share/keyrings/nvidia-container-toolkit-keyring.gpg
curl -fsSL https://nvidia.github.io/libnvidia-container/stable/deb/nvidia-container-toolkit.list | sed 's#deb https://#deb [signed-by=/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg] https://#g' > /etc/apt/sources.list.d/nvidia-container-toolkit.list"""

TOOLKIT_INSTALL = "set -e; export DEBIAN_FRONTEND=noninteractive; apt-get update -qq; apt-get install -y -qq nvidia-container-toolkit"
RUNTIME_CONFIGURE = "set -e; nvidia-ctk runtime configure --runtime=docker"
DOCKER_RESTART = "systemctl restart docker"
DOCKER_GROUP = 'usermod -aG docker "$1"'


@dataclass
class Step:
    name: str
    status: str  # ok | changed | would-change | skipped | failed | manual
    detail: str
    commands: list[str] = field(default_factory=list)


@dataclass
class ProvisionReport:
    host: str
    steps: list[Step] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and not any(s.status in ("failed", "manual") for s in self.steps)

    @property
    def changed(self) -> bool:
        return any(s.status in ("changed", "would-change") for s in self.steps)

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok, "changed": self.changed}


def _ok(session: HostSession, script: str, *args: str, sudo: bool = False) -> bool:
    return session.script(script, *args, sudo=sudo).ok


def _docker_ready(s: HostSession) -> bool:
    return _ok(s, "command -v docker >/dev/null && docker info >/dev/null 2>&1", sudo=True)


def _toolkit_repo(s: HostSession) -> bool:
    return _ok(s, "test -f /etc/apt/sources.list.d/nvidia-container-toolkit.list")


def _toolkit_pkg(s: HostSession) -> bool:
    r = s.run(["dpkg-query", "-W", "-f=${Status}", "nvidia-container-toolkit"])
    return r.ok and r.stdout.strip() == "install ok installed"


def _runtime_configured(s: HostSession) -> bool | None:
    """Whether daemon.json already equals what nvidia-ctk would write (None: cannot tell yet)."""
    want = s.run(["nvidia-ctk", "runtime", "configure", "--runtime=docker", "--dry-run"], sudo=True)
    if not want.ok:
        return None
    have = s.run(["cat", "/etc/docker/daemon.json"], sudo=True)
    try:
        wanted = json.loads(want.stdout[want.stdout.index("{"):])
        current = json.loads(have.stdout) if have.ok and have.stdout.strip() else {}
    except ValueError:
        return None
    return wanted == current


def _apply(s: HostSession, script: str, *args: str, what: str) -> None:
    r = s.script(script, *args, sudo=True, timeout=1200)
    if not r.ok:
        tail = " | ".join((r.stderr or r.stdout).strip().splitlines()[-2:])
        raise HostError(f"{s.name}: {what} failed (exit {r.exited}: {tail[:200]})", fix="run petals-ops provision --dry-run and read the step")


def provision_host(s: HostSession, inventory: Inventory, *, dry_run: bool) -> ProvisionReport:
    report = ProvisionReport(host=s.name)
    hspec, spec = inventory.host(s.name), inventory.server_for(s.name)
    wants_gpu = spec.device == "cuda" and hspec.gpus > 0
    osr = s.run(["cat", "/etc/os-release"])
    info = {k: v.strip('"') for k, v in (l.split("=", 1) for l in osr.stdout.splitlines() if "=" in l)}
    os_id, os_ver = info.get("ID", "?"), info.get("VERSION_ID", "?")
    supported = (os_id, os_ver) == SUPPORTED
    report.steps.append(Step("os", "ok" if supported else "skipped",
                             info.get("PRETTY_NAME", f"{os_id} {os_ver}") + ("" if supported else " (apply steps need Ubuntu 22.04)")))
    root_user = s.run(["id", "-u"]).stdout.strip() == "0"
    if not root_user and not hspec.sudo:
        can_sudo = False
    else:
        can_sudo = True

    def step(name: str, is_ok, apply_script: str, *args: str, detail_ok: str, detail_missing: str, after=None) -> bool:
        """check -> (dry-run: report) -> apply -> verify. Returns whether something changed."""
        if is_ok():
            report.steps.append(Step(name, "ok", detail_ok))
            return False
        commands = [apply_script.replace("$1", args[0]) if args else apply_script]
        if dry_run:
            report.steps.append(Step(name, "would-change", detail_missing, commands))
            return True
        if not supported:
            raise HostError(f"{s.name}: {name}: {detail_missing}, and the host runs {os_id} {os_ver}",
                            fix="provision applies changes on Ubuntu 22.04 only; install it by hand there")
        if not can_sudo:
            raise HostError(f"{s.name}: {name} needs root", fix=f"set hosts.{s.name}.sudo: true (NOPASSWD sudo) or connect as root")
        _apply(s, apply_script, *args, what=name)
        if after:
            after()
        if not is_ok():
            report.steps.append(Step(name, "failed", f"{detail_missing}; still so after applying", commands))
            raise HostError(f"{s.name}: {name} did not verify after applying", fix="run the commands by hand and read their output")
        report.steps.append(Step(name, "changed", f"applied: {detail_ok}", commands))
        return True

    step("docker", lambda: _docker_ready(s), DOCKER_INSTALL,
         detail_ok="Docker installed and running", detail_missing="Docker missing or not running")
    user = s.run(["id", "-un"]).stdout.strip()
    if root_user:
        report.steps.append(Step("docker group", "ok", "connecting as root"))
    else:
        step("docker group", lambda: s.run(["docker", "version"]).ok, DOCKER_GROUP, user,
             detail_ok=f"{user} can reach Docker", detail_missing=f"{user} is not in the docker group",
             after=s.close)  # the new group applies to new logins only: verify on a fresh connection
    if not wants_gpu:
        for name in ("nvidia driver", "toolkit repository", "toolkit package", "docker nvidia runtime"):
            report.steps.append(Step(name, "skipped", "no GPUs in the inventory for this host"))
        return report
    driver = s.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"])
    if driver.ok and driver.stdout.strip():
        report.steps.append(Step("nvidia driver", "ok", driver.stdout.strip().replace("\n", "; ")))
    else:
        report.steps.append(Step("nvidia driver", "manual", "nvidia-smi finds no GPU: install the NVIDIA driver (needs a reboot)"))
    step("toolkit repository", lambda: _toolkit_repo(s), TOOLKIT_REPO,
         detail_ok="NVIDIA container toolkit apt source present", detail_missing="NVIDIA apt source missing")
    step("toolkit package", lambda: _toolkit_pkg(s), TOOLKIT_INSTALL,
         detail_ok="nvidia-container-toolkit installed", detail_missing="nvidia-container-toolkit not installed")
    configured = _runtime_configured(s) if _toolkit_pkg(s) else None
    if configured:
        report.steps.append(Step("docker nvidia runtime", "ok", "/etc/docker/daemon.json has the nvidia runtime"))
    elif dry_run:
        report.steps.append(Step("docker nvidia runtime", "would-change",
                                 "daemon.json lacks the nvidia runtime; Docker would be restarted", [RUNTIME_CONFIGURE, DOCKER_RESTART]))
    else:
        _apply(s, RUNTIME_CONFIGURE, what="nvidia-ctk runtime configure")
        _apply(s, DOCKER_RESTART, what="restart docker")  # only here: the config changed
        if not _runtime_configured(s):
            raise HostError(f"{s.name}: docker nvidia runtime did not verify", fix="check /etc/docker/daemon.json")
        report.steps.append(Step("docker nvidia runtime", "changed", "configured; Docker restarted", [RUNTIME_CONFIGURE, DOCKER_RESTART]))
    return report


def provision(inventory: Inventory, hosts: Sequence[str] | None = None, *, opts: SSHOptions | None = None,
              dry_run: bool = False) -> list[ProvisionReport]:
    opts = opts or SSHOptions.from_inventory(inventory)
    names = select_hosts(inventory, hosts, opts)

    def one(h: str) -> ProvisionReport:
        with HostSession(h, inventory.host(h), opts) as session:
            return provision_host(session, inventory, dry_run=dry_run)

    return [o.value if o.ok else ProvisionReport(host=o.host, error=o.error) for o in per_host(names, one)]


__all__ = ["ProvisionReport", "Step", "provision"]
