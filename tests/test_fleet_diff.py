"""The fleet's compute step over made-up host states: no SSH, no Docker (the real-sshd tests in
tests/test_fleet.py run read and apply against real hosts). Also the one result shape, its exit codes,
the status join, and multiaddrs."""

from __future__ import annotations

import json

import pytest

from petals_ops.cli.fleet_cmds import report
from petals_ops.fleet import containers as C
from petals_ops.fleet import provision as P
from petals_ops.fleet.executor import resolve_targets
from petals_ops.fleet.result import HostResult
from petals_ops.fleet.schema import Inventory
from petals_ops.fleet.ssh import HostError
from petals_ops.fleet.status import ContainerStatus, join
from petals_ops.fleet.up import CurrentContainer, RunningServer, UpHostState, plan_host, plan_restart
from petals_ops.fleet.up import plan_rows as plan_results
from petals_ops.util.errors import EXIT_FAILURE, EXIT_PARTIAL, OpsError, PartialFailure

PEER = "QmXnTFvGexkbhYVWAP95ZsSKJCG5j2xAi4vktJyRsfhnJY"
INV = Inventory.model_validate({
    "server": {"image": "learningathome/petals:2.2.0",
               "initial_peers": [f"/ip4/10.0.0.1/tcp/31337/p2p/{PEER}"]},
    "hosts": {"a10-1": {"gpus": 2, "server": {"block_indices": ["0:10", "10:20"]}}},
})
A10_1 = resolve_targets(INV, ["a10-1"])[0]
NAMES = ["petals-server-0", "petals-server-1"]
PATHS = {n: f"/root/.petals-ops/identity/a10-1.{n}.key" for n in NAMES}


def desired_hash(name: str, image_id: str = "sha256:img", token: str | None = None) -> str:
    spec = A10_1.server
    slot = next(s for s in A10_1.slots if s.container == name)
    want = C.desired_container("a10-1", spec, slot, PATHS[name], token)
    want.image_id = image_id
    return want.config_hash()


def state(containers: dict | None = None, image_id: str | None = "sha256:img", volume: bool = True,
          peers: dict | None = None) -> UpHostState:
    peers = peers or {n: f"Qm{n[-1]}" for n in NAMES}
    return UpHostState("a10-1", image_id, volume, PATHS, peers, containers or {})


def running(name: str, config_hash: str | None = None, status: str = "running", **kw) -> CurrentContainer:
    return CurrentContainer(name, config_hash or desired_hash(name), status, kw.get("managed", True),
                            kw.get("host_label", "a10-1"))


def actions(plan) -> list[str]:
    return [s.action for s in plan.servers]


# ---------------------------------------------------------------------------------------------- up
def test_fresh_host_creates_everything():
    plan = plan_host(A10_1, state(image_id=None, volume=False, peers={n: None for n in NAMES}), token=None)
    assert actions(plan) == ["create", "create"]
    assert plan.pull_image == "learningathome/petals:2.2.0" and plan.create_volume == "petals-cache"
    assert plan.changes == [
        "pull image learningathome/petals:2.2.0", "create volume petals-cache",
        "petals-server-0: new identity file (a new peer id)", "petals-server-0: create (missing)",
        "petals-server-1: new identity file (a new peer id)", "petals-server-1: create (missing)"]
    assert [r.action for r in plan_results(plan, dry_run=True)] == ["would-create", "would-create"]
    assert [r.blocks for r in plan_results(plan, dry_run=False)] == ["0:10", "10:20"]


def test_up_to_date_host_changes_nothing():
    plan = plan_host(A10_1, state({n: running(n) for n in NAMES}), token=None)
    assert actions(plan) == ["unchanged", "unchanged"] and plan.changes == []
    assert [r.peer_id for r in plan_results(plan, dry_run=True)] == ["Qm0", "Qm1"]


def test_stopped_changed_and_missing_containers():
    current = {"petals-server-0": running("petals-server-0", status="exited"),
               "petals-server-1": running("petals-server-1", config_hash="old")}
    plan = plan_host(A10_1, state(current), token=None)
    assert actions(plan) == ["start", "recreate"]
    assert plan.changes == ["petals-server-0: start (was exited)",
                            "petals-server-1: recreate (configuration changed)"]
    # A new token changes the hash (its digest is part of it), so the containers get the new token.
    plan = plan_host(A10_1, state({n: running(n) for n in NAMES}), token="hf_NEWtoken123456789")
    assert actions(plan) == ["recreate", "recreate"]


