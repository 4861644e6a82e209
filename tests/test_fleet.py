"""The fleet against real parts: two sshd hosts (a10-1 on 127.0.0.11, a10-2 on 127.0.0.12), a Docker engine
per host reached over SSH, a test image running Petals CPU servers, and a bootstrap DHT on 127.0.0.1.

GPUs are the only thing absent: the inventory says ``gpus: 0`` and ``device: cpu``; everything else
(SSH with host-key checks, the Docker API, containers, the DHT, generation) is real. The tests share
the servers the ``online`` fixture brings up (``up``, when no earlier test did), so any one of them runs
alone too; the module fixture removes every container at the end, whatever happened.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from tests.conftest import cli_env
from tests.helpers import assert_one_line_error

TOKEN = "hf_TESTtoken_9f8e7d6c5b4a"
TOKEN_ENV = "PETALS_OPS_TEST_HF_TOKEN"


@pytest.fixture(scope="module")
def fleet(fleet_lab, tiny_model_dir, tmp_path_factory):
    """The lab plus an inventory of the two hosts serving the tiny model (a10-1: 0:2, a10-2: 2:4)."""
    tmp = tmp_path_factory.mktemp("fleet")
    port = fleet_lab.server_port()

    class F:
        lab = fleet_lab
        dir = tmp
        model_dir = tiny_model_dir
        data = fleet_lab.inventory(tiny_model_dir, port=port, token_env=TOKEN_ENV)
        path = fleet_lab.write_inventory(tmp / "petals-ops.yaml", data)
        peers: dict = {}

        @classmethod
        def cli(cls, run_cli, *args, inventory=None, timeout=400):
            return run_cli(*args, "-i", inventory or cls.path, timeout=timeout,
                           env=cli_env(**{TOKEN_ENV: TOKEN}))

        @classmethod
        def variant(cls, name, mutate):
            data = yaml.safe_load(yaml.safe_dump(cls.data))
            mutate(data)
            return fleet_lab.write_inventory(tmp / name, data)

    try:
        yield F
    finally:
        fleet_lab.remove_containers()  # teardown is the fixture's job, not the last test's


@pytest.fixture
def online(fleet, run_cli):
    """Both servers up and ONLINE, their peer ids in ``fleet.peers`` (brought up here when needed)."""
    if not fleet.peers or any("petals-server-0" not in containers(fleet.lab, h) for h in ("a10-1", "a10-2")):
        result = fleet.cli(run_cli, "up", "--timeout", "300", "-o", "json")
        assert result.returncode == 0, result.stderr + result.stdout
        fleet.peers = {h: r["peer_id"] for h, r in rows_by_host(result.stdout).items()}
    return fleet


def containers(lab, host):
    return {c.name: c for c in lab.docker(host).containers.list(all=True)}


def hosts_of(stdout: str) -> dict:
    """host -> its result (the one shape of every fleet command: host, ok, changed, error, rows)."""
    return {h["host"]: h for h in json.loads(stdout)["hosts"]}


def rows_by_host(stdout: str) -> dict:
    """host -> its one server row (each lab host runs one server)."""
    return {h: r["rows"][0] for h, r in hosts_of(stdout).items()}


# ---------------------------------------------------------------------------------------------------
def test_hosts_check_reports_what_is_there(fleet, run_cli):
    result = fleet.cli(run_cli, "hosts", "check", "-o", "json")
    assert result.returncode == 0, result.stderr + result.stdout
    reports = hosts_of(result.stdout)
    assert set(reports) == {"a10-1", "a10-2"}
    for r in reports.values():
        checks = {c["check"]: c for c in r["rows"]}
        assert r["ok"] and r["error"] is None and r["changed"] == []
        assert checks["docker running"]["ok"] and "20.10" in checks["docker running"]["detail"]
        assert checks["user can reach docker"]["ok"]
        # the one absent part: GPUs
        assert checks["gpus"]["fact"] == [] and "none" in checks["gpus"]["detail"]
        assert "not needed" in checks["nvidia container toolkit"]["detail"]
        assert any(name.startswith("port ") and c["ok"] for name, c in checks.items())
    # Expecting a GPU where there is none fails that check, by name, with exit code 1 (both hosts fail).
    gpu = fleet.variant("gpu.yaml",
                        lambda d: [h.update(gpus=1) or h["server"].pop("block_indices")
                                   for h in d["hosts"].values()] and d["server"].update(device="cuda"))
    result = fleet.cli(run_cli, "hosts", "check", inventory=gpu)
    assert_one_line_error(result, "hosts check failed on 2 of 2", "gpus", "nvidia container toolkit", code=1)
    assert "inventory expects 1" in result.stdout


def test_unreachable_host_does_not_hide_the_others(fleet, run_cli):
    def add_dead_host(d):
        d["hosts"]["a10-3"] = {"address": "127.0.0.13", "port": 2222, "user": "root",
                               "key": str(fleet.lab.client_key), "gpus": 0,
                               "server": {"listen_address": "127.0.0.13", "block_indices": ["0:4"]}}
    path = fleet.variant("dead.yaml", add_dead_host)
    result = fleet.cli(run_cli, "hosts", "check", inventory=path)
    assert_one_line_error(result, "1 of 3", "a10-3", "connection refused", code=3)
    assert "a10-1" in result.stdout and "a10-2" in result.stdout and "connection refused" in result.stdout


def test_host_keys_are_checked(fleet, run_cli):
    empty_known = fleet.dir / "known_hosts.empty"
    empty_known.write_text("")
    path = fleet.variant("tofu.yaml", lambda d: d.update(known_hosts=str(empty_known)))
    result = fleet.cli(run_cli, "hosts", "check", "--hosts", "a10-1", inventory=path)
    assert_one_line_error(result, "a10-1", "not in", "--accept-new-host-keys", code=1)
    result = fleet.cli(run_cli, "hosts", "check", "--hosts", "a10-1", "--accept-new-host-keys",
                       inventory=path)
    assert result.returncode == 0, result.stderr
    assert "[127.0.0.11]:2222 ssh-ed25519" in empty_known.read_text()
    # A changed key is refused even with --accept-new-host-keys.
    other = (fleet.lab.hosts["a10-2"].dir / "host_key.pub").read_text().split()
    empty_known.write_text(f"[127.0.0.11]:2222 {other[0]} {other[1]}\n")
    result = fleet.cli(run_cli, "hosts", "check", "--hosts", "a10-1", "--accept-new-host-keys",
                       inventory=path)
    assert_one_line_error(result, "does NOT match", code=1)


def test_provision_checks_and_dry_run(fleet, run_cli):
    """apt cannot run here: the checks run against the real hosts, the changes only as a --dry-run plan."""
    result = fleet.cli(run_cli, "provision", "--dry-run", "-o", "json")
    assert result.returncode == 0, result.stderr
    for r in json.loads(result.stdout)["hosts"]:
        steps = {s["step"]: s for s in r["rows"]}
        assert steps["docker"]["status"] == "ok" and steps["docker group"]["status"] == "ok"
        assert steps["toolkit package"]["status"] == "skipped" and not r["changed"]
    gpu = fleet.variant("gpu-prov.yaml",
                        lambda d: [h.update(gpus=1) or h["server"].pop("block_indices")
                                   for h in d["hosts"].values()] and d["server"].update(device="cuda"))
    result = fleet.cli(run_cli, "provision", "--dry-run", "--hosts", "a10-1", "-o", "json", inventory=gpu)
    [r] = json.loads(result.stdout)["hosts"]
    steps = {s["step"]: s for s in r["rows"]}
    assert (steps["toolkit repository"]["status"] == "would-change"
            and "nvidia.github.io" in steps["toolkit repository"]["commands"][0])
    assert steps["toolkit package"]["status"] == "would-change"
    assert (steps["docker nvidia runtime"]["status"] == "would-change"
            and steps["nvidia driver"]["status"] == "manual")
    assert "toolkit package: nvidia-container-toolkit not installed" in r["changed"] and not r["ok"]
    # dry run changed nothing
    assert not Path("/etc/apt/sources.list.d/nvidia-container-toolkit.list").exists()
    # For real, on this Debian host, it refuses to apply instead of half-installing.
    result = fleet.cli(run_cli, "provision", "--hosts", "a10-1", inventory=gpu)
    assert_one_line_error(result, "a10-1", "Ubuntu 22.04", code=1)


def test_quoting_stops_shell_injection(fleet, run_cli):
    marker = fleet.dir / "pwned"
    path = fleet.variant("inject.yaml",
                         lambda d: d["server"].update(identity_dir=f"x; touch {marker}; $(touch {marker})"))
    result = fleet.cli(run_cli, "up", "--dry-run", inventory=path)
    assert result.returncode == 0, result.stderr
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------------
def test_up_two_hosts_online_and_generation_works(fleet, run_cli):
    fleet.lab.remove_containers()  # from no containers, whichever tests ran before
    result = fleet.cli(run_cli, "up", "--hosts", "a10-1,a10-2", "--timeout", "300", "-o", "json")
    assert result.returncode == 0, result.stderr + result.stdout
    rows = rows_by_host(result.stdout)
    assert {h: (r["action"], r["dht_state"], r["blocks"]) for h, r in rows.items()} == {
        "a10-1": ("created", "ONLINE", "0:2"), "a10-2": ("created", "ONLINE", "2:4")}
    fleet.peers = {h: r["peer_id"] for h, r in rows.items()}
    # The token reached each container as an environment variable, never its command, nor our output.
    assert TOKEN not in result.stdout + result.stderr
    for host in ("a10-1", "a10-2"):
        c = containers(fleet.lab, host)["petals-server-0"]
        attrs = c.attrs
        assert TOKEN not in json.dumps(attrs["Args"]) + json.dumps(attrs["Config"]["Cmd"]) + attrs["Path"]
        assert f"HF_TOKEN={TOKEN}" in attrs["Config"]["Env"]
        assert attrs["HostConfig"]["IpcMode"] == "host" and attrs["HostConfig"]["NetworkMode"] == "host"
        assert attrs["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
        assert any(m.get("Name") == "petals-cache" for m in attrs["Mounts"])
    # Generation through the fleet's servers (the only servers of this DHT prefix) equals in-process
    # generation.
    common = ["--model", fleet.model_dir, "--dht-prefix", "fleet-tiny", "--max-new-tokens", "6"]
    swarm = run_cli("generate", "Q: 2+2?", "--initial-peers", fleet.lab.initial_peers[0], *common,
                    timeout=300)
    local = run_cli("generate", "Q: 2+2?", "--backend", "local", *common, timeout=300)
    assert swarm.returncode == 0 and local.returncode == 0, swarm.stderr + local.stderr
    assert swarm.stdout.strip() and swarm.stdout == local.stdout


def test_second_up_changes_nothing(fleet, online, run_cli):
    before = {h: containers(fleet.lab, h)["petals-server-0"].id for h in ("a10-1", "a10-2")}
    result = fleet.cli(run_cli, "up", "-o", "json", "--timeout", "120")
    assert result.returncode == 0, result.stderr
    assert ({h: r["action"] for h, r in rows_by_host(result.stdout).items()}
            == {"a10-1": "unchanged", "a10-2": "unchanged"})
    assert {h: containers(fleet.lab, h)["petals-server-0"].id for h in ("a10-1", "a10-2")} == before


def test_changed_setting_recreates_only_that_container(fleet, online, run_cli):
    before = {h: containers(fleet.lab, h)["petals-server-0"].id for h in ("a10-1", "a10-2")}
    fleet.data["hosts"]["a10-2"]["server"]["public_name"] = "fleet-b"
    fleet.lab.write_inventory(fleet.path, fleet.data)
    dry = fleet.cli(run_cli, "up", "--dry-run", "-o", "json")
    assert {h: r["action"] for h, r in rows_by_host(dry.stdout).items()} == {
        "a10-1": "unchanged", "a10-2": "would-recreate"}
    assert {h: r["changed"] for h, r in hosts_of(dry.stdout).items()} == {
        "a10-1": [], "a10-2": ["petals-server-0: recreate (configuration changed)"]}
    table = fleet.cli(run_cli, "up", "--dry-run")  # people see the computed changes
    assert table.returncode == 0
    assert "a10-2: petals-server-0: recreate (configuration changed)" in table.stdout
    result = fleet.cli(run_cli, "up", "-o", "json", "--timeout", "300")
    assert result.returncode == 0, result.stderr + result.stdout
    rows = rows_by_host(result.stdout)
    assert (rows["a10-1"]["action"], rows["a10-2"]["action"]) == ("unchanged", "recreated")
    assert rows["a10-2"]["dht_state"] == "ONLINE"
    assert rows["a10-2"]["peer_id"] == fleet.peers["a10-2"]  # the identity file survives recreation
    after = {h: containers(fleet.lab, h)["petals-server-0"].id for h in ("a10-1", "a10-2")}
    assert after["a10-1"] == before["a10-1"] and after["a10-2"] != before["a10-2"]


def test_status_and_the_exporter_interface(fleet, online, run_cli):
    from petals_ops.fleet import load_inventory, read_fleet

    result = fleet.cli(run_cli, "status", "-o", "json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    rows = rows_by_host(result.stdout)
    for host, peer in fleet.peers.items():
        assert rows[host]["running"] and rows[host]["peer_id"] == peer and rows[host]["dht_state"] == "ONLINE"
    assert rows["a10-1"]["dht_blocks"] == "0:2" and rows["a10-2"]["dht_blocks"] == "2:4"
    # GPUs: the lab hosts have no nvidia-smi, and say so (the inventory expects none: gpus 0, device cpu).
    assert {(g["host"], g["state"], g["expected"]) for g in data["gpus"]} == {
        ("a10-1", "no_nvidia_smi", 0), ("a10-2", "no_nvidia_smi", 0)}
    statuses = read_fleet(load_inventory(fleet.path)).containers
    assert sorted((s.host, s.container, s.running, s.peer_id, s.error) for s in statuses) == [
        ("a10-1", "petals-server-0", True, fleet.peers["a10-1"], None),
        ("a10-2", "petals-server-0", True, fleet.peers["a10-2"], None)]


def test_logs(fleet, online, run_cli):
    result = fleet.cli(run_cli, "logs", "a10-1", "--tail", "50")
    assert result.returncode == 0, result.stderr
    assert ("Started" in result.stdout or "transformer blocks" in result.stdout
            or "Server" in result.stdout), result.stdout[-2000:]
    assert TOKEN not in result.stdout


def test_restart_keeps_the_peer_id(fleet, online, run_cli):
    started = containers(fleet.lab, "a10-1")["petals-server-0"].attrs["State"]["StartedAt"]
    result = fleet.cli(run_cli, "restart", "--hosts", "a10-1", "-o", "json", "--timeout", "300")
    assert result.returncode == 0, result.stderr + result.stdout
    [row] = rows_by_host(result.stdout).values()
    assert (row["action"], row["peer_id"], row["dht_state"]) == ("restarted", fleet.peers["a10-1"], "ONLINE")
    # really restarted
    assert containers(fleet.lab, "a10-1")["petals-server-0"].attrs["State"]["StartedAt"] != started


def _signal_container(lab, host: str, sig) -> None:
    """Send ``sig`` to every process of the host's server container (seen from this machine's pid space):
    SIGSTOP freezes the server and its p2pd while Docker still says the container runs."""
    import os

    top = lab.docker(host).containers.get("petals-server-0").top()
    column = top["Titles"].index("PID")
    for row in top["Processes"]:
        os.kill(int(row[column]), sig)


def test_zombie_named_by_doctor_and_status(fleet, online, run_cli):
    """A10-2's server frozen inside its running container (a zombie): doctor and status name it with its
    host and container; thawed, it serves again. Swarm-only doctor (no inventory) needs no SSH."""
    import signal
    import time

    _signal_container(fleet.lab, "a10-2", signal.SIGSTOP)
    try:
        doctor = fleet.cli(run_cli, "doctor", "--probe-timeout", "2s", "-o", "json")
        assert doctor.returncode in (1, 3), doctor.stderr
        zombies = [f for f in json.loads(doctor.stdout)["findings"] if f["kind"] == "zombie"]
        assert [f["subject"] for f in zombies] == ["a10-2/petals-server-0"], doctor.stdout
        assert fleet.peers["a10-2"] in zombies[0]["message"] and "restart --hosts a10-2" in zombies[0]["fix"]
        status = fleet.cli(run_cli, "status", "-o", "json")
        assert status.returncode == 3, status.stderr
        hosts = hosts_of(status.stdout)
        assert hosts["a10-1"]["ok"] and not hosts["a10-2"]["ok"]
        assert "zombie: petals-server-0 on a10-2 runs" in hosts["a10-2"]["error"]
        assert rows_by_host(status.stdout)["a10-2"]["running"]  # Docker says it runs: that is the point
        table = fleet.cli(run_cli, "doctor", "--probe-timeout", "2s")
        assert "a10-2/petals-server-0" in table.stdout and "zombie" in table.stdout
    finally:
        _signal_container(fleet.lab, "a10-2", signal.SIGCONT)
    deadline = time.monotonic() + 120
    while True:  # thawed: ONLINE and answering again, nothing restarted
        status = fleet.cli(run_cli, "status", "-o", "json")
        if status.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert status.returncode == 0, status.stdout + status.stderr


def test_one_host_down_partial_failure(fleet, online, run_cli):
    """sshd of a10-1 stopped: a10-2 still comes up, the exit code says partial failure, the table names
    a10-1."""
    from petals_ops.fleet import load_inventory, read_fleet

    down = fleet.cli(run_cli, "down", "--hosts", "a10-2")
    assert down.returncode == 0, down.stderr
    empty = fleet.cli(run_cli, "status", "-o", "json")  # a reachable host without servers is a failure too
    assert empty.returncode == 3 and "a10-2" in empty.stderr, empty.stderr
    hosts = hosts_of(empty.stdout)
    assert "no petals-ops containers" in hosts["a10-2"]["error"] and hosts["a10-1"]["rows"][0]["running"]
    fleet.lab.stop_sshd("a10-1")
    try:
        result = fleet.cli(run_cli, "up", "--timeout", "300")
        assert_one_line_error(result, "up failed on 1 of 2", "a10-1", "connection refused", code=3)
        lines = {line.split()[1]: line for line in result.stdout.splitlines() if re.match(r"^│ a10-\d", line)}
        assert "FAILED" in lines["a10-1"] and "connection refused" in result.stdout
        assert "created" in lines["a10-2"] and "ONLINE" in lines["a10-2"]
        status = fleet.cli(run_cli, "status")
        assert status.returncode == 3 and "a10-1" in status.stderr
        statuses = {s.host: s for s in read_fleet(load_inventory(fleet.path)).containers}
        assert statuses["a10-1"].error and "connection refused" in statuses["a10-1"].error
        assert statuses["a10-2"].running and statuses["a10-2"].peer_id == fleet.peers["a10-2"]
    finally:
        fleet.lab.start_sshd("a10-1")


def test_down_leaves_no_container(fleet, online, run_cli):
    dry = fleet.cli(run_cli, "down", "--dry-run")
    assert dry.returncode == 0 and "would-remove" in dry.stdout
    assert containers(fleet.lab, "a10-1")
    result = fleet.cli(run_cli, "down")
    assert result.returncode == 0, result.stderr
    for host in ("a10-1", "a10-2"):
        assert containers(fleet.lab, host) == {}
        # the cache volume stays
        assert "petals-cache" in [v.name for v in fleet.lab.docker(host).volumes.list()]
    again = fleet.cli(run_cli, "down")
    assert again.returncode == 0 and "nothing" in again.stdout
