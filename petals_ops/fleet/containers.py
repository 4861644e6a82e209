"""Server containers on one host: the desired container of each server, and create-or-replace.

Each server (one per GPU; one CPU server on a host without GPUs) is a container named
``{container_prefix}-{i}`` with the Petals Docker conventions: host networking (the server listens on the
host's address, so the swarm can reach it), shared IPC, a GPU device request, the cache volume,
``restart: unless-stopped``, and a stable identity file bind-mounted read-only so its peer id survives
restarts and recreation. A hash of everything that defines the container is stored in a label: unchanged
hash, the container is left alone; changed, it is recreated.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from petals_ops.util.errors import InputError
from petals_ops.fleet.schema import BLOCK_RANGE_RE, HostSpec, ServerSpec, token_digest
from petals_ops.fleet.peers import multiaddr
from petals_ops.fleet.ssh import HostError, HostSession

LABEL_MANAGED = "io.petals-ops.managed"
LABEL_HOST = "io.petals-ops.host"
LABEL_HASH = "io.petals-ops.config-hash"
LABEL_PEER = "io.petals-ops.peer-id"
LABEL_BLOCKS = "io.petals-ops.blocks"
LABEL_INDEX = "io.petals-ops.server-index"
IDENTITY_IN_CONTAINER = "/petals-ops/identity.key"
TOKEN_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")


@dataclass
class ServerSlot:
    """Server ``index`` of a host: its GPU (None on CPU), port and blocks (``block_indices`` or
    ``num_blocks``)."""

    host: str
    index: int
    gpu: int | None
    port: int
    block_indices: str | None
    num_blocks: int | None
    container: str

    @property
    def blocks(self) -> tuple[int, int] | None:
        if self.block_indices is None:
            return None
        m = BLOCK_RANGE_RE.match(self.block_indices)
        return int(m.group(1)), int(m.group(2))


def server_slots(host: str, hspec: HostSpec, spec: ServerSpec) -> list[ServerSlot]:
    """One server per GPU (Petals maintainers' advice), one CPU server when the spec says device cpu."""
    count = 1 if spec.device == "cpu" else hspec.gpus
    if count == 0:
        raise InputError(f"host {host} has gpus: 0 but the server device is cuda",
                         fix=f"set hosts.{host}.gpus, or server.device: cpu")
    if spec.block_indices is not None and len(spec.block_indices) != count:
        raise InputError(
            f"host {host} runs {count} server(s) but block_indices lists {len(spec.block_indices)} range(s)",
            fix=f"give one start:end per server under hosts.{host}.server.block_indices",
        )
    return [
        ServerSlot(
            host=host, index=i, gpu=None if spec.device == "cpu" else i, port=spec.port + i,
            block_indices=spec.block_indices[i] if spec.block_indices else None,
            num_blocks=spec.num_blocks, container=f"{spec.container_prefix}-{i}",
        )
        for i in range(count)
    ]


def server_args(spec: ServerSpec, slot: ServerSlot, initial_peers: list[str] | None = None) -> list[str]:
    """The exact server command line (entry command + run_server options) of one slot. No secrets in it."""
    args = [*spec.command, spec.model]
    if spec.dht_prefix:
        args += ["--dht_prefix", spec.dht_prefix]
    peers = spec.initial_peers if initial_peers is None else initial_peers
    if spec.new_swarm:
        args += ["--new_swarm"]
    elif peers:
        args += ["--initial_peers", *peers]
    args += ["--device", spec.device]
    for option in ("torch_dtype", "quant_type", "attn_cache_tokens", "inference_max_length", "max_disk_space",
                   "throughput"):
        value = getattr(spec, option)
        if value is not None:
            args += [f"--{option}", str(value)]
    if slot.block_indices:
        args += ["--block_indices", slot.block_indices]
    elif slot.num_blocks:
        args += ["--num_blocks", str(slot.num_blocks)]
    args += ["--host_maddrs", multiaddr(spec.listen_address, slot.port)]
    if spec.public_ip:
        args += ["--announce_maddrs", multiaddr(spec.public_ip, slot.port)]
    if spec.public_name:
        args += ["--public_name", spec.public_name]
    args += ["--identity_path", IDENTITY_IN_CONTAINER]
    return args + list(spec.extra_args)


@dataclass
class DesiredContainer:
    slot: ServerSlot
    image: str
    command: list[str]
    environment: dict[str, str]  # without the token
    binds: dict[str, dict]
    gpu: int | None
    restart_policy: str
    identity_path: str  # on the host
    token: str | None = field(default=None, repr=False)
    image_id: str | None = None

    def config_hash(self) -> str:
        data = {
            "image": self.image, "image_id": self.image_id, "command": self.command, "env": self.environment,
            "token": token_digest(self.token), "binds": self.binds, "gpu": self.gpu,
            "restart": self.restart_policy, "network": "host", "ipc": "host",
        }
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:24]

    def create_kwargs(self, host: str, peer_id: str) -> dict:
        from docker.types import DeviceRequest, LogConfig

        env = dict(self.environment)
        if self.token is not None:
            env.update({name: self.token for name in TOKEN_ENV})  # reaches the container as env, never argv
        restart = {"Name": self.restart_policy}
        if self.restart_policy == "on-failure":
            restart["MaximumRetryCount"] = 5
        kwargs = dict(
            image=self.image, command=self.command, name=self.slot.container, detach=True,
            labels={
                LABEL_MANAGED: "true", LABEL_HOST: host, LABEL_HASH: self.config_hash(), LABEL_PEER: peer_id,
                LABEL_BLOCKS: self.slot.block_indices
                or (f"num:{self.slot.num_blocks}" if self.slot.num_blocks else "auto"),
                LABEL_INDEX: str(self.slot.index),
            },
            environment=env, network_mode="host", ipc_mode="host", volumes=self.binds,
            # run_server shuts down cleanly (OFFLINE) on SIGINT; as PID 1 it ignores SIGTERM
            restart_policy=restart, stop_signal="SIGINT",
            log_config=LogConfig(type="json-file", config={"max-size": "50m", "max-file": "3"}),
        )
        if self.gpu is not None:
            kwargs["device_requests"] = [DeviceRequest(device_ids=[str(self.gpu)], capabilities=[["gpu"]])]
            env["CUDA_VISIBLE_DEVICES"] = "0"  # the container sees only its GPU, as device 0
        return kwargs