def test_a_changed_setting_recreates_only_where_it_applies():
    inv = Inventory.model_validate({**INV.model_dump(exclude={"source"}), "hosts": {
        "a10-1": {"gpus": 2, "server": {"block_indices": ["0:10", "10:20"], "public_name": "lab-a"}}}})
    plan = plan_host(resolve_targets(inv, ["a10-1"])[0], state({n: running(n) for n in NAMES}), token=None)
    assert actions(plan) == ["recreate", "recreate"]  # public_name is on the command line
    plan = plan_host(A10_1, state({n: running(n) for n in NAMES}, image_id="sha256:newer"), token=None)
    assert actions(plan) == ["recreate", "recreate"]  # a new image id under the same tag


def test_a_container_that_is_not_ours_is_never_replaced():
    for kw, needle in (({"managed": False}, "not made by petals-ops"),
                       ({"host_label": "a10-9"}, "labelled for host a10-9")):
        with pytest.raises(HostError, match=needle):
            plan_host(A10_1, state({"petals-server-0": running("petals-server-0", **kw)}), token=None)


def test_restart_plan():
    servers = [RunningServer("petals-server-0", "QmA", "0:10", "running"),
               RunningServer("petals-server-1", "QmB", "num:8", "exited")]
    changes, rows = plan_restart("a10-1", servers)
    assert changes == ["petals-server-0: restart (was running)", "petals-server-1: restart (was exited)"]
    # num:N: the server picks its span, so no range to check in the DHT
    assert [(r.peer_id, r.blocks) for r in rows] == [("QmA", "0:10"), ("QmB", None)]


# ---------------------------------------------------------------------------------------------- provision
FACT_OF_STEP = {"docker_ready": "docker", "user_reaches_docker": "docker group", "driver": "nvidia driver",
                "toolkit_repo": "toolkit repository", "toolkit_pkg": "toolkit package",
                "runtime_configured": "docker nvidia runtime"}


def prov_state(**kw) -> P.ProvisionState:
    """A made-up read: the OS and who we are, and each step's fact (the value its own check returns)."""
    base = dict(os_id="ubuntu", os_version="22.04", os_pretty="Ubuntu 22.04.4 LTS", root_user=False,  # noqa: C408
                user="ubuntu", docker_ready=True, user_reaches_docker=True, driver="NVIDIA A10, 535.183.01",
                toolkit_repo=True, toolkit_pkg=True, runtime_configured=True)
    base.update(kw)
    facts = {step: base.pop(key) for key, step in FACT_OF_STEP.items()}
    return P.ProvisionState(**base, facts=facts)


def statuses(steps) -> dict:
    return {s.name: s.status for s in steps}


def test_provision_plan_of_a_ready_host_is_all_ok():
    steps = P.plan_steps(prov_state(), wants_gpu=True)
    assert set(statuses(steps).values()) == {"ok"}
    result = P.host_result("a10-1", steps)
    assert result.ok and result.changed == [] and result.error is None


def test_provision_plan_of_a_bare_ubuntu_host():
    bare = prov_state(docker_ready=False, user_reaches_docker=False, driver=None, toolkit_repo=False,
                      toolkit_pkg=False, runtime_configured=None)
    steps = P.plan_steps(bare, wants_gpu=True)
    assert statuses(steps) == {"os": "ok", "docker": "would-change", "docker group": "would-change",
                               "nvidia driver": "manual", "toolkit repository": "would-change",
                               "toolkit package": "would-change", "docker nvidia runtime": "would-change"}
    by = {s.name: s for s in steps}
    assert by["docker group"].commands == ['usermod -aG docker "ubuntu"']
    # Docker restarts only in the step that changes its config.
    assert by["docker nvidia runtime"].commands == [P.RUNTIME_CONFIGURE, P.DOCKER_RESTART]
    result = P.host_result("a10-1", steps)
    assert not result.ok and "nvidia driver" in result.error  # a driver is not ours to install
    assert len(result.changed) == 5


def test_provision_plan_without_gpus_or_as_root():
    root = prov_state(root_user=True, user="root", user_reaches_docker=False, driver=None)
    steps = P.plan_steps(root, wants_gpu=False)
    assert statuses(steps) == {"os": "ok", "docker": "ok", "docker group": "ok", "nvidia driver": "skipped",
                               "toolkit repository": "skipped", "toolkit package": "skipped",
                               "docker nvidia runtime": "skipped"}
    debian = prov_state(os_id="debian", os_version="12")
    assert statuses(P.plan_steps(debian, wants_gpu=False))["os"] == "skipped"


# ---------------------------------------------------------------------------------------------- status join
class FakeSnapshot:
    def __init__(self, records: dict):
        self.records = records

    def server(self, peer_id):
        return self.records.get(peer_id)


class Rec:
    def __init__(self, state, start, end):
        self.state, self.start_block, self.end_block, self.throughput = state, start, end, 1.0
        self.reachable = self.reachability = None  # not probed


def cs(host, name="petals-server-0", running=True, peer=None, error=None):
    return ContainerStatus(host, name, running, 0, None if running else 137, peer, error)


