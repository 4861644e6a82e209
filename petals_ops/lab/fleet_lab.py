"""The fleet lab: SSH hosts on loopback, a Docker engine per host, a test image, a bootstrap DHT.

Real parts for the fleet tests, the fleet benchmark and the rehearsal (:mod:`petals_ops.lab.rehearsal`).

- ``a10-1`` is an sshd on 127.0.0.11:2222 and ``a10-2`` one on 127.0.0.12:2222, each with its own host key
  (listed in a temp known_hosts), key-only auth with one client key, aliases in a temp ssh config.
- Each host has its own dockerd (Debian's docker.io, vfs, no iptables/bridge) with its own data-root,
  exec-root, pidfile and socket; the host's sshd points the SSH user's docker CLI at it with
  ``SetEnv DOCKER_HOST=...`` (so nobody's /var/run/docker.sock is touched, and the two hosts really have
  separate engines).
- The test image is ``docker import`` of a rootfs of symlinks and empty dirs; its containers run this
  machine's Python and the repo's .venv through read-only bind mounts, with host networking.
- GPUs are the only thing absent: the inventory says ``gpus: 0`` and ``device: cpu``.

The pytest fixtures (``tests/fixtures_fleet.py``) wrap :class:`FleetLab`, session-scoped. The rehearsal
starts a second one with up to five hosts (``lab_hosts(n)``, a10-N on 127.0.0.1N) on its own SSH port and
server ports. Needs root, openssh-server and docker.io (``./install.sh --system``).

    python -m petals_ops.lab.fleet_lab start|stop DIR
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import petals_ops

# The directory holding the petals_ops package (a checkout's root): the lab's containers run this code.
CODE_ROOT = Path(petals_ops.__file__).resolve().parents[1]
SSHD = "/usr/sbin/sshd"
DOCKERD = shutil.which("dockerd") or "/usr/sbin/dockerd"
DOCKER_CLI = shutil.which("docker") or "/usr/bin/docker"
TEST_IMAGE = "petals-ops-test:1"
HOSTS = {"a10-1": "127.0.0.11", "a10-2": "127.0.0.12"}  # the session fixtures' two hosts
# Up to five hosts for the rehearsal (lab/rehearsal.py): a10-N on 127.0.0.1N; the first two are HOSTS.
LAB_HOSTS = {f"a10-{i}": f"127.0.0.{10 + i}" for i in range(1, 6)}
SSH_PORT = 2222
DHT_PREFIX = "fleet-tiny"


def _run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def port_free(address: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((address, port))
            return True
        except OSError:
            return False


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise RuntimeError(f"timed out waiting for {what}")


def _pid_alive(pid: int) -> bool:
    from petals_ops.util.procs import pid_alive

    return pid_alive(pid)


@dataclass
class LabHost:
    name: str
    address: str
    dir: Path
    sshd_pid: int | None = None
    dockerd_pgid: int | None = None

    @property
    def docker_sock(self) -> Path:
        return self.dir / "docker.sock"

    @property
    def sshd_config(self) -> Path:
        return self.dir / "sshd_config"


@dataclass
class FleetLab:
    root: Path
    hosts: dict[str, LabHost] = field(default_factory=dict)
    initial_peers: list[str] = field(default_factory=list)
    dht_pgid: int | None = None
    host_map: dict[str, str] = field(default_factory=lambda: dict(HOSTS))  # name -> loopback address
    ssh_port: int = SSH_PORT  # another port lets a second lab (the rehearsal's) run beside the session one

    # -- paths ----------------------------------------------------------------------------------
    @property
    def ssh_config(self) -> Path:
        return self.root / "ssh_config"

    @property
    def known_hosts(self) -> Path:
        return self.root / "known_hosts"

    @property
    def client_key(self) -> Path:
        return self.root / "client_key"

    # -- start ----------------------------------------------------------------------------------
    def start(self) -> "FleetLab":
        for name, address in self.host_map.items():
            if not port_free(address, self.ssh_port):
                raise RuntimeError(f"{address}:{self.ssh_port} is busy: another fleet lab (or sshd) runs; "
                                   "stop it first")
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # sshd's privilege-separation directory
        self.root.mkdir(parents=True, exist_ok=True)
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "petals-ops-test",
              "-f", str(self.client_key)])
        shutil.copy(f"{self.client_key}.pub", self.root / "authorized_keys")
        lines, known = [], []
        for name, address in self.host_map.items():
            host = LabHost(name, address, self.root / name)
            host.dir.mkdir()
            self.hosts[name] = host
            _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host.dir / "host_key")])
            host.sshd_config.write_text("\n".join([
                f"ListenAddress {address}", f"Port {self.ssh_port}", f"HostKey {host.dir / 'host_key'}",
                f"PidFile {host.dir / 'sshd.pid'}", f"AuthorizedKeysFile {self.root / 'authorized_keys'}",
                "PasswordAuthentication no", "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no",
                "PermitRootLogin prohibit-password", "Subsystem sftp internal-sftp", "MaxSessions 20",
                f"SetEnv DOCKER_HOST=unix://{host.docker_sock}", "",
            ]))
            lines += [f"Host {name}", f"  HostName {address}", f"  Port {self.ssh_port}", "  User root",
                      f"  IdentityFile {self.client_key}", f"  UserKnownHostsFile {self.known_hosts}", ""]
            pub = (host.dir / "host_key.pub").read_text().split()
            known.append(f"[{address}]:{self.ssh_port} {pub[0]} {pub[1]}")
        self.ssh_config.write_text("\n".join(lines))
        self.known_hosts.write_text("\n".join(known) + "\n")
        try:
            for host in self.hosts.values():
                self.start_dockerd(host.name)
                self.start_sshd(host.name)
            self._make_image()
            self._start_dht()
        except BaseException:
            self.stop()
            raise
        return self

    def start_sshd(self, name: str) -> None:
        host = self.hosts[name]
        _run([SSHD, "-f", str(host.sshd_config)])  # daemonizes; the pid lands in its PidFile
        pid_file = host.dir / "sshd.pid"
        # the pid file exists a moment before sshd writes the pid into it
        _wait(lambda: pid_file.is_file() and pid_file.read_text().strip()
              and not port_free(host.address, self.ssh_port), 10, f"sshd of {name}")
        host.sshd_pid = int(pid_file.read_text())

    def stop_sshd(self, name: str) -> None:
        host = self.hosts[name]
        pid_file = host.dir / "sshd.pid"
        if host.sshd_pid is None and pid_file.is_file() and pid_file.read_text().strip():
            host.sshd_pid = int(pid_file.read_text())  # a start that failed after sshd daemonized
        if host.sshd_pid and _pid_alive(host.sshd_pid):
            os.kill(host.sshd_pid, signal.SIGTERM)
            _wait(lambda: not _pid_alive(host.sshd_pid), 10, f"sshd of {name} to stop")
        host.sshd_pid = None

    def start_dockerd(self, name: str) -> None:
        from petals_ops.util import procs

        host = self.hosts[name]
        cmd = [DOCKERD, "--storage-driver=vfs", "--iptables=false", "--ip6tables=false", "--bridge=none",
               "--data-root", str(host.dir / "docker-data"), "--exec-root", str(host.dir / "docker-exec"),
               "--pidfile", str(host.dir / "dockerd.pid"), "-H", f"unix://{host.docker_sock}"]
        popen = procs.spawn(cmd, log_path=host.dir / "dockerd.log", cwd=host.dir)
        host.dockerd_pgid = popen.pid
        _wait(lambda: subprocess.run([DOCKER_CLI, "-H", f"unix://{host.docker_sock}", "version"],
                                     capture_output=True).returncode == 0, 60, f"dockerd of {name}")

    def docker(self, name: str):
        """A local Docker SDK client of host ``name``'s engine (for assertions; the code under test uses
        SSH)."""
        import docker

        return docker.DockerClient(base_url=f"unix://{self.hosts[name].docker_sock}", version="1.41")

    def _make_image(self) -> None:
        rootfs = self.root / "rootfs"
        rootfs.mkdir()
        for link in ("bin", "lib", "lib64", "sbin"):
            (rootfs / link).symlink_to(f"usr/{link}")
        for d in ("tmp", "etc", "proc", "sys", "dev", "usr", "root"):
            (rootfs / d).mkdir()
        (rootfs / "tmp").chmod(0o1777)
        tar = self.root / "rootfs.tar"
        _run(["tar", "-C", str(rootfs), "-cf", str(tar), "."])
        for host in self.hosts.values():
            _run([DOCKER_CLI, "-H", f"unix://{host.docker_sock}", "import", str(tar), TEST_IMAGE])

    def _start_dht(self) -> None:
        from petals_ops.util import procs
        from petals_ops.util.fsutil import tail_lines
        from petals_ops.lab.local_swarm import PEERS_RE

        log = self.root / "dht.log"
        popen = procs.spawn([sys.executable, "-m", "petals_ops.serve", "dht",
                             "--host_maddrs", "/ip4/127.0.0.1/tcp/0",
                             "--identity_path", str(self.root / "dht.id")],
                            log_path=log, cwd=self.root)
        self.dht_pgid = popen.pid
        (self.root / "dht.pid").write_text(str(popen.pid))
        found: list[str] = []

        def ready():
            for line in tail_lines(log, 200):
                m = PEERS_RE.search(line)
                if m:
                    found.append(m.group(1))
                    return True
            if popen.poll() is not None:
                raise RuntimeError(f"bootstrap DHT exited: {tail_lines(log, 5)}")
            return False

        _wait(ready, 90, "the bootstrap DHT")
        self.initial_peers = found[:1]
        (self.root / "initial_peers").write_text(found[0] + "\n")

    # -- inventory --------------------------------------------------------------------------------
    def server_port(self, first: int = 31330) -> int:
        """A port free (with the next one) on every host address, from ``first`` on. p2pd binds with
        SO_REUSEPORT, so two labs sharing a port would get each other's connections: a second lab (the
        rehearsal's) searches another range."""
        for port in range(first, first + 70):
            if all(port_free(a, port) and port_free(a, port + 1) for a in self.host_map.values()):
                return port
        raise RuntimeError(f"no free server port in {first}..{first + 70}")

    def inventory(self, model_dir: Path, *, port: int, blocks=("0:2", "2:4"), extra: dict | None = None,
                  host_extra: dict | None = None, token_env: str | None = "PETALS_OPS_TEST_HF_TOKEN") -> dict:
        """An inventory dict for the lab hosts serving the tiny model on CPU (GPUs: the only thing absent)."""
        venv, base = Path(sys.prefix), Path(sys.base_prefix)
        volumes = ["/usr:/usr:ro", f"{base}:{base}:ro", f"{CODE_ROOT}:{CODE_ROOT}:ro",
                   f"{model_dir}:{model_dir}:ro"]
        if not str(venv).startswith(str(CODE_ROOT)):
            volumes.append(f"{venv}:{venv}:ro")
        server = {
            "image": TEST_IMAGE,
            "command": [str(venv / "bin" / "python"), "-m", "petals_ops.serve", "server"],
            "model": str(model_dir), "dht_prefix": DHT_PREFIX,
            "device": "cpu", "torch_dtype": "float32", "throughput": 1.0, "port": port,
            "initial_peers": list(self.initial_peers),
            "identity_dir": str(self.root / "identity"),
            "volumes": volumes,
            # the checkout's code first (the venv may hold an editable install of another checkout)
            "environment": {"USER": "root", "HOME": "/root", "PYTHONPATH": str(CODE_ROOT)},
            "attn_cache_tokens": 8192,
            "inference_max_length": 2048,
            "extra_args": ["--update_period", "10", "--expiration", "30", "--num_handlers", "2"],
            "restart_policy": "unless-stopped",
        }
        if token_env:
            server["hf_token"] = {"env": token_env}
        server.update(extra or {})
        hosts = {}
        for (name, address), rng in zip(self.host_map.items(), blocks):
            hosts[name] = {"gpus": 0, "server": {"listen_address": address, "block_indices": [rng]}}
            hosts[name]["server"].update((host_extra or {}).get(name, {}))
        return {"ssh_config": str(self.ssh_config), "known_hosts": str(self.known_hosts), "server": server,
                "hosts": hosts}

    def write_inventory(self, path: Path, data: dict) -> Path:
        import yaml

        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    # -- stop -----------------------------------------------------------------------------------
    def remove_containers(self) -> None:
        for name, host in self.hosts.items():
            if host.dockerd_pgid is None:
                continue
            try:
                client = self.docker(name)
                for c in client.containers.list(all=True):
                    c.remove(force=True)
                client.close()
            except Exception:
                pass

    def stop(self) -> None:
        from petals_ops.util import procs

        self.remove_containers()
        for name, host in self.hosts.items():
            self.stop_sshd(name)
            if host.dockerd_pgid is not None:
                procs.stop_group(host.dockerd_pgid, grace=20)
                host.dockerd_pgid = None
        if self.dht_pgid is not None:
            procs.stop_group(self.dht_pgid)
            self.dht_pgid = None
        unmount_under(self.root)  # dockerd 20.10 leaves its netns bind mount (exec-root/netns/default) behind
        shutil.rmtree(self.root, ignore_errors=True)


