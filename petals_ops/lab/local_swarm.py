"""A private Petals swarm on 127.0.0.1: a bootstrap DHT and CPU servers holding a (tiny) BLOOM.

It is a real swarm (the same petals code a GPU server runs), only small: everything in petals-ops runs
and is tested against it on a machine with no GPU and no internet. Its state (pids, process groups,
ports, peers, logs, model) lives in a run directory, written atomically after every process start, so
``status`` and ``down`` work from another shell and even after ``up`` crashed half-way.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from petals_ops.util import procs
from petals_ops.util import tmpclean
from petals_ops.util.errors import InputError, OpsError, one_line
from petals_ops.util.fsutil import read_json, tail_lines, write_json_atomic
from petals_ops.client.models import MAX_BLOCKS, MODEL_META, ModelRef, resolve_model
from petals_ops.lab import netem

STATE_FILE = "state.json"
PEERS_RE = re.compile(r"--initial_peers (/\S+)")
LOOPBACK = "127.0.0.1"

# Server settings for a CPU swarm of a tiny model. Short update/expiration so a killed server's record
# leaves the DHT in well under a minute; big KV-cache budgets so benchmarks can batch many paths.
SERVER_DEFAULTS = {
    "update_period": 10,
    "expiration": 30,
    "inference_max_length": 8192,
    "attn_cache_tokens": 65536,
    "num_handlers": 2,
}

# One torch thread per server: a tiny model's ops are too small to split, and on a shared CPU a split op
# waits for its slowest thread to be scheduled (measured: a step of 10 rows took 23x longer with torch's
# default 2 threads than with 1 at a load of 17 on 2 cores; benchmarks/bench_concurrency.py, docs/bench.md).
SERVER_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def default_run_dir() -> Path:
    """$PETALS_OPS_SWARM_DIR, else $PETALS_OPS_HOME/swarm, else ~/.petals-ops/swarm."""
    if os.environ.get("PETALS_OPS_SWARM_DIR"):
        return Path(os.environ["PETALS_OPS_SWARM_DIR"])
    home = Path(os.environ.get("PETALS_OPS_HOME", Path.home() / ".petals-ops"))
    return home / "swarm"


@dataclass
class SwarmProcess:
    name: str
    role: str  # "dht" or "server"
    pid: int
    pgid: int
    log: str
    blocks: str | None = None  # "start:end" for servers
    start_time: int | None = None  # of the group leader, to tell our process from a reused pid

    run_dir: str | None = field(default=None, repr=False)  # set by LocalSwarm: our commands name it

    def alive(self) -> bool:
        """The process itself (not a later process that got its pid) is alive."""
        return self.pid == self.pgid and self.running() and procs.pid_alive(self.pid)

    def running(self) -> bool:
        """Anything of this process group (the leader or its p2pd and workers) is still ours and alive:
        checked by start time and command line, so ``down`` never signals a stranger's group."""
        return procs.group_is_ours(self.pgid, self.start_time, self.looks_ours)

    def looks_ours(self, argv: list[str]) -> bool:
        """A command line of this swarm: our module (``python -m petals_ops...``) naming our run dir, or a
        child of it (a p2pd daemon, a multiprocessing helper of the same Python)."""
        if not argv:
            return False
        if os.path.basename(argv[0]) == "p2pd":
            return True
        if "-m" in argv[:3] and any(a.startswith("petals_ops.") for a in argv[1:4]):
            return self.run_dir is None or any(self.run_dir in a for a in argv)
        return "multiprocessing" in " ".join(argv[1:3])  # spawn_main, resource_tracker


