"""The rehearsal at BLOOM-176B's shape (issue 13): ``plan --as-model`` (fast, no hosts) and the reduced
rehearsal (70 blocks over three loopback hosts, an outage and its repair, the alert checked in Prometheus),
and the same with ``petals-ops watch`` repairing three kinds of fault and no human step.

The full five-host run is ``benchmarks/rehearsal.py``. Only the GPU is absent here: the lab's servers run
on CPU, and ``plan --as-model`` sizes their ranges by the GPU memory the inventory gives each host.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers import assert_one_line_error

PEER = "/ip4/10.0.0.1/tcp/31337/p2p/QmS9KwZptnVdB9FFV7uGgaTq4sEKBwcYeKZDfSpyKDUd1g"


@pytest.fixture(scope="module")
def model70(tmp_path_factory) -> Path:
    from petals_ops.lab.tiny_model import TinyModelSpec, make_tiny_bloom

    return make_tiny_bloom(tmp_path_factory.mktemp("m") / "tiny70", TinyModelSpec(layers=70))


def inventory(tmp_path, model, hosts: dict, name="inv.yaml", **server) -> Path:
    path = tmp_path / name
    server = {"initial_peers": [PEER], "model": str(model), "device": "cpu", **server}
    path.write_text(yaml.safe_dump({"server": server, "hosts": hosts}))
    return path


def plan_json(run_cli, path, *args) -> dict:
    result = run_cli("plan", "-i", path, "--as-model", "bigscience/bloom", *args, "-o", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_as_if_plan_gives_five_a10s_the_real_nf4_ranges(tmp_path, run_cli, model70):
    """Five A10 hosts (plan's default GPU) and BLOOM-176B in nf4: 14 blocks each, 0:14 ... 56:70, exactly."""
    path = inventory(tmp_path, model70, {f"a10-{i}": {"gpus": 0} for i in range(1, 6)})
    plan = plan_json(run_cli, path)
    assert plan["as_model"] == "bigscience/bloom" and plan["num_blocks"] == 70
    assert plan["assignment"] == {f"a10-{i + 1}": [f"{14 * i}:{14 * i + 14}"] for i in range(5)}
    assert plan["covers_model"] is True and plan["uncovered"] == [] and plan["total_blocks_assigned"] == 70
    s = plan["servers"][2]
    assert (s["fits"]["none"]["4096"], s["fits"]["int8"]["4096"], s["fits"]["nf4"]["4096"]) == (4, 8, 14)
    assert s["command"][s["command"].index("--block_indices") + 1] == "28:42"
    assert s["command"][s["command"].index("--device") + 1] == "cpu"  # the tiny model's servers, real ranges
    # int8: 8 per A10, five hosts leave 40:70 uncovered, and the text output says so.
    plan = plan_json(run_cli, path, "--quant", "int8")
    assert [r for rs in plan["assignment"].values() for r in rs] == ["0:8", "8:16", "16:24", "24:32", "32:40"]
    assert plan["covers_model"] is False and plan["uncovered"] == list(range(40, 70))
    text = run_cli("plan", "-i", path, "--as-model", "bigscience/bloom", "--quant", "int8")
    words = " ".join(text.stdout.split())  # rich wraps table titles to the terminal's width
    assert text.returncode == 0 and "covers the whole model: NO" in words and "40:70" in words
    assert "as if serving bigscience/bloom" in words


def test_as_if_plan_bigger_gpus_wrap_into_a_second_copy(tmp_path, run_cli, model70):
    """Three A100-40GB (26 nf4 blocks): 0:26, 26:52, 52:70; a fourth host starts a second copy at block 0;
    a pinned range that disagrees is named."""
    from petals_ops.lab.rehearsal import A100_40GB_BYTES

    hosts = {f"h{i}": {"gpus": 0, "gpu_memory_bytes": A100_40GB_BYTES} for i in range(1, 5)}
    hosts["h4"]["server"] = {"block_indices": ["0:10"]}
    plan = plan_json(run_cli, inventory(tmp_path, model70, hosts))
    assert plan["assignment"] == {"h1": ["0:26"], "h2": ["26:52"], "h3": ["52:70"], "h4": ["0:26"]}
    assert plan["covers_model"] is True and plan["total_blocks_assigned"] == 96
    assert any("h4" in w and "pins 0:10" in w and "0:26" in w for w in plan["warnings"])


def test_as_if_plan_bad_input_is_one_line(tmp_path, run_cli, tiny_model_dir, model70):
    four = inventory(tmp_path, tiny_model_dir, {"a10-1": {"gpus": 0}}, "four.yaml")
    assert_one_line_error(run_cli("plan", "-i", four, "--as-model", "bigscience/bloom"),
                          "has 4 blocks", "bigscience/bloom has 70", "--layers 70", code=2)
    ok = inventory(tmp_path, model70, {"a10-1": {"gpus": 0}})
    assert_one_line_error(run_cli("plan", "-i", ok, "--as-model", "nobody/nothing"),
                          "no config for model nobody/nothing", code=2)
    assert_one_line_error(run_cli("plan", "-i", ok, "--quant", "int8"),
                          "--quant applies only with --as-model", code=2)
    result = run_cli("plan", "-i", ok, "--as-model", "bigscience/bloom", "--quant", "fp3")
    assert result.returncode == 2 and "fp3" in result.stderr and "Traceback" not in result.stderr


def test_rehearsal_rules_shorten_only_for(tmp_path):
    from petals_ops.lab.prometheus_lab import MONITORING
    from petals_ops.lab.rehearsal import rehearsal_rules

    shipped = yaml.safe_load((MONITORING / "rules" / "petals_alerts.yml").read_text())
    short = yaml.safe_load(rehearsal_rules(tmp_path / "r.yml", "5s").read_text())
    pairs = [(a, b) for ga, gb in zip(shipped["groups"], short["groups"])
             for a, b in zip(ga["rules"], gb["rules"])]
    assert sum("for" in a for a, _ in pairs) >= 3
    for a, b in pairs:
        assert b.get("for") == ("5s" if "for" in a else None)
        assert {k: v for k, v in b.items() if k != "for"} == {k: v for k, v in a.items() if k != "for"}


def test_reduced_rehearsal_three_hosts():
    """70 blocks over three loopback hosts (sized as three A100-40GB by ``plan --as-model``): full coverage,
    an outage shown by swarm status and firing PetalsModelNotFullyServed in Prometheus, a bench in flight
    that records errors/retries, the repair (``restart``), the alert resolved, the bench finished with each
    question exactly once, and nothing left running."""
    from petals_ops.lab.fleet_lab import DOCKERD, SSHD
    from petals_ops.lab.prometheus_lab import PROMETHEUS
    from petals_ops.lab.rehearsal import A100_40GB_BYTES, Rehearsal

    for tool in (SSHD, DOCKERD, PROMETHEUS):
        if not Path(tool).exists():
            pytest.fail(f"{tool} is missing: run ./install.sh --system (sshd, docker.io, prometheus)")
    root = Path(tempfile.mkdtemp(prefix="rehearsal-", dir="/tmp"))  # short: unix socket paths live under it
    rh = Rehearsal(root, hosts=3, gpu_memory_bytes=A100_40GB_BYTES, questions=6, max_new_tokens=8,
                   measure_hops=False, log=lambda line: print(line, flush=True))
    started = time.monotonic()
    try:
        f = rh.run()
    finally:
        print(json.dumps(rh.figures, indent=1), f"\n{time.monotonic() - started:.0f} s", flush=True)
    assert f["plan_assignment"] == {"a10-1": ["0:26"], "a10-2": ["26:52"], "a10-3": ["52:70"]}
    assert f["plan_uncovered"] == [] and f["servers_online"] == 3
    assert f["outage_host"] == "a10-2" and f["outage_blocks"] == "26:52"
    assert f["outage_to_alert_seconds"] > 5  # the rule's for: 5s held before firing
    assert f["bench_error_records"] + f["bench_retried_attempts"] > 0
    assert f["bench_each_question_once"] and f["bench_final_exit"] == 0
    assert f["left_running"] == []
    shutil.rmtree(root)  # its logs stay behind only when it fails


def test_reduced_rehearsal_watch_repairs_three_faults_with_no_human_step():
    """The same three hosts plus a spare, with ``petals-ops watch`` on (interval 3 s, K = 2) and no human
    step: a container stopped and a server frozen are restarted, a host whose sshd and Docker engine stop has
    its range started on the spare, which is given back when the host returns; each time 70/70 blocks are
    covered again, and the bench in flight finishes each question exactly once."""
    from petals_ops.lab.rehearsal import A100_40GB_BYTES, Rehearsal

    root = Path(tempfile.mkdtemp(prefix="rehearsal-", dir="/tmp"))
    rh = Rehearsal(root, hosts=3, gpu_memory_bytes=A100_40GB_BYTES, questions=6, max_new_tokens=8,
                   measure_hops=False, watch=True, log=lambda line: print(line, flush=True))
    try:
        f = rh.run()
    finally:
        print(json.dumps(rh.figures, indent=1), flush=True)
    assert f["plan_assignment"] == {"a10-1": ["0:26"], "a10-2": ["26:52"], "a10-3": ["52:70"]}
    faults = f["watch_faults"]
    assert [(k, v["host"], v["action"]) for k, v in faults.items()] == [
        ("container stopped", "a10-1", "restart"), ("server frozen", "a10-2", "restart"),
        ("host down (sshd + engine)", "a10-3", "take_spare")]
    for v in faults.values():
        assert 0 < v["detect_seconds"] <= v["repair_seconds"], faults
    assert f["watch_give_back_seconds"] > 0
    # every action watch's own, each with an ok outcome: nothing recreated or given up, no human step
    assert {a for a in f["watch_actions"] if not a.startswith("reset ")} == {
        "restart a10-1/petals-server-0", "restart a10-2/petals-server-0", "take_spare a10-3/petals-server-0",
        "give_back a10-3/petals-server-0"}, f["watch_actions"]
    assert f["watch_outcomes"] == {"ok": len(f["watch_actions"])}
    assert f["bench_each_question_once"] and f["bench_final_exit"] == 0
    assert f["left_running"] == []
    shutil.rmtree(root)