def identity_path(spec: ServerSpec, identity_dir_abs: str, host: str, slot: ServerSlot) -> str:
    return f"{identity_dir_abs.rstrip('/')}/{host}.{slot.container}.key"


def desired_container(host: str, spec: ServerSpec, slot: ServerSlot, identity: str, token: str | None,
                      initial_peers: list[str] | None = None) -> DesiredContainer:
    binds = {spec.cache_volume: {"bind": spec.cache_mount, "mode": "rw"},
             identity: {"bind": IDENTITY_IN_CONTAINER, "mode": "ro"}}
    for v in spec.volumes:
        src, dst, *mode = v.split(":")
        binds[src] = {"bind": dst, "mode": mode[0] if mode else "rw"}
    env = {"PETALS_CACHE": spec.cache_mount, **spec.environment}
    if slot.gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = "0"
    return DesiredContainer(
        slot=slot, image=spec.image, command=server_args(spec, slot, initial_peers), environment=env,
        binds=binds,
        gpu=slot.gpu, restart_policy=spec.restart_policy, identity_path=identity, token=token,
    )


def home_relative(session: HostSession, path: str) -> str:
    """``path`` made absolute on the host (relative paths are relative to the SSH user's home); no changes."""
    result = session.script('case "$1" in /*) printf %s "$1";; *) printf %s "$HOME/$1";; esac', path,
                            check=True)
    return result.stdout.strip()


def ensure_identity(session: HostSession, path: str, *, dry_run: bool) -> tuple[str | None, bool]:
    """(peer id, created) of the identity file at ``path`` on the host; creates it (0600) when missing."""
    from petals_ops.client import door

    data = session.read_file(path)
    if data:
        try:
            return door.peer_id_of_identity(data), False
        except Exception:
            raise HostError(f"{session.name}: {path} is not a libp2p identity file",
                            fix="move it away; petals-ops will make a new one "
                                "(the server gets a new peer id)") from None
    if dry_run:
        return None, True
    parent = path.rsplit("/", 1)[0]
    session.script('mkdir -p -m 700 -- "$1"', parent, check=True)
    data, peer_id = door.new_identity()
    session.write_file(path, data, mode=0o600)
    return peer_id, True


def managed_containers(client, host: str) -> list:
    """Our server containers of ``host``: managed by petals-ops AND labelled with this host's name, so
    one engine shared by two inventory hosts (or two inventories) never has the other's containers
    counted, restarted or removed here."""
    filters = {"label": [f"{LABEL_MANAGED}=true", f"{LABEL_HOST}={host}"]}
    return sorted(client.containers.list(all=True, filters=filters), key=lambda c: c.name)


def last_log_lines(container, n: int = 15) -> list[str]:
    try:
        raw = container.logs(stdout=True, stderr=True, tail=n)
    except Exception:
        return []
    return [line for line in raw.decode("utf-8", errors="replace").splitlines() if line.strip()][-n:]