@dataclass
class LocalSwarm:
    run_dir: str
    model_dir: str
    dht_prefix: str
    num_blocks: int
    dht_port: int
    initial_peers: list[str] = field(default_factory=list)
    processes: list[SwarmProcess] = field(default_factory=list)
    started_at: float = 0.0
    ready_seconds: float | None = None

    @property
    def model(self) -> ModelRef:
        return resolve_model(self.model_dir)

    @property
    def servers(self) -> list[SwarmProcess]:
        return [p for p in self.processes if p.role == "server"]

    def process(self, name: str) -> SwarmProcess:
        for p in self.processes:
            if p.name == name:
                return p
        raise InputError(f"the local swarm has no process named {name}",
                         fix=f"use one of {[p.name for p in self.processes]}")

    def any_alive(self) -> bool:
        return any(p.running() for p in self.processes)

    def save(self) -> None:
        data = asdict(self)
        for p in data["processes"]:
            del p["run_dir"]
        write_json_atomic(Path(self.run_dir) / STATE_FILE, data)

    @classmethod
    def load(cls, run_dir: str | Path) -> "LocalSwarm | None":
        path = Path(run_dir) / STATE_FILE
        if not path.is_file():
            return None
        try:
            data = _checked_state(read_json(path))
            data["processes"] = [SwarmProcess(**{**p, "run_dir": data["run_dir"]}) for p in data["processes"]]
            return cls(**data)
        except (ValueError, TypeError, KeyError, RecursionError, OSError) as e:
            reason = "nested too deeply" if isinstance(e, RecursionError) else one_line(e, 200)
            raise OpsError(
                f"the local swarm state {path} is unreadable ({reason})",
                fix="stop any petals_ops.serve processes by hand, then delete that file",
            ) from e


# state.json's fields and their types (None allowed where the dataclass default is None)
_STATE_FIELDS = {"run_dir": str, "model_dir": str, "dht_prefix": str, "num_blocks": int, "dht_port": int,
                 "initial_peers": list, "processes": list, "started_at": (int, float),
                 "ready_seconds": (int, float, type(None))}
_PROCESS_FIELDS = {"name": str, "role": str, "pid": int, "pgid": int, "log": str,
                   "blocks": (str, type(None)), "start_time": (int, type(None))}


def _checked_state(data) -> dict:
    """``data`` if it has the shape :meth:`LocalSwarm.save` writes, else ValueError saying what is wrong
    (the file may be damaged or hand-edited: its pids and groups are about to be signalled)."""
    def check(obj, fields, where):
        if not isinstance(obj, dict):
            raise ValueError(f"{where} is a {type(obj).__name__}, not an object")
        for key, kind in fields.items():
            if key in obj and (not isinstance(obj[key], kind) or isinstance(obj[key], bool)):
                raise ValueError(f"{where}.{key} is {str(obj[key])[:40]!r}")
        unknown = set(obj) - set(fields)
        if unknown:
            raise ValueError(f"{where} has unknown fields {sorted(unknown)[:5]}")

    check(data, _STATE_FIELDS, "state")
    data.setdefault("processes", [])
    for i, p in enumerate(data["processes"]):
        check(p, _PROCESS_FIELDS, f"processes[{i}]")
        if p.get("pid", 0) < 1 or p.get("pgid", 0) < 1:
            raise ValueError(f"processes[{i}] names pid {p.get('pid')} / group {p.get('pgid')}")
    if not 1 <= data.get("num_blocks", 0) <= MAX_BLOCKS:
        raise ValueError(f"num_blocks is {data.get('num_blocks')}")
    if not all(isinstance(peer, str) for peer in data.get("initial_peers", [])):
        raise ValueError("initial_peers holds a non-string")
    return data


def plan_block_ranges(num_blocks: int, servers: int, replicas: int = 1) -> list[tuple[int, int]]:
    """Split ``num_blocks`` into ``servers`` contiguous ranges (sizes differ by at most one),
    ``replicas`` times."""
    if servers < 1:
        raise InputError(f"--servers {servers} must be at least 1", fix="use --servers 2")
    if servers > num_blocks:
        raise InputError(
            f"--servers {servers} is more than the model's {num_blocks} blocks",
            fix=f"use --servers {num_blocks} or fewer",
        )
    if replicas < 1:
        raise InputError(f"--replicas {replicas} must be at least 1", fix="use --replicas 1")
    base, extra = divmod(num_blocks, servers)
    ranges, start = [], 0
    for i in range(servers):
        end = start + base + (1 if i < extra else 0)
        ranges.append((start, end))
        start = end
    return ranges * replicas


# A CPU server of the tiny model is a Python process with torch and petals loaded: about 0.6 GiB resident.
SERVER_PROCESS_BYTES = 600 * 2**20
MAX_SERVER_PROCESSES = 64