def unmount_under(root: Path) -> None:
    prefix = str(Path(root).resolve()) + "/"
    with open("/proc/self/mounts") as f:
        points = [line.split()[1] for line in f if line.split()[1].startswith(prefix)]
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)


def lab_hosts(count: int) -> dict[str, str]:
    """The first ``count`` lab hosts (a10-1 on 127.0.0.11, ...), at most five."""
    if not 1 <= count <= len(LAB_HOSTS):
        raise ValueError(f"the lab has 1 to {len(LAB_HOSTS)} hosts, not {count}")
    return dict(list(LAB_HOSTS.items())[:count])


def start_lab(root: Path | str | None = None, hosts: dict[str, str] | None = None) -> FleetLab:
    root = Path(root or tempfile.mkdtemp(prefix="petals-ops-fleet-"))
    return FleetLab(root, host_map=dict(hosts or HOSTS)).start()


def stop_lab_dir(root: Path | str) -> None:
    """Stop a lab started by another process (``python -m petals_ops.lab.fleet_lab stop DIR``): containers,
    sshd, dockerd and the DHT, found through the pid files in DIR; then remove DIR."""
    root = Path(root)
    lab = FleetLab(root)
    for name, address in LAB_HOSTS.items():
        if name not in HOSTS and not (root / name).is_dir():
            continue
        host = LabHost(name, address, root / name)
        if (host.dir / "sshd.pid").is_file():
            host.sshd_pid = int((host.dir / "sshd.pid").read_text())
        if (host.dir / "dockerd.pid").is_file():
            host.dockerd_pgid = int((host.dir / "dockerd.pid").read_text())  # started in its own session
        lab.hosts[name] = host
    if (root / "dht.pid").is_file():
        lab.dht_pgid = int((root / "dht.pid").read_text())
    lab.stop()


if __name__ == "__main__":  # python -m petals_ops.lab.fleet_lab start|stop DIR [MODEL_DIR]
    if len(sys.argv) < 3 or sys.argv[1] not in ("start", "stop"):
        sys.exit("usage: python -m petals_ops.lab.fleet_lab start|stop DIR")
    if sys.argv[1] == "stop":
        stop_lab_dir(sys.argv[2])
    else:
        from petals_ops.lab.tiny_model import make_tiny_bloom

        lab = start_lab(sys.argv[2])
        model = make_tiny_bloom(lab.root / "tiny-bloom")
        inv = lab.write_inventory(lab.root / "petals-ops.yaml",
                                  lab.inventory(model, port=lab.server_port(), token_env=None))
        print(f"inventory: {inv}\nmodel: {model}\ninitial peers: {lab.initial_peers[0]}")
