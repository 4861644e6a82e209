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
from dataclasses import dataclass, field
from typing import Sequence

from petals_ops.fleet.schema import Inventory
from petals_ops.fleet.parallel import per_host
from petals_ops.fleet.result import HostResult
from petals_ops.fleet.ssh import HostError, HostSession, SSHOptions, select_hosts

SUPPORTED = ("ubuntu", "22.04")

DOCKER_INSTALL = r"""set -e
export DEBIAN_FRONTEND=noninteractive
for p in docker.io docker-doc docker-compose docker-compose-v2 podman-docker containerd runc; do
  apt-get remove -y -qq $p >/dev/null 2>&1 || true
done
apt-get update -qq
apt-get install -y -qq ca-certificates curl
install -m 0755 -d /etc/apt/keyrings
curl -fsSL https://download.docker.com/linux/ubuntu/gpg -o /etc/apt/keyrings/docker.asc
chmod a+r /etc/apt/keyrings/docker.asc
. /etc/os-release
printf 'Types: deb\nURIs: https://download.docker.com/linux/ubuntu\nSuites: %s\n%s\n%s\n%s\n' \
  "${UBUNTU_CODENAME:-$VERSION_CODENAME}" "Components: stable" "Architectures: $(dpkg --print-architecture)" \
  "Signed-By: /etc/apt/keyrings/docker.asc" > /etc/apt/sources.list.d/docker.sources
apt-get update -qq
apt-get install -y -qq docker-ce docker-ce-cli containerd.io docker-buildx-plugin docker-compose-plugin
systemctl enable --now docker"""

TOOLKIT_REPO = r"""set -e
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq curl gnupg2
key=/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg
curl -fsSL https://nvidia.github.io/libnvidia-container/gpgkey | gpg --batch --yes --dearmor -o "$key"
curl -fsSL https://nvidia.github.io/libnvidia-container/stable/deb/nvidia-container-toolkit.list \
  | sed "s#deb https://#deb [signed-by=$key] https://#g" \
  > /etc/apt/sources.list.d/nvidia-container-toolkit.list"""

TOOLKIT_INSTALL = ("set -e; export DEBIAN_FRONTEND=noninteractive; apt-get update -qq; "
                   "apt-get install -y -qq nvidia-container-toolkit")
RUNTIME_CONFIGURE = "set -e; nvidia-ctk runtime configure --runtime=docker"
DOCKER_RESTART = "systemctl restart docker"
DOCKER_GROUP = 'usermod -aG docker "$1"'


@dataclass
class Step:
    name: str
    status: str  # ok | changed | would-change | skipped | failed | manual
    detail: str
    commands: list[str] = field(default_factory=list)

    def row(self) -> dict:
        return {"step": self.name, "status": self.status, "detail": self.detail, "commands": self.commands,
                "ok": self.status not in ("failed", "manual")}


def host_result(host: str, steps: list[Step], error: str | None = None) -> HostResult:
    """A host's steps in the fleet's result shape (manual or failed steps fail the host)."""
    bad = [st.name for st in steps if st.status in ("failed", "manual")]
    return HostResult(host, ok=error is None and not bad,
                      changed=[f"{st.name}: {st.detail}" for st in steps
                               if st.status in ("changed", "would-change")],
                      error=error or (f"{host}: needs {', '.join(bad)}" if bad else None),
                      rows=[st.row() for st in steps])


# -- read ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProvisionState:
    """What provision checks on a host, read once before anything changes."""

    os_id: str
    os_version: str
    os_pretty: str
    root_user: bool
    user: str
    docker_ready: bool
    user_reaches_docker: bool
    driver: str | None  # nvidia-smi's GPU list, None when it finds none
    toolkit_repo: bool
    toolkit_pkg: bool
    runtime_configured: bool | None  # None: cannot tell (no toolkit yet)


def read_state(s: HostSession, *, wants_gpu: bool) -> ProvisionState:
    osr = s.run(["cat", "/etc/os-release"])
    pairs = (line.split("=", 1) for line in osr.stdout.splitlines() if "=" in line)
    info = {k: v.strip('"') for k, v in pairs}
    os_id, os_ver = info.get("ID", "?"), info.get("VERSION_ID", "?")
    driver = None
    if wants_gpu:
        driver = s.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"])
    pkg = wants_gpu and _toolkit_pkg(s)
    return ProvisionState(
        os_id=os_id, os_version=os_ver, os_pretty=info.get("PRETTY_NAME", f"{os_id} {os_ver}"),
        root_user=s.run(["id", "-u"]).stdout.strip() == "0", user=s.run(["id", "-un"]).stdout.strip(),
        docker_ready=_docker_ready(s), user_reaches_docker=s.run(["docker", "version"]).ok,
        driver=(driver.stdout.strip().replace("\n", "; ") or None) if driver and driver.ok else None,
        toolkit_repo=wants_gpu and _toolkit_repo(s), toolkit_pkg=pkg,
        runtime_configured=_runtime_configured(s) if pkg else None,
    )


# -- compute ------------------------------------------------------------------------------------------
def _show(script: str, *args: str) -> str:
    return script.replace("$1", args[0]) if args else script


