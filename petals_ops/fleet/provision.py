"""``petals-ops provision``: the idempotent install of Docker and the NVIDIA container toolkit (Ubuntu 22.04).

Each step carries its own check: the fact that decides whether the step changes anything is the fact
that verifies it after its commands ran (read -> plan -> apply, then the same check). Docker is restarted
only when ``nvidia-ctk runtime configure`` changed ``/etc/docker/daemon.json``. ``--dry-run`` runs the
checks and prints what would change; it changes nothing. Drivers are not installed (rented A10 VMs ship
them, and a driver install needs a reboot): a missing driver is reported.

The apply commands are constants (the official Docker and NVIDIA instructions); they take no input from
the inventory except the SSH user's name, passed as a positional parameter.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Callable, Sequence

from petals_ops.fleet.executor import Operation, Target, run_operation
from petals_ops.fleet.result import HostResult, StepRow
from petals_ops.fleet.schema import Inventory
from petals_ops.fleet.ssh import HostError, HostSession, SSHOptions

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


# -- the steps: each one's check is the fact that decides it and verifies it ----------------------------
def _ok(session: HostSession, script: str, *args: str, sudo: bool = False) -> bool:
    return session.script(script, *args, sudo=sudo).ok


def _docker_ready(s: HostSession) -> bool:
    return _ok(s, "command -v docker >/dev/null && docker info >/dev/null 2>&1", sudo=True)


def _user_reaches_docker(s: HostSession) -> bool:
    return s.run(["docker", "version"]).ok


def _driver(s: HostSession) -> str | None:
    """nvidia-smi's GPU list (name, driver) on one line; None when it finds none."""
    r = s.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"])
    return (r.stdout.strip().replace("\n", "; ") or None) if r.ok else None


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


@dataclass(frozen=True)
class Step:
    """One provision step: its check (truthy: in place; a string says what is there), the details shown
    either way, and the scripts that make the check pass (``$1`` is the SSH user)."""

    name: str
    check: Callable[[HostSession], object]
    in_place: str
    missing: str
    scripts: tuple[str, ...] = ()
    gpu: bool = False  # only on hosts whose servers use GPUs
    manual: bool = False  # not ours to apply (a driver install needs a reboot)
    new_login: bool = False  # takes effect for new logins only: verify on a fresh connection


STEPS = (
    Step("docker", _docker_ready, "Docker installed and running", "Docker missing or not running",
         (DOCKER_INSTALL,)),
    Step("docker group", _user_reaches_docker, "{user} can reach Docker", "{user} is not in the docker group",
         (DOCKER_GROUP,), new_login=True),
    Step("nvidia driver", _driver, "{fact}",
         "nvidia-smi finds no GPU: install the NVIDIA driver (needs a reboot)", gpu=True, manual=True),
    Step("toolkit repository", _toolkit_repo, "NVIDIA container toolkit apt source present",
         "NVIDIA apt source missing", (TOOLKIT_REPO,), gpu=True),
    Step("toolkit package", _toolkit_pkg, "nvidia-container-toolkit installed",
         "nvidia-container-toolkit not installed", (TOOLKIT_INSTALL,), gpu=True),
    # Docker restarts only here, in the step that changes its config
    Step("docker nvidia runtime", _runtime_configured, "/etc/docker/daemon.json has the nvidia runtime",
         "daemon.json lacks the nvidia runtime; Docker would be restarted",
         (RUNTIME_CONFIGURE, DOCKER_RESTART), gpu=True),
)
GPU_STEPS = tuple(st.name for st in STEPS if st.gpu)


# -- read ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProvisionState:
    """What provision knows of a host, read once before anything changes: the OS, who we are, and each
    applicable step's fact (``facts[step name]``; a GPU step's is absent on a host without GPUs)."""

    os_id: str
    os_version: str
    os_pretty: str
    root_user: bool
    user: str
    facts: dict = field(default_factory=dict)

    @property
    def supported(self) -> bool:
        return (self.os_id, self.os_version) == SUPPORTED


def read_state(s: HostSession, *, wants_gpu: bool) -> ProvisionState:
    osr = s.run(["cat", "/etc/os-release"])
    pairs = (line.split("=", 1) for line in osr.stdout.splitlines() if "=" in line)
    info = {k: v.strip('"') for k, v in pairs}
    os_id, os_ver = info.get("ID", "?"), info.get("VERSION_ID", "?")
    return ProvisionState(
        os_id=os_id, os_version=os_ver, os_pretty=info.get("PRETTY_NAME", f"{os_id} {os_ver}"),
        root_user=s.run(["id", "-u"]).stdout.strip() == "0", user=s.run(["id", "-un"]).stdout.strip(),
        facts={st.name: st.check(s) for st in STEPS if wants_gpu or not st.gpu},
    )