def check_capacity(servers: int, replicas: int) -> None:
    """Refuse more server processes than :data:`MAX_SERVER_PROCESSES`, or than half this machine's memory
    holds, before any is started (as 'model tiny' bounds its weights)."""
    from petals_ops.lab.tiny_model import _memory_bytes

    count = servers * replicas
    need, half = (count + 1) * SERVER_PROCESS_BYTES, _memory_bytes() // 2  # + 1: the DHT
    if count > MAX_SERVER_PROCESSES or need > half:
        most = max(1, min(MAX_SERVER_PROCESSES, half // SERVER_PROCESS_BYTES - 1))
        raise InputError(
            f"--servers {servers} --replicas {replicas} would start {count} server processes "
            f"(~{need / 2**30:.1f} GiB); the local swarm takes at most {most} here "
            f"({MAX_SERVER_PROCESSES} at most, and half of this machine's {2 * half / 2**30:.1f} GiB)",
            fix=f"use --servers x --replicas of at most {most}",
        )


def check_port_free(port: int) -> int:
    """Bind 127.0.0.1:``port`` to prove it is free (0 picks a free one); return the port."""
    if not 0 <= port <= 65535:
        raise InputError(f"--dht-port {port} is not a TCP port", fix="use 0..65535 (0 picks a free port)")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((LOOPBACK, port))
        except OSError as e:
            raise InputError(
                f"--dht-port {port} on {LOOPBACK} is busy ({e.strerror})",
                fix="choose another port, or --dht-port 0 for a free one",
            ) from e
        return s.getsockname()[1]


def _python_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "petals_ops.serve", *args]


def server_command(model: ModelRef, initial_peers: list[str], blocks: tuple[int, int],
                   identity: Path, ports: tuple[int, int] | None = None, *,
                   settings: dict | None = None) -> list[str]:
    """The run_server command line of one CPU server of the local swarm.

    ``ports``: (listen, announce) behind the network emulation proxy (lab.netem); auto relay is off there
    so that no relayed connection can reach the server around its proxy."""
    cmd = _python_cmd(
        "server", model.path, "--dht_prefix", model.dht_prefix,
        "--initial_peers", *initial_peers,
        "--device", "cpu", "--torch_dtype", "float32",
        "--block_indices", f"{blocks[0]}:{blocks[1]}",
        "--host_maddrs", f"/ip4/{LOOPBACK}/tcp/{ports[0] if ports else 0}",
        "--throughput", "1.0",  # a fixed figure skips petals' slow throughput benchmark
        "--identity_path", str(identity),
    )
    if ports:
        cmd += ["--announce_maddrs", f"/ip4/{LOOPBACK}/tcp/{ports[1]}", "--no_auto_relay"]
    for option, value in {**SERVER_DEFAULTS, **(settings or {})}.items():
        cmd += [f"--{option}", str(value)]
    return cmd


def _wait_for_peers(proc: SwarmProcess, timeout: float) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in tail_lines(proc.log, 200):
            m = PEERS_RE.search(line)
            if m:
                return [m.group(1)]
        if not proc.alive():
            break
        time.sleep(0.2)
    raise OpsError(
        f"the bootstrap DHT did not start (log {proc.log}: {' | '.join(tail_lines(proc.log, 3))})",
        fix="read the log; 'petals-ops swarm local down' cleans up",
    )


def _running_swarm(run_dir: Path) -> LocalSwarm | None:
    swarm = LocalSwarm.load(run_dir)
    return swarm if swarm is not None and swarm.any_alive() else None


ProgressFn = Callable[[int, int, float], None]


def up(
    run_dir: str | Path | None = None,
    *,
    servers: int = 2,
    replicas: int = 1,
    model_dir: str | Path | None = None,
    dht_port: int = 0,
    timeout: float = 300.0,
    on_progress: ProgressFn | None = None,
    delays_ms: list[float] | None = None,
    server_settings: dict | None = None,
) -> LocalSwarm:
    """Start a DHT and ``servers`` x ``replicas`` CPU servers; return once every server is ONLINE.

    ``delays_ms``: emulated round-trip delay of each server (lab.netem's proxy in front of them;
    see ``netem.plan_delays``); None: no proxy. ``server_settings``: run_server options over
    :data:`SERVER_DEFAULTS` (e.g. ``{"expiration": 240}``: petals' record lifetime, so a frozen server's
    record outlives a test's checks as it does in a real swarm).

    On any failure the processes already started are stopped, so a failed ``up`` leaves nothing behind.
    """
    check_capacity(servers, replicas)  # before the run dir is touched
    given = run_dir or default_run_dir()
    try:
        run_dir = Path(given).resolve()
        run_dir.mkdir(parents=True, exist_ok=True)
    except (RuntimeError, OSError) as e:  # RuntimeError: a symlink loop (Python 3.11)
        raise InputError(f"the swarm dir {given} cannot be used ({one_line(e, 120)})",
                         fix="pass --swarm-dir DIR, a directory (not a file or a symlink loop)") from e
    with _up_lock(run_dir):
        return _up_locked(run_dir, servers, replicas, model_dir, dht_port, timeout, on_progress, delays_ms,
                          server_settings)


@contextlib.contextmanager
def _up_lock(run_dir: Path):
    """One ``up`` at a time per run dir (the check for a running swarm and the start are one step)."""
    with open(run_dir / ".up.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            raise InputError(f"another 'swarm local up' is starting a swarm in {run_dir}",
                             fix="wait for it") from e
        yield


def _tiny_model_in(run_dir: Path) -> Path:
    """The run dir's own tiny BLOOM, built into a temp dir and renamed so an interrupted build never
    sticks."""
    from petals_ops.lab.tiny_model import make_tiny_bloom

    model_path = run_dir / "model"
    if not (model_path / MODEL_META).is_file():  # written last: its presence means a complete model
        building = run_dir / "model.building"
        shutil.rmtree(building, ignore_errors=True)
        shutil.rmtree(model_path, ignore_errors=True)
        make_tiny_bloom(building)
        building.rename(model_path)
    return model_path


def _up_locked(run_dir, servers, replicas, model_dir, dht_port, timeout, on_progress,
               delays_ms=None, server_settings=None) -> LocalSwarm:
    running = _running_swarm(run_dir)
    if running is not None:
        raise InputError(
            f"a local swarm is already running in {run_dir} "
            f"(initial peers {' '.join(running.initial_peers)})",
            fix="use it, or stop it first with 'petals-ops swarm local down'",
        )
    if model_dir is None:
        model_path = _tiny_model_in(run_dir)
    else:
        model_path = Path(model_dir)
        if not model_path.is_dir():
            raise InputError(f"--model-dir {model_dir} is not a directory",
                             fix="pass a model directory, or leave it out")
    model = resolve_model(str(model_path))
    ranges = plan_block_ranges(model.num_blocks, servers, replicas)
    port = check_port_free(dht_port)
    if delays_ms is not None and len(delays_ms) != len(ranges):
        raise InputError(f"{len(delays_ms)} emulated delays for {len(ranges)} servers",
                         fix="give one delay per server (netem.plan_delays)")

    (run_dir / STATE_FILE).unlink(missing_ok=True)
    netem.clear(run_dir)
    logs = run_dir / "logs"
    logs.mkdir(exist_ok=True)
    for old in logs.glob("*.log"):
        old.unlink()
    swarm = LocalSwarm(
        run_dir=str(run_dir), model_dir=model.path, dht_prefix=model.dht_prefix,
        num_blocks=model.num_blocks, dht_port=port, started_at=time.time(),
    )
    try:
        _start(swarm, ranges, run_dir, timeout, on_progress, delays_ms, server_settings)
    except BaseException:
        stop(swarm)
        tmpclean.remove_swarm_tempdir(swarm.run_dir)
        raise
    return swarm


def _launch(swarm: LocalSwarm, name: str, role: str, cmd: list[str],
            blocks: str | None = None) -> SwarmProcess:
    log = Path(swarm.run_dir) / "logs" / f"{name}.log"
    tmp = tmpclean.swarm_tempdir(swarm.run_dir)  # their pymp-* dirs: removed by down
    os.makedirs(tmp, mode=0o700, exist_ok=True)
    env = {**os.environ, "TMPDIR": tmp}
    if role == "server":
        env.update(SERVER_ENV)
    popen = procs.spawn(cmd, log_path=log, cwd=swarm.run_dir,  # cwd: petals auto-loads ./config.yml
                        env=env)
    proc = SwarmProcess(name=name, role=role, pid=popen.pid, pgid=popen.pid, log=str(log), blocks=blocks,
                        start_time=procs.start_time(popen.pid), run_dir=swarm.run_dir)
    swarm.processes.append(proc)
    swarm.save()
    return proc


def _start(swarm: LocalSwarm, ranges, run_dir: Path, timeout: float, on_progress: ProgressFn | None,
           delays_ms: list[float] | None = None, server_settings: dict | None = None) -> None:
    started = time.monotonic()
    dht = _launch(
        swarm, "dht", "dht",
        _python_cmd("dht", "--host_maddrs", f"/ip4/{LOOPBACK}/tcp/{swarm.dht_port}",
                    "--identity_path", str(run_dir / "dht.id")),
    )
    swarm.initial_peers = _wait_for_peers(dht, timeout=60)
    swarm.save()
    model = swarm.model
    ports = {} if delays_ms is None else netem.start_proxy(
        run_dir, delays_ms, lambda cmd: _launch(swarm, netem.PROXY_NAME, netem.PROXY_NAME, cmd))
    for i, blocks in enumerate(ranges):
        _launch(
            swarm, f"server-{i}", "server",
            server_command(model, swarm.initial_peers, blocks, run_dir / f"server-{i}.id",
                           ports.get(f"server-{i}"), settings=server_settings),
            blocks=f"{blocks[0]}:{blocks[1]}",
        )
    wait_until_served(swarm, len(ranges), timeout=timeout - (time.monotonic() - started),
                      on_progress=on_progress)
    swarm.ready_seconds = round(time.monotonic() - started, 2)
    swarm.save()


def wait_until_served(swarm: LocalSwarm, expected_servers: int, *, timeout: float,
                      on_progress: ProgressFn | None = None):
    """Poll the DHT until ``expected_servers`` are ONLINE and every block is covered; fail fast if one
    dies."""
    from petals_ops.swarm.wait import wait_on_swarm

    last: list = []

    def step(snap, _error) -> bool:
        last[:] = [snap]
        online = snap.servers_by_state()["ONLINE"]
        if on_progress:
            on_progress(swarm.num_blocks - len(snap.uncovered_blocks), swarm.num_blocks, time.monotonic())
        if snap.fully_served and online >= expected_servers:
            return True
        dead = [p for p in swarm.processes if not p.alive()]
        if dead:
            p = dead[0]
            raise OpsError(
                f"{p.name} of the local swarm exited during start-up "
                f"({' | '.join(tail_lines(p.log, 3))})",
                fix=f"read {p.log}",
            )
        return False

    if wait_on_swarm(swarm.initial_peers, swarm.model, step, timeout=timeout, poll=1.0,
                     tolerate_errors=False):
        return last[0]
    snap = last[0]
    raise OpsError(
        f"the local swarm was not fully served after {timeout:.0f} s "
        f"(blocks without an ONLINE server: {snap.uncovered_blocks}, "
        f"{snap.servers_by_state()['ONLINE']}/{expected_servers} servers ONLINE)",
        fix=f"read the logs in {swarm.run_dir}/logs or raise --timeout",
    )


def stop(swarm: LocalSwarm, names: list[str] | None = None) -> list[str]:
    """Stop the process groups (servers first, DHT last); return the names stopped. Updates the state."""
    chosen = [p for p in swarm.processes if names is None or p.name in names]
    chosen.sort(key=lambda p: p.role == "dht")
    left, sockets = [], set()
    for p in chosen:
        if not p.running():  # never signal a group that is no longer ours
            continue
        sockets |= tmpclean.hivemind_sockets_of(procs.group_members(p.pgid))
        if not procs.stop_group(p.pgid):
            left.append(p.name)
    tmpclean.remove_unlistened(sockets)  # killed servers and daemons do not remove their /tmp sockets
    if left:
        raise OpsError(f"processes of {left} survived SIGKILL",
                       fix="check 'ps -eo pid,pgid,cmd' and kill them")
    return [p.name for p in chosen]


def down(run_dir: str | Path | None = None) -> LocalSwarm | None:
    """Stop every process of the local swarm in ``run_dir`` (p2pd daemons included). None if there was
    none."""
    run_dir = Path(run_dir or default_run_dir())
    swarm = LocalSwarm.load(run_dir)
    if swarm is None:
        return None
    stop(swarm)
    (run_dir / STATE_FILE).unlink(missing_ok=True)
    tmpclean.remove_swarm_tempdir(swarm.run_dir)
    netem.clear(run_dir)
    return swarm


def load_running(run_dir: str | Path | None = None) -> LocalSwarm:
    """The local swarm in ``run_dir``; a clear error if none is running there."""
    run_dir = Path(run_dir or default_run_dir())
    swarm = LocalSwarm.load(run_dir)
    if swarm is None or not swarm.any_alive():
        raise OpsError(
            f"no local swarm is running in {run_dir}",
            fix="start one with 'petals-ops swarm local up', or pass --initial-peers and --model",
        )
    return swarm