def plan_steps(state: ProvisionState, *, wants_gpu: bool) -> list[Step]:
    """The steps and their status from the state alone: ok, would-change (with the commands), skipped,
    manual (a driver is not ours to install). Unit-tested over made-up states, without SSH."""
    supported = (state.os_id, state.os_version) == SUPPORTED
    steps = [Step("os", "ok" if supported else "skipped",
                  state.os_pretty + ("" if supported else " (apply steps need Ubuntu 22.04)"))]

    def step(name: str, ok: bool, detail_ok: str, detail_missing: str, *commands: str) -> None:
        steps.append(Step(name, "ok", detail_ok) if ok
                     else Step(name, "would-change", detail_missing, list(commands)))

    step("docker", state.docker_ready, "Docker installed and running", "Docker missing or not running",
         DOCKER_INSTALL)
    if state.root_user:
        steps.append(Step("docker group", "ok", "connecting as root"))
    else:
        step("docker group", state.user_reaches_docker, f"{state.user} can reach Docker",
             f"{state.user} is not in the docker group", _show(DOCKER_GROUP, state.user))
    if not wants_gpu:
        for name in GPU_STEPS:
            steps.append(Step(name, "skipped", "no GPUs in the inventory for this host"))
        return steps
    if state.driver:
        steps.append(Step("nvidia driver", "ok", state.driver))
    else:
        steps.append(Step("nvidia driver", "manual",
                          "nvidia-smi finds no GPU: install the NVIDIA driver (needs a reboot)"))
    step("toolkit repository", state.toolkit_repo, "NVIDIA container toolkit apt source present",
         "NVIDIA apt source missing", TOOLKIT_REPO)
    step("toolkit package", state.toolkit_pkg, "nvidia-container-toolkit installed",
         "nvidia-container-toolkit not installed", TOOLKIT_INSTALL)
    step("docker nvidia runtime", bool(state.runtime_configured),
         "/etc/docker/daemon.json has the nvidia runtime",
         "daemon.json lacks the nvidia runtime; Docker would be restarted", RUNTIME_CONFIGURE, DOCKER_RESTART)
    return steps


GPU_STEPS = ("nvidia driver", "toolkit repository", "toolkit package", "docker nvidia runtime")


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
        raise HostError(f"{s.name}: {what} failed (exit {r.exited}: {tail[:200]})",
                        fix="run petals-ops provision --dry-run and read the step")


# -- apply --------------------------------------------------------------------------------------------
def _verifier(s: HostSession, name: str):
    return {
        "docker": lambda: _docker_ready(s),
        "docker group": lambda: s.run(["docker", "version"]).ok,
        "toolkit repository": lambda: _toolkit_repo(s),
        "toolkit package": lambda: _toolkit_pkg(s),
        "docker nvidia runtime": lambda: bool(_runtime_configured(s)),
    }[name]


def apply_steps(s: HostSession, state: ProvisionState, steps: list[Step]) -> list[Step]:
    """Run the would-change steps in order, each verified by its check after its commands ran."""
    supported = (state.os_id, state.os_version) == SUPPORTED
    done = []
    for st in steps:
        if st.status != "would-change":
            done.append(st)
            continue
        if not supported:
            raise HostError(f"{s.name}: {st.name}: {st.detail}, and the host runs {state.os_id} "
                            f"{state.os_version}",
                            fix="provision applies changes on Ubuntu 22.04 only; install it by hand there")
        if not state.root_user and not s.spec.sudo:
            raise HostError(f"{s.name}: {st.name} needs root",
                            fix=f"set hosts.{s.name}.sudo: true (NOPASSWD sudo) or connect as root")
        if st.name == "docker group":
            _apply(s, DOCKER_GROUP, state.user, what=st.name)
            s.close()  # the new group applies to new logins only: verify on a fresh connection
        else:
            for script in st.commands:  # the runtime step restarts Docker: only here, its config changed
                _apply(s, script, what=st.name)
        if not _verifier(s, st.name)():
            raise HostError(f"{s.name}: {st.name} did not verify after applying",
                            fix="run the commands by hand and read their output")
        done.append(Step(st.name, "changed", f"applied: {st.detail}", st.commands))
    return done


def provision_host(s: HostSession, inventory: Inventory, *, dry_run: bool) -> HostResult:
    """read -> compute -> (unless dry_run) apply, for one host."""
    hspec, spec = inventory.host(s.name), inventory.server_for(s.name)
    wants_gpu = spec.device == "cuda" and hspec.gpus > 0
    state = read_state(s, wants_gpu=wants_gpu)
    steps = plan_steps(state, wants_gpu=wants_gpu)
    return host_result(s.name, steps if dry_run else apply_steps(s, state, steps))


def provision(inventory: Inventory, hosts: Sequence[str] | None = None, *, opts: SSHOptions | None = None,
              dry_run: bool = False) -> list[HostResult]:
    opts = opts or SSHOptions.from_inventory(inventory)
    names = select_hosts(inventory, hosts, opts)

    def one(h: str) -> HostResult:
        with HostSession(h, inventory.host(h), opts) as session:
            return provision_host(session, inventory, dry_run=dry_run)

    return [o.value if o.ok else HostResult.failed(o.host, o.error) for o in per_host(names, one)]


__all__ = ["ProvisionState", "Step", "plan_steps", "provision"]