def test_each_provision_step_carries_its_own_check():
    """The fact that decides a step (read) is the one that verifies it after apply: one check per step."""
    assert [s.name for s in P.STEPS] == list(FACT_OF_STEP.values())
    assert all(callable(s.check) for s in P.STEPS)
    assert all(s.scripts or s.manual for s in P.STEPS)


def test_status_join():
    sts = [cs("a", peer="QmA"), cs("b", peer="QmB"), cs("c", running=False, peer="QmC"),
           cs("d", name="", running=False, error="d: cannot connect (connection refused)")]
    snap = FakeSnapshot({"QmA": Rec("ONLINE", 0, 2), "QmB": Rec("JOINING", 2, 4)})
    out = {r.host: r for r in join(["a", "b", "c", "d", "e"], sts, snap)}
    row = out["a"].rows[0]
    assert out["a"].ok and (row.dht_state, row.dht_blocks) == ("ONLINE", "0:2")
    assert not out["b"].ok and "JOINING in the DHT" in out["b"].error
    assert not out["c"].ok and "not running (exit code 137)" in out["c"].error
    assert not out["d"].ok and "connection refused" in out["d"].error
    assert not out["e"].ok and "no petals-ops containers" in out["e"].error
    # Without a snapshot (no DHT reachable) running containers are enough; the DHT state is unknown.
    assert [r.ok for r in join(["a", "c"], sts, None)] == [True, False]
    assert join(["a"], sts, None)[0].rows[0].dht_state is None


# ---------------------------------------------------------------------------------------------- the shape
def test_report_exit_codes_and_json(capsys):
    ok = HostResult("a", changed=["x: create (missing)"], rows=[{"container": "x", "action": "created"}])
    bad = HostResult.failed("b", "b: cannot connect (connection refused)")
    report([ok], "up", ["container", "action"], output="json")
    data = json.loads(capsys.readouterr().out)
    assert data["hosts"] == [ok.to_dict()]
    assert (data["exit_code"], data["ok"], data["command"]) == (0, True, "up")
    with pytest.raises(PartialFailure) as e:
        report([ok, bad], "up", ["container", "action"])
    assert e.value.exit_code == EXIT_PARTIAL
    assert "up failed on 1 of 2 host(s): b (b: cannot connect" in str(e.value)
    table = capsys.readouterr().out
    assert "FAILED" in table and "connection refused" in table and "created" in table
    with pytest.raises(OpsError) as e:
        report([bad], "down", ["container", "action"], dry_run=True)
    assert e.value.exit_code == EXIT_FAILURE and "dry run: nothing changed" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------- multiaddrs
def test_multiaddrs_for_ipv4_ipv6_and_dns_names():
    from petals_ops.fleet.peers import multiaddr

    assert multiaddr("203.0.113.7", 31330, "QmA") == "/ip4/203.0.113.7/tcp/31330/p2p/QmA"
    assert multiaddr("[2001:db8::7]", 31330) == "/ip6/2001:db8::7/tcp/31330"
    assert multiaddr("gpu-1.example.org", 31331, "QmB") == "/dns/gpu-1.example.org/tcp/31331/p2p/QmB"
    spec = Inventory.model_validate({"server": {"listen_address": "::", "public_ip": "2001:db8::7"}}).server
    args = C.server_args(spec, C.server_slots("h", Inventory().host("h"), spec)[0])
    assert args[args.index("--host_maddrs") + 1] == "/ip6/::/tcp/31330"
    assert args[args.index("--announce_maddrs") + 1] == "/ip6/2001:db8::7/tcp/31330"


def test_without_initial_peers_the_fleet_joins_the_public_swarm_and_plan_says_so():
    """petals' own published initial peers (imported from petals, not copied): the wait, status, plan."""
    import importlib

    from petals_ops.client import door as petals_door  # noqa: F401  (first: it makes petals importable)
    from petals_ops.fleet.peers import inventory_peers
    from petals_ops.fleet.plan import make_plan

    PUBLIC_INITIAL_PEERS = importlib.import_module("petals.constants").PUBLIC_INITIAL_PEERS

    public = Inventory.model_validate({"hosts": {"a10-1": {"gpus": 1}}})
    assert inventory_peers(resolve_targets(public, ["a10-1"])) == list(PUBLIC_INITIAL_PEERS)
    assert inventory_peers([A10_1]) == INV.server.initial_peers
    new = Inventory.model_validate({"server": {"new_swarm": True}, "hosts": {"a10-1": {}}})
    assert inventory_peers(resolve_targets(new, ["a10-1"])) == []
    note = make_plan(public, ["a10-1"]).swarm
    assert "a10-1 joins the PUBLIC swarm" in note and PUBLIC_INITIAL_PEERS[0] in note
    private = make_plan(INV, ["a10-1"]).swarm
    assert "initial_peers" in private and "PUBLIC" not in private
