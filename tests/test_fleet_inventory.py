"""Fleet inventory, plan and server commands: no hosts needed (fast)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.helpers import assert_one_line_error

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "deploy" / "petals-ops.example.yaml"


def write(tmp_path, data, name="inv.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def test_example_inventory_is_valid():
    from petals_ops.fleet.inventory import load_inventory

    inv = load_inventory(EXAMPLE)
    assert set(inv.hosts) >= {"a10-1", "a10-2"}
    spec = inv.server_for("a10-1")
    assert spec.image.startswith("learningathome/petals") and ":main" not in spec.image
    assert spec.hf_token is not None and spec.hf_token.env


@pytest.mark.parametrize(
    "data, needles",
    [
        ({"hosts": {"a10-1": {"gpus": 1, "colour": "red"}}},
         ["hosts.a10-1.colour", "unknown field", "line 3"]),
        ({"hosts": {"a10-1": {"gpus": "two"}}}, ["hosts.a10-1.gpus", "integer"]),
        ({"server": {"port": 70000}}, ["server.port", "65535"]),
        ({"hosts": {"a10-1": {"server": {"port": 0}}}},
         ["hosts.a10-1.server.port", "greater than or equal to 1"]),
        ({"server": {"quant_type": "int4"}}, ["server.quant_type"]),
        ({"server": {"block_indices": ["4:2"]}}, ["server.block_indices", "start < end"]),
        ({"server": {"environment": {"HF_TOKEN": "x"}}}, ["server.environment", "hf_token"]),
        ({"server": {"hf_token": {"env": "A", "file": "B"}}}, ["server.hf_token", "exactly one"]),
        ({"server": {"initial_peers": ["127.0.0.1:31337"]}}, ["server.initial_peers", "multiaddr"]),
        ({"server": {"extra_args": ["--token", "x"]}},
         ["server.extra_args", "--token", "hf_token: {env: VAR}"]),
        ({"server": {"extra_args": ["--use_auth_token=x"]}}, ["server.extra_args", "--use_auth_token"]),
        ({"hosts": {"a10-1": {"server": {"command": ["run", "hf_abc"]}}}},
         ["hosts.a10-1.server.command", "a token"]),
    ],
)
def test_bad_inventory_one_line_error(tmp_path, run_cli, data, needles):
    path = write(tmp_path, data)
    result = run_cli("plan", "-i", path)
    assert_one_line_error(result, str(path), *needles, code=2)


def test_invalid_yaml_and_missing_file(tmp_path, run_cli):
    bad = write(tmp_path, "hosts:\n  a10-1: [\n")
    assert_one_line_error(run_cli("plan", "-i", bad), "not valid YAML", "line", code=2)
    assert_one_line_error(run_cli("plan", "-i", tmp_path / "nope.yaml"), "does not exist", code=2)


def test_unreadable_inventory_and_ssh_config(tmp_path, run_cli):
    binary = write(tmp_path, "x", "binary.yaml")
    binary.write_bytes(b"hosts:\n  \xff\xfe: {}\n")
    assert_one_line_error(run_cli("plan", "-i", binary), str(binary), "cannot be read", code=2)
    ssh_config = write(tmp_path, "Host a10-1\n  HostName\n", "ssh_config")  # a keyword without a value
    path = write(tmp_path, {"ssh_config": str(ssh_config), "hosts": {"a10-1": {"gpus": 0}}})
    assert_one_line_error(run_cli("hosts", "check", "-i", path, "--hosts", "a10-2"),
                          f"ssh config {ssh_config}", code=2)
    two = write(tmp_path, {"hosts": {"a10-1": {"gpus": 0}, "a10-2": {"gpus": 0}}}, "two.yaml")
    assert_one_line_error(run_cli("logs", "-i", two, "a10-1,a10-2"), "exactly one host", code=2)
    assert_one_line_error(run_cli("logs", "-i", two, ""), "exactly one host", code=2)


def test_up_checks_token_and_model_before_touching_hosts(tmp_path, run_cli):
    """Port 9 on localhost has no sshd: these must fail (exit 2) before any connection is tried."""
    host = {"a10-1": {"address": "127.0.0.1", "port": 9, "gpus": 0}}
    unset = write(tmp_path, {"server": {"device": "cpu", "hf_token": {"env": "PETALS_OPS_TEST_UNSET_TOKEN"}},
                             "hosts": host}, "token.yaml")
    assert_one_line_error(run_cli("up", "-i", unset), "PETALS_OPS_TEST_UNSET_TOKEN", code=2)
    model = write(tmp_path, {"server": {"device": "cpu", "model": "nohub"}, "hosts": host}, "model.yaml")
    assert_one_line_error(run_cli("up", "-i", model), "nohub", code=2)
    assert_one_line_error(run_cli("restart", "-i", model), "nohub", code=2)


def test_block_ranges_are_normalised():
    from petals_ops.fleet.schema import ServerSpec

    assert ServerSpec(block_indices=[" 0 : 14", "014:28"]).block_indices == ["0:14", "14:28"]


def test_missing_host_and_injection_in_host_name(tmp_path, run_cli):
    path = write(tmp_path, {"ssh_config": str(write(tmp_path, "Host a10-1\n  HostName 127.0.0.11\n",
                                                    "ssh_config")),
                            "hosts": {"a10-1": {"gpus": 0}}})
    assert_one_line_error(run_cli("hosts", "check", "-i", path, "--hosts", "a10-9"),
                          "a10-9 is neither in the inventory", code=2)
    assert_one_line_error(run_cli("hosts", "check", "-i", path, "--hosts", "a10-1;touch /tmp/x"),
                          "is not a host name", code=2)
    empty = write(tmp_path, {}, "empty.yaml")
    assert_one_line_error(run_cli("up", "-i", empty), "no hosts", code=2)


def test_plan_uses_petals_block_accounting_for_bloom_on_a10(tmp_path, run_cli):
    """BLOOM-176B on one A10 per host: 4 bf16 / 8 int8 / 14 nf4 blocks at the default 4096-token cache."""
    path = write(tmp_path, {
        "server": {
            "initial_peers": ["/ip4/10.0.0.1/tcp/31337/p2p/QmS9KwZptnVdB9FFV7uGgaTq4sEKBwcYeKZDfSpyKDUd1g"],
            "quant_type": "nf4",
        },
        "hosts": {f"a10-{i}": {"gpus": 1, "server": {"block_indices": [f"{14 * i}:{14 * i + 14}"]}}
                  for i in range(5)},
    })
    result = run_cli("plan", "-i", path, "-o", "json")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["num_blocks"] == 70 and plan["covers_model"] is True and plan["uncovered"] == []
    fits = plan["servers"][0]["fits"]
    assert (fits["none"]["4096"], fits["int8"]["4096"], fits["nf4"]["4096"]) == (4, 8, 14)
    assert (fits["nf4"]["2048"], fits["nf4"]["8192"], fits["nf4"]["16384"]) == (15, 12, 9)
    cmd = plan["servers"][1]["command"]
    assert cmd[:4] == ["python", "-m", "petals.cli.run_server", "bigscience/bloom"]
    assert cmd[cmd.index("--block_indices") + 1] == "14:28"
    assert cmd[cmd.index("--identity_path") + 1] == "/petals-ops/identity.key"
    # Four hosts leave blocks 56:70 uncovered.
    partial = write(tmp_path, {
        **yaml.safe_load(path.read_text()),
        "hosts": {f"a10-{i}": {"gpus": 1, "server": {"block_indices": [f"{14 * i}:{14 * i + 14}"]}}
                  for i in range(4)},
    }, "four.yaml")
    result = run_cli("plan", "-i", partial)
    assert result.returncode == 0, result.stderr
    assert "covers the whole model: NO" in result.stdout and "56:70" in result.stdout


def test_server_command_and_config_hash():
    """One server per GPU with its own port and GPU; the token is not in the command; the hash follows
    changes."""
    from petals_ops.fleet import containers as C
    from petals_ops.fleet.schema import HostSpec, ServerSpec

    spec = ServerSpec(
        initial_peers=["/ip4/10.0.0.1/tcp/31337/p2p/QmS9KwZptnVdB9FFV7uGgaTq4sEKBwcYeKZDfSpyKDUd1g"],
        public_ip="203.0.113.7", quant_type="nf4", num_blocks=13,
    )
    slots = C.server_slots("a10-1", HostSpec(gpus=2), spec)
    assert [(s.container, s.port, s.gpu) for s in slots] == [("petals-server-0", 31330, 0),
                                                             ("petals-server-1", 31331, 1)]
    want = C.desired_container("a10-1", spec, slots[1], "/id/a10-1.petals-server-1.key", token="hf_secret")
    assert "--announce_maddrs" in want.command and "/ip4/203.0.113.7/tcp/31331" in want.command
    assert not any("hf_secret" in a for a in want.command)
    kwargs = want.create_kwargs("a10-1", "QmPeer")
    assert kwargs["environment"]["HF_TOKEN"] == "hf_secret" and kwargs["ipc_mode"] == "host"
    assert kwargs["network_mode"] == "host" and kwargs["restart_policy"] == {"Name": "unless-stopped"}
    assert kwargs["device_requests"][0]["DeviceIDs"] == ["1"]
    assert kwargs["volumes"]["petals-cache"] == {"bind": "/cache", "mode": "rw"}
    h = want.config_hash()
    assert "hf_secret" not in h and h == C.desired_container("a10-1", spec, slots[1], want.identity_path,
                                                             "hf_secret").config_hash()
    assert h != C.desired_container("a10-1", spec, slots[1], want.identity_path, "hf_other").config_hash()
    spec2 = spec.model_copy(update={"public_name": "mine"})
    assert h != C.desired_container("a10-1", spec2, slots[1], want.identity_path, "hf_secret").config_hash()


def test_fleet_help_is_fast_and_light(run_cli):
    import subprocess
    import sys

    code = ("import sys; from petals_ops.cli.main import cli\n"
            "heavy = [m for m in ('torch', 'transformers', 'hivemind', 'petals', 'fabric', 'docker', "
            "'paramiko', 'pydantic') if m in sys.modules]\n"
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]", out
    for cmd in (["hosts", "check"], ["provision"], ["plan"], ["up"], ["down"], ["status"], ["logs"],
                ["restart"]):
        result = run_cli(*cmd, "--help")
        assert result.returncode == 0 and "Usage" in result.stdout, (cmd, result.stderr)


def test_proxyjump_hops_check_host_keys(tmp_path, monkeypatch):
    """fabric gives each ProxyJump hop a client with AutoAddPolicy; petals-ops must check its key too."""
    import fabric
    import paramiko

    from petals_ops.fleet.schema import HostSpec
    from petals_ops.fleet.ssh import HostError, HostSession, SSHOptions, _hops

    cfg = write(tmp_path, "Host a10-1\n  HostName 127.0.0.1\n  Port 9\n  ProxyJump jump\n"
                          "Host jump\n  HostName 127.0.0.1\n  Port 9\n", "ssh_config")
    opened = []

    def fake_open(self):
        opened.append(self)
        raise paramiko.SSHException("Server '127.0.0.1' not found in known_hosts")

    monkeypatch.setattr(fabric.Connection, "open", fake_open)
    session = HostSession("a10-1", HostSpec(),
                          SSHOptions(ssh_config=str(cfg), known_hosts=str(tmp_path / "kh")))
    with pytest.raises(HostError, match="not in"):
        session.conn
    [conn] = opened
    hops = _hops(conn)
    assert len(hops) == 2 and hops[1].original_host == "jump"
    assert all(isinstance(h.client._policy, paramiko.RejectPolicy) for h in hops)


# Every string field is checked for its kind; the error is one line naming the field (and the host).
@pytest.mark.parametrize(
    "data, needles",
    [
        ({"hosts": {"a10-1": {"address": "203.0.113.7; rm -rf /"}}},
         ["hosts.a10-1.address", "line 3", "not an IP address or a host name"]),
        ({"hosts": {"a10-1": {"address": "-oProxyCommand=x"}}}, ["hosts.a10-1.address"]),
        ({"hosts": {"a10-1": {"user": "ubuntu\nroot"}}}, ["hosts.a10-1.user", "not a user name"]),
        ({"hosts": {"a10-1": {"user": "-l"}}}, ["hosts.a10-1.user", "not a user name"]),
        ({"hosts": {"a10-1": {"key": ""}}}, ["hosts.a10-1.key", "not a path"]),
        ({"hosts": {"a10-1": {"key": "~/.ssh/k\x1b[2J"}}}, ["hosts.a10-1.key", "control character"]),
        ({"ssh_config": "a\nb"}, ["ssh_config", "control character"]),
        ({"known_hosts": ""}, ["known_hosts", "not a path"]),
        ({"server": {"image": "Petals:Latest!"}}, ["server.image", "not a Docker image name"]),
        ({"hosts": {"a10-1": {"server": {"image": "x y"}}}},
         ["hosts.a10-1.server.image", "not a Docker image name"]),
        ({"server": {"model": "big science/bloom"}}, ["server.model", "not a model"]),
        ({"server": {"dht_prefix": "a b"}}, ["server.dht_prefix", "not a DHT prefix"]),
        ({"hosts": {"a10-1": {"server": {"cache_volume": "../etc"}}}},
         ["hosts.a10-1.server.cache_volume", "not a Docker volume name"]),
        ({"server": {"cache_mount": "cache"}}, ["server.cache_mount", "absolute path"]),
        ({"server": {"identity_dir": ""}}, ["server.identity_dir", "not a path"]),
        ({"server": {"environment": {"MY VAR": "1"}}},
         ["server.environment", "not an environment variable name"]),
        ({"hosts": {"a10-1": {"server": {"environment": {"X": "a\x00b"}}}}},
         ["hosts.a10-1.server.environment.X", "control character"]),
        ({"server": {"hf_token": {"env": "HF TOKEN"}}},
         ["server.hf_token.env", "not an environment variable name"]),
        ({"server": {"hf_token": {"file": "\n"}}}, ["server.hf_token.file"]),
        ({"server": {"public_name": "x" * 200}}, ["server.public_name", "1 to 128"]),
        ({"hosts": {"a10-1": {"server": {"public_name": "lab\x1b]0;pwned\x07"}}}},
         ["hosts.a10-1.server.public_name", "control character"]),
        ({"server": {"max_disk_space": "lots"}}, ["server.max_disk_space", "not a size"]),
        ({"server": {"throughput": "fast"}}, ["server.throughput", "auto, eval, dry_run"]),
        ({"server": {"extra_args": ["--x\ny"]}}, ["server.extra_args.0", "control character"]),
        ({"server": {"volumes": ["data dir:/data"]}}, ["server.volumes", "SRC"]),
        ({"server": {"volumes": ["/data:data"]}}, ["server.volumes", "DST"]),
        ({"server": {"listen_address": "localhost"}}, ["server.listen_address", "not an IP address"]),
        ({"hosts": {"a10-1": {"server": {"container_prefix": "a/b"}}}},
         ["hosts.a10-1.server.container_prefix", "letters, digits"]),
    ],
)
def test_every_string_field_is_checked_for_its_kind(tmp_path, data, needles):
    from petals_ops.fleet.inventory import load_inventory
    from petals_ops.util.errors import InputError

    path = write(tmp_path, data)
    with pytest.raises(InputError) as e:
        load_inventory(path)
    line = e.value.one_line()
    assert "\n" not in line and "\x1b" not in line and "\x00" not in line, line
    for needle in needles:
        assert needle in line, (needle, line)


def test_good_values_of_each_kind_load(tmp_path):
    from petals_ops.fleet.inventory import load_inventory

    inv = load_inventory(write(tmp_path, {
        "ssh_config": "~/.ssh/config", "known_hosts": "/tmp/known hosts",
        "server": {"image": "registry.example.org:5000/petals/server:2.2.0@sha256:" + "a" * 64,
                   "model": "./models/tiny-bloom", "dht_prefix": "bigscience/bloom-petals",
                   "max_disk_space": "120GiB", "throughput": "auto", "public_name": "my fleet (A10s)",
                   "environment": {"PETALS_CACHE_DIR": "/cache/x"}, "cache_volume": "petals_cache.v2",
                   "volumes": ["/srv/models:/models:ro", "hf-cache:/root/.cache"],
                   "hf_token": {"env": "HF_TOKEN"}},
        "hosts": {"a10-1": {"address": "gpu-1.example.org", "user": "ubuntu", "key": "~/.ssh/id_ed25519"},
                  "a10-2": {"address": "2001:db8::7", "user": "root",
                            "server": {"listen_address": "::", "identity_dir": "id dir; $(x)"}}},
    }))
    assert inv.server_for("a10-2").identity_dir == "id dir; $(x)"  # any path: quoting keeps it inert


def test_a_token_in_a_badly_formed_value_is_not_echoed(tmp_path):
    from petals_ops.fleet.inventory import load_inventory
    from petals_ops.util.errors import InputError

    for data in ({"server": {"image": "hf_ABCDEFGHIJKLMNOPQRSTUVWXYZabcdef"}},
                 {"server": {"hf_token": {"env": "hf_ABCDEFGHIJKLMNOPQRSTUVWXYZabcdef"}}}):
        with pytest.raises(InputError) as e:
            load_inventory(write(tmp_path, data))
        assert "hf_ABCDEF" not in e.value.one_line()


def test_a_bad_field_is_one_line_on_the_cli(tmp_path, run_cli):
    path = write(tmp_path, {"hosts": {"a10-1": {"user": "ubuntu root"}}})
    assert_one_line_error(run_cli("hosts", "check", "-i", path), "hosts.a10-1.user", "line 3",
                          "not a user name", code=2)
