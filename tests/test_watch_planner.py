"""``watch``'s planner as a pure function over made-up readings (no SSH, no DHT), and its journal's replay.

Every rule of petals_ops/fleet/watch/planner.py: K bad readings, unknown is not dead, the ladder
(restart -> recreate -> give up), resets, zombies, a distrusted DHT, backoff, the hourly and per-pass
limits, spares taken and given back, foreign containers left alone; then the journal (fsynced lines, a torn
line, an interrupted action not repeated).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from petals_ops.fleet.watch.journal import Journal, replay
from petals_ops.fleet.watch.model import (HostReading, Policy, Reading, ServerReading, SpareHolding,
                                          WatchState)
from petals_ops.fleet.watch.planner import plan_remediations

P = Policy(bad_readings=3, restarts_before_recreate=2, recreates_before_give_up=1, backoff_base=10,
           backoff_max=100, max_per_server_per_hour=4, max_actions_per_pass=2, healthy_reset=60,
           give_back_after=60)
A, B, S = "a10-1/petals-server-0", "a10-2/petals-server-0", "spare-1/petals-server-spare-0"
RANGES = ((A, "0:2"), (B, "2:4"))


def srv(host, state="running", dht="ONLINE", blocks=None, **kw):
    return ServerReading(host, kw.pop("container", "petals-server-0"), state, blocks, "Qm" + host, dht, **kw)


def reading(at, a=None, b=None, *, a_error=None, b_error=None, uncovered=(), dht_error=None, spare=False,
            spare_servers=()):
    """``spare``: False, no spare host; None, a readable one; a string, one whose read failed with it."""
    hosts = [HostReading("a10-1", a_error, () if a_error else (a or srv("a10-1", blocks="0:2"),)),
             HostReading("a10-2", b_error, () if b_error else (b or srv("a10-2", blocks="2:4"),))]
    if spare is not False:
        hosts.append(HostReading("spare-1", spare, tuple(spare_servers), spare=True, capacity=1))
    return Reading(at, tuple(hosts), tuple(uncovered), dht_error, RANGES)


def history(*pairs, start=0.0, step=10.0, **kw):
    """Readings every ``step`` s; each pair is (a, b) servers (None: healthy) or a dict of reading()'s
    keywords."""
    out = []
    for i, p in enumerate(pairs):
        args = p if isinstance(p, dict) else {"a": p[0], "b": p[1]}
        out.append(reading(start + i * step, **{**kw, **args}))
    return out


def kinds(rems):
    return [(r.kind, r.key) for r in rems]


def exited(host="a10-2", blocks="2:4"):
    return srv(host, "exited", None, blocks)


def test_healthy_fleet_needs_nothing():
    assert plan_remediations(history((None, None), (None, None)), WatchState(), P, 20) == []
    assert plan_remediations([], WatchState(), P, 0) == []


def test_k_consecutive_bad_readings_then_restart():
    bad = (None, exited())
    assert plan_remediations(history(bad, bad), WatchState(), P, 20) == []  # 2 < K
    rems = plan_remediations(history(bad, bad, bad), WatchState(), P, 30)
    assert kinds(rems) == [("restart", B)]
    assert rems[0].host == "a10-2" and rems[0].container == "petals-server-0"
    assert "exited" in rems[0].reason and "3 readings" in rems[0].reason
    # a healthy reading in between breaks the streak
    assert plan_remediations(history(bad, (None, None), bad, bad), WatchState(), P, 40) == []


def test_unknown_is_not_dead():
    """A host that could not be read is never acted on, however long; it breaks a bad streak too."""
    down = {"b_error": "a10-2: cannot connect (Connection refused)"}
    assert plan_remediations(history(*[down] * 10), WatchState(), P, 100) == []
    bad = (None, exited())
    assert plan_remediations(history(bad, bad, down, bad), WatchState(), P, 40) == []
    # the DHT not read: a running server's absence means nothing
    absent = {"b": srv("a10-2", dht="absent"), "dht_error": "lost the swarm"}
    assert plan_remediations(history(*[absent] * 5), WatchState(), P, 50) == []
    # JOINING (loading its blocks) is not bad either
    joining = (None, srv("a10-2", dht="JOINING"))
    assert plan_remediations(history(*[joining] * 5), WatchState(), P, 50) == []


def test_zombie_running_but_absent_from_the_dht_is_restarted():
    zombie = (None, srv("a10-2", dht="absent", blocks="2:4"))
    rems = plan_remediations(history(zombie, zombie, zombie), WatchState(), P, 30)
    assert kinds(rems) == [("restart", B)] and "zombie" in rems[0].reason
    offline = (None, srv("a10-2", dht="OFFLINE"))
    rems = plan_remediations(history(offline, offline, offline), WatchState(), P, 30)
    assert kinds(rems) == [("restart", B)]
    # the reachability probe's "unreachable" counts as bad, even when the DHT says ONLINE
    unreachable = (None, srv("a10-2", reachable=False))
    rems = plan_remediations(history(*[unreachable] * 3), WatchState(), P, 30)
    assert kinds(rems) == [("restart", B)] and "does not answer" in rems[0].reason
    # every server unreachable at once: our probe's view, not our servers
    both = (srv("a10-1", reachable=False), srv("a10-2", reachable=False))
    assert plan_remediations(history(*[both] * 4), WatchState(), P, 40) == []


def test_swarm_wide_dht_outage_restarts_nothing():
    """Every server of ours absent at once while the containers run: the DHT is distrusted."""
    both = (srv("a10-1", dht="absent"), srv("a10-2", dht="absent"))
    assert plan_remediations(history(*[both] * 6), WatchState(), P, 60) == []


def test_ladder_restart_recreate_give_up_with_backoff():
    bad = (None, exited())
    st = WatchState()
    st.server(B).attempts = [(25.0, "restart")]
    st.server(B).actions = [25.0]
    # readings before the attempt do not count; three after it do, once backoff (10 s) has passed
    h = history(bad, bad, bad, bad, bad, bad, step=10)  # at 0..50
    assert kinds(plan_remediations(h, st, P, 50)) == [("restart", B)]  # 30, 40, 50 are after 25
    h4 = history(bad, bad, bad, bad, bad, step=10)  # 30, 40: only 2 after the attempt
    assert plan_remediations(h4, st, P, 40) == []
    st.server(B).attempts.append((55.0, "restart"))
    st.server(B).actions.append(55.0)
    h = history(*[bad] * 10, step=10)  # 0..90: 60, 70, 80, 90 after; backoff 20 s -> 75
    assert kinds(plan_remediations(h, st, P, 90)) == [("recreate", B)]
    st.server(B).attempts.append((95.0, "recreate"))
    st.server(B).actions.append(95.0)
    h = history(*[bad] * 14, step=10)  # up to 130; backoff 40 s -> 135
    rems = plan_remediations(h, st, P, 130)
    assert kinds(rems) == [("give_up", B)]  # no more steps: giving up needs no wait
    st.server(B).given_up = True
    rems = plan_remediations(h, st, P, 130)
    assert kinds(rems) == [("hold", B)] and "given up" in rems[0].reason


def test_backoff_holds_an_attempt():
    st = WatchState()
    st.server(B).attempts = [(0.0, "restart"), (5.0, "restart")]
    st.server(B).actions = [0.0, 5.0]
    h = history(*[(None, exited())] * 3, start=6, step=1)  # 6, 7, 8: bad after the attempt at 5
    rems = plan_remediations(h, st, P, 8)
    assert kinds(rems) == [("hold", B)] and "backoff" in rems[0].reason  # 5 + 10 * 2 = 25 > 8
    assert kinds(plan_remediations(history(*[(None, exited())] * 3, start=30, step=1), st, P, 32)) == \
        [("recreate", B)]


def test_missing_container_is_recreated_at_once():
    missing = (None, srv("a10-2", "missing", None, "2:4"))
    assert kinds(plan_remediations(history(*[missing] * 3), WatchState(), P, 30)) == [("recreate", B)]


def test_flapping_server_hits_the_hourly_rate_limit():
    """Restarted, healthy long enough to reset its ladder, bad again...: the 5th action in an hour waits."""
    st = WatchState()
    st.server(B).actions = [100.0, 900.0, 1700.0, 2500.0]
    h = history(*[(None, exited())] * 3, start=3000, step=10)
    rems = plan_remediations(h, st, P, 3020)
    assert kinds(rems) == [("hold", B)] and "rate limit: 4 actions in the last hour" in rems[0].reason
    h = history(*[(None, exited())] * 3, start=3800, step=10)  # the first action is now > 1 h old
    assert kinds(plan_remediations(h, st, P, 3820)) == [("restart", B)]


def test_global_cap_per_pass():
    hosts = [HostReading(f"h{i}", None, (srv(f"h{i}", "exited", None),)) for i in range(5)]
    h = [Reading(t, tuple(hosts)) for t in (0, 10, 20)]
    rems = plan_remediations(h, WatchState(), P, 20)
    assert [r.kind for r in rems] == ["restart", "restart", "hold", "hold", "hold"]
    assert all("global cap" in r.reason for r in rems[2:])


def test_healthy_long_enough_resets_the_ladder_and_a_give_up():
    st = WatchState()
    st.server(B).attempts = [(0.0, "restart")]
    st.server(B).given_up = True
    h = history(*[(None, None)] * 7, start=5, step=10)  # ok from 5 to 65: 60 s
    assert kinds(plan_remediations(h, st, P, 65)) == [("reset", B)]
    assert plan_remediations(h[:-1], st, P, 55) == []  # 50 s only


def test_foreign_containers_are_never_touched():
    foreign = ServerReading("a10-2", "petals-server-0", "exited", managed=False)
    h = [Reading(t, (HostReading("a10-2", None, (foreign,)),)) for t in (0, 10, 20, 30)]
    assert plan_remediations(h, WatchState(), P, 30) == []


def test_spare_taken_when_a_host_is_gone_and_its_range_uncovered():
    gone = {"b_error": "a10-2: cannot connect", "uncovered": (2, 3), "spare": None}
    rems = plan_remediations(history(gone, gone, gone), WatchState(), P, 30)
    assert kinds(rems) == [("take_spare", B)]
    assert rems[0].host == "spare-1" and rems[0].blocks == "2:4" and "uncovered" in rems[0].reason
    # not while the range is covered (the host is unreadable but its server serves), nor with the DHT unread
    covered = {"b_error": "a10-2: cannot connect", "uncovered": (), "spare": None}
    assert plan_remediations(history(covered, covered, covered), WatchState(), P, 30) == []
    blind = {**gone, "dht_error": "lost the swarm"}
    assert plan_remediations(history(blind, blind, blind), WatchState(), P, 30) == []
    assert plan_remediations(history(gone, gone), WatchState(), P, 20) == []  # K readings first
    # a spare that is itself unreadable or full is no spare
    full = {**gone, "spare_servers": (srv("spare-1", container="petals-server-spare-0", blocks="0:2"),)}
    rems = plan_remediations(history(full, full, full), WatchState(), P, 30)
    assert kinds(rems) == [("hold", B)] and "no spare host with a free slot" in rems[0].reason
    unread = {**gone, "spare": "spare-1: timed out"}
    assert kinds(plan_remediations(history(unread, unread, unread), WatchState(), P, 30)) == [("hold", B)]


def test_spare_for_a_given_up_server_but_not_for_one_being_restarted():
    bad = {"b": exited(), "uncovered": (2, 3), "spare": None}
    assert kinds(plan_remediations(history(bad, bad, bad), WatchState(), P, 30)) == [("restart", B)]
    st = WatchState()
    st.server(B).given_up = True
    st.server(B).attempts = [(-100.0, "recreate")]
    rems = plan_remediations(history(bad, bad, bad), st, P, 30)
    assert kinds(rems) == [("take_spare", B), ("hold", B)]


def test_spare_given_back_once_its_owner_is_healthy_for_a_while():
    st = WatchState()
    st.spares[B] = SpareHolding(B, "spare-1", "petals-server-spare-0", "2:4", since=0.0)
    spare_srv = srv("spare-1", container="petals-server-spare-0", blocks="2:4", spare=True)
    back = {"spare": None, "spare_servers": (spare_srv,)}
    h = history(*[back] * 7, start=5, step=10)  # a10-2 ok from 5 to 65
    rems = plan_remediations(h, st, P, 65)
    assert kinds(rems) == [("give_back", B)]
    assert (rems[0].host, rems[0].container, rems[0].blocks) == ("spare-1", "petals-server-spare-0", "2:4")
    assert plan_remediations(h[:-2], st, P, 45) == []  # not yet: 40 s
    # still gone: nothing taken twice
    gone = {"b_error": "x", "uncovered": (2, 3), **back}
    assert plan_remediations(history(gone, gone, gone), st, P, 30) == []


# ------------------------------------------------------------------------------------------------ journal
def test_journal_replay_rebuilds_ladders_limits_spares_and_counts(tmp_path):
    path = tmp_path / "j.jsonl"
    j = Journal(path)
    j.write({"type": "start", "pid": 1})
    a1 = j.action("restart", B, reason="exited", reading="r1", host="a10-2", container="petals-server-0")
    j.outcome(a1, "ok")
    a2 = j.action("restart", B, reason="exited", reading="r2", host="a10-2", container="petals-server-0")
    j.outcome(a2, "failed", "a10-2: cannot restart")
    a3 = j.action("take_spare", A, reason="gone", reading="r3", host="spare-1", blocks="0:2")
    j.outcome(a3, "ok", container="petals-server-spare-0")
    a4 = j.action("give_up", B, reason="still bad", reading="r4")
    j.outcome(a4, "ok")
    j.close()
    st = replay(path)
    assert [k for _, k in st.servers[B].attempts] == ["restart", "restart"]
    assert len(st.servers[B].actions) == 2 and st.servers[B].given_up
    assert st.spares[A].host == "spare-1" and st.spares[A].container == "petals-server-spare-0"
    assert st.spares[A].blocks == "0:2"
    assert st.counts == {("restart", "ok"): 1, ("restart", "failed"): 1, ("take_spare", "ok"): 1,
                         ("give_up", "ok"): 1}
    assert st.interrupted == []
    # every line is one JSON object; nothing but what was given (no environment, no argv)
    lines = path.read_text().splitlines()
    assert len(lines) == 9 and all(json.loads(line)["t"] for line in lines)
    j = Journal(path)
    a5 = j.action("reset", B, reason="healthy", reading=None)
    j.outcome(a5, "ok")
    a6 = j.action("give_back", A, reason="back", reading=None, host="spare-1")
    j.outcome(a6, "ok")
    j.close()
    st = replay(path)
    assert st.servers[B].attempts == [] and not st.servers[B].given_up and st.spares == {}
    assert len(st.servers[B].actions) == 2  # the hourly limit still counts them


def test_interrupted_action_is_not_repeated(tmp_path):
    """kill -9 between the intent and its outcome: the replay marks it interrupted and counts it as an
    attempt, so the next pass holds it back (backoff) instead of doing it again; a torn last line is
    skipped."""
    path = tmp_path / "j.jsonl"
    j = Journal(path)
    a1 = j.action("restart", B, reason="zombie", reading="r1", host="a10-2", container="petals-server-0")
    j.close()
    with path.open("a") as f:
        f.write('{"type": "outcome", "id": "')  # torn by the kill
    st = replay(path)
    assert st.interrupted == [a1] and st.counts == {("restart", "interrupted"): 1}
    (at, kind), = st.servers[B].attempts
    assert kind == "restart"
    bad = (None, srv("a10-2", dht="absent"))
    h = history(bad, bad, bad, start=at + 1, step=1)
    rems = plan_remediations(h, st, P, at + 3)
    assert kinds(rems) == [("hold", B)] and "backoff" in rems[0].reason


def test_journal_in_an_unwritable_place_is_one_line(tmp_path):
    from petals_ops.util.errors import InputError

    (tmp_path / "f").write_text("")
    with pytest.raises(InputError) as e:
        Journal(tmp_path / "f" / "j.jsonl")
    assert "--journal" in e.value.one_line() and "\n" not in e.value.one_line()


# ------------------------------------------------------------------------------------ inventory, deploy
def test_spare_hosts_in_the_inventory(tmp_path, run_cli):
    import yaml

    from petals_ops.fleet.executor import resolve_targets
    from petals_ops.fleet.inventory import load_inventory
    from petals_ops.fleet.watch.observe import owner_ranges

    data = {"server": {"device": "cpu", "initial_peers": [
        "/ip4/10.0.0.1/tcp/31337/p2p/QmS9KwZptnVdB9FFV7uGgaTq4sEKBwcYeKZDfSpyKDUd1g"]},
            "hosts": {"a10-1": {"gpus": 0, "server": {"block_indices": ["0:2"]}},
                      "spare-1": {"gpus": 0, "spare": True}}}
    path = tmp_path / "inv.yaml"
    path.write_text(yaml.safe_dump(data))
    targets = {t.name: t for t in resolve_targets(load_inventory(path), None)}
    assert targets["spare-1"].host.spare and targets["spare-1"].slots == ()  # up starts nothing there
    assert owner_ranges(targets.values()) == ((A, "0:2"),)
    data["hosts"]["spare-1"]["server"] = {"block_indices": ["2:4"]}
    path.write_text(yaml.safe_dump(data))
    result = run_cli("plan", "-i", path)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "hosts.spare-1" in result.stderr and "a spare host serves no range of its own" in result.stderr
    data["hosts"]["spare-1"] = {"spare": "perhaps"}
    path.write_text(yaml.safe_dump(data))
    result = run_cli("plan", "-i", path)
    assert result.returncode == 2 and "hosts.spare-1.spare" in result.stderr
    example = load_inventory(Path(__file__).parents[1] / "deploy" / "petals-ops.example.yaml")
    assert [n for n, h in example.hosts.items() if h.spare] == ["spare-1"]


def test_watch_deployment_files():
    """The systemd unit and the compose service: inventory and SSH mounted read-only, metrics on the
    port Prometheus scrapes, SIGTERM to watch alone, no secret on the command line."""
    import configparser

    import yaml

    root = Path(__file__).parents[1]
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read(root / "deploy" / "petals-ops-watch.service")
    service = unit["Service"]
    assert service["ExecStart"].split()[1:3] == ["watch", "--interval"]
    assert "--metrics-listen 127.0.0.1:9470" in service["ExecStart"]
    assert service["KillMode"] == "mixed" and service["Restart"] == "always"
    assert "hf_" not in service["ExecStart"] and "token" not in service["ExecStart"].lower()
    compose = yaml.safe_load((root / "monitoring" / "docker-compose.yml").read_text())
    watch = compose["services"]["watch"]
    mounts = {v.rsplit(":", 2)[1]: v for v in watch["volumes"]}
    assert mounts["/etc/petals-ops/petals-ops.yaml"].endswith(":ro") and mounts["/root/.ssh"].endswith(":ro")
    assert "--metrics-listen=127.0.0.1:9470" in watch["command"] and watch["network_mode"] == "host"
    assert not any("token" in c.lower() or "hf_" in c for c in watch["command"])
    config = yaml.safe_load((root / "monitoring" / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert jobs["petals-watch"]["static_configs"][0]["targets"] == ["127.0.0.1:9470"]


def test_a_container_just_started_is_starting_not_a_zombie():
    """Started by its engine (a reboot, Docker's restart policy) and not announced yet: no action until
    ``startup_grace`` has passed."""
    young = (None, srv("a10-2", dht="absent", started_at=-50.0))
    policy = Policy(bad_readings=3, startup_grace=100)
    assert plan_remediations(history(*[young] * 5), WatchState(), policy, 40) == []
    rems = plan_remediations(history(*[young] * 8, start=40), WatchState(), policy, 110)
    assert kinds(rems) == [("restart", B)]  # 60 s to 110 s after it started: past the grace


def test_docker_timestamps():
    from petals_ops.fleet.watch.observe import _timestamp

    assert _timestamp("2026-12-02T16:02:53.123456789Z") == pytest.approx(1796227373.123456)
    assert _timestamp("0001-01-01T00:00:00Z") is None and _timestamp("garbage") is None
    assert _timestamp(None) is None


def test_readings_survive_a_restart_of_watch_but_not_a_long_gap(tmp_path):
    """The recent readings are saved each pass and read back (a restarted watch keeps counting); readings
    older than three intervals are dropped (a watch that was down starts afresh)."""
    from dataclasses import asdict

    from petals_ops.fleet.watch.loop import load_history
    from petals_ops.util.fsutil import write_json_atomic

    spare = srv("spare-1", container="petals-server-spare-0", blocks="2:4", spare=True, started_at=5.0)
    h = history((None, exited()), {"b_error": "x", "uncovered": (2, 3), "spare": None,
                                   "spare_servers": (spare,)}, start=100)
    path = tmp_path / "j.jsonl.readings.json"
    write_json_atomic(path, [asdict(r) for r in h])
    assert load_history(path, interval=10, now=115) == h
    assert load_history(path, interval=10, now=200) == []
    path.write_text("{torn")
    assert load_history(path, interval=10, now=115) == []


def test_spare_target_is_one_extra_slot():
    from petals_ops.fleet.executor import Target
    from petals_ops.fleet.schema import HostSpec, ServerSpec
    from petals_ops.fleet.ssh import SSHOptions
    from petals_ops.fleet.watch.act import spare_target

    t = Target("spare-1", HostSpec(gpus=2, spare=True), ServerSpec(port=31330), (), SSHOptions())
    s = spare_target(t, 1, "14:28")
    (slot,) = s.slots
    assert (slot.container, slot.port, slot.gpu, slot.block_indices) == ("petals-server-spare-1", 31331, 1,
                                                                         "14:28")
    assert s.server.block_indices == ["14:28"] and t.server.block_indices is None