# -- plan ---------------------------------------------------------------------------------------------
def _show(script: str, user: str) -> str:
    return script.replace("$1", user)


@dataclass
class PlannedStep:
    """A step with its status from the read: ok | would-change (with the commands) | skipped | manual;
    after apply: changed."""

    step: Step
    status: str
    detail: str
    commands: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.step.name

    def row(self) -> StepRow:
        return StepRow(self.name, self.status, self.detail, self.commands)


_OS = Step("os", lambda s: None, "", "")


def plan_steps(state: ProvisionState, *, wants_gpu: bool) -> list[PlannedStep]:
    """The steps and their status from the state alone. Pure: unit-tested over made-up states."""
    steps = [PlannedStep(_OS, "ok" if state.supported else "skipped",
                         state.os_pretty + ("" if state.supported else " (apply steps need Ubuntu 22.04)"))]
    for st in STEPS:
        fact = state.facts.get(st.name)
        if st.gpu and not wants_gpu:
            steps.append(PlannedStep(st, "skipped", "no GPUs in the inventory for this host"))
        elif st.name == "docker group" and state.root_user:
            steps.append(PlannedStep(st, "ok", "connecting as root"))
        elif fact:
            steps.append(PlannedStep(st, "ok", st.in_place.format(user=state.user, fact=fact)))
        elif st.manual:
            steps.append(PlannedStep(st, "manual", st.missing))
        else:
            steps.append(PlannedStep(st, "would-change", st.missing.format(user=state.user),
                                     [_show(script, state.user) for script in st.scripts]))
    return steps


def host_result(host: str, steps: Sequence[PlannedStep], error: str | None = None) -> HostResult:
    """A host's steps in the fleet's result shape (manual or failed steps fail the host)."""
    bad = [st.name for st in steps if st.status in ("failed", "manual")]
    return HostResult(host, ok=error is None and not bad,
                      changed=[f"{st.name}: {st.detail}" for st in steps
                               if st.status in ("changed", "would-change")],
                      error=error or (f"{host}: needs {', '.join(bad)}" if bad else None),
                      rows=[st.row() for st in steps])


# -- apply --------------------------------------------------------------------------------------------
def _run_script(s: HostSession, script: str, user: str, *, what: str) -> None:
    r = s.script(script, user, sudo=True, timeout=1200)
    if not r.ok:
        tail = " | ".join((r.stderr or r.stdout).strip().splitlines()[-2:])
        raise HostError(f"{s.name}: {what} failed (exit {r.exited}: {tail[:200]})",
                        fix="run petals-ops provision --dry-run and read the step")


def apply_steps(s: HostSession, state: ProvisionState, steps: list[PlannedStep]) -> list[PlannedStep]:
    """Run the would-change steps in order; each is verified by its own check after its scripts ran."""
    done = []
    for st in steps:
        if st.status != "would-change":
            done.append(st)
            continue
        if not state.supported:
            raise HostError(f"{s.name}: {st.name}: {st.detail}, and the host runs {state.os_id} "
                            f"{state.os_version}",
                            fix="provision applies changes on Ubuntu 22.04 only; install it by hand there")
        if not state.root_user and not s.spec.sudo:
            raise HostError(f"{s.name}: {st.name} needs root",
                            fix=f"set hosts.{s.name}.sudo: true (NOPASSWD sudo) or connect as root")
        for script in st.step.scripts:
            _run_script(s, script, state.user, what=st.name)
        if st.step.new_login:
            s.close()  # e.g. a new group applies to new logins only: verify on a fresh connection
        if not st.step.check(s):
            raise HostError(f"{s.name}: {st.name} did not verify after applying",
                            fix="run the commands by hand and read their output")
        done.append(PlannedStep(st.step, "changed", f"applied: {st.detail}", st.commands))
    return done


class Provision(Operation):
    def read(self, target: Target, session: HostSession) -> ProvisionState:
        return read_state(session, wants_gpu=target.wants_gpu)

    def plan(self, target: Target, state: ProvisionState):
        return state, plan_steps(state, wants_gpu=target.wants_gpu)

    def preview(self, target: Target, plan) -> HostResult:
        return host_result(target.name, plan[1])

    def apply(self, target: Target, session: HostSession, plan) -> HostResult:
        state, steps = plan
        return host_result(target.name, apply_steps(session, state, steps))


def provision(inventory: Inventory, hosts: Sequence[str] | None = None, *, opts: SSHOptions | None = None,
              dry_run: bool = False) -> list[HostResult]:
    return run_operation(Provision(), inventory, hosts, opts=opts, dry_run=dry_run)


__all__ = ["STEPS", "PlannedStep", "ProvisionState", "Step", "plan_steps", "provision"]
