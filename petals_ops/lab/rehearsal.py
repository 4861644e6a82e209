"""The dress rehearsal at BLOOM-176B's shape (issue 13): 70 blocks over N loopback hosts, an outage, a repair.

Lab code shared by ``benchmarks/rehearsal.py`` (five hosts, the pre-flight check) and
``tests/test_rehearsal.py`` (three hosts, in CI). Every step is a real ``petals-ops`` command in a
subprocess, as an operator runs it, against the fleet lab of :mod:`petals_ops.lab.fleet_lab` (a real sshd and
Docker engine per host, CPU servers of a tiny BLOOM with 70 blocks); the only thing absent is a GPU, so
``plan --as-model bigscience/bloom`` sizes the ranges as if each host had one (an A10 unless told).

Flow: lab -> ``model tiny --layers 70`` -> ``hosts check`` -> ``plan --as-model`` (ranges written into the
inventory) -> exporter + Prometheus (the project's rules with short ``for:``) -> ``up`` -> ``swarm status``
-> greedy per-token latency through 1..N hops -> ``bench gsm8k`` in flight -> outage (one host's container
stopped) -> uncovered range, alert firing, bench errors/retries -> ``restart`` -> coverage, alert resolved ->
the bench resumed to the end (each question exactly once) -> ``down`` and the lab stopped, nothing left.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from petals_ops.lab.fleet_lab import CODE_ROOT, DHT_PREFIX, FleetLab, lab_hosts, port_free
from petals_ops.lab.prometheus_lab import MONITORING, ExporterProcess, make_test_config, start_prometheus

ALERT = "PetalsModelNotFullyServed"
AS_MODEL = "bigscience/bloom"
A100_40GB_BYTES = 42_949_672_960  # what NVML reports for an A100-SXM4-40GB: 26 nf4 blocks of BLOOM-176B
SSH_PORT = 2223  # not the session fleet lab's 2222: both can run in one pytest session
SERVER_PORTS = 31530  # and servers from here, not the session lab's 31330 (p2pd binds with SO_REUSEPORT)


def cli(*args, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    """``petals-ops ARGS`` in a subprocess (this interpreter), output captured; ``check``: rc 0 or raise."""
    env = dict(os.environ)
    env.pop("PETALS_OPS_SWARM_DIR", None)
    result = subprocess.run([sys.executable, "-m", "petals_ops.cli.main", *map(str, args)], check=False,
                            capture_output=True, text=True, timeout=timeout, env=env, cwd=CODE_ROOT)
    if check and result.returncode != 0:
        raise RuntimeError(f"petals-ops {' '.join(map(str, args))} exited {result.returncode}:\n"
                           f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def rehearsal_rules(path: Path, for_: str) -> Path:
    """The shipped alert rules with every ``for:`` shortened to ``for_`` (the shipped file is not touched)."""
    rules = yaml.safe_load((MONITORING / "rules" / "petals_alerts.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = for_
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    return path


def _processes() -> dict[int, tuple[int, list[bytes]]]:
    """pid -> (parent pid, argv) of every process on this machine."""
    procs = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            procs[int(pid)] = (ppid, Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"))
        except (OSError, IndexError, ValueError):
            continue
    return procs


def _pss(pid: int) -> int:
    try:
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    return next((int(line.split()[1]) * 1024 for line in rollup.splitlines() if line.startswith("Pss:")), 0)


def _is_server(argv: list[bytes], needle: str) -> bool:
    return b"petals_ops.serve" in argv and b"server" in argv and any(needle.encode() in a for a in argv)


def servers_pss(needle: str) -> tuple[int, int]:
    """(count, total PSS bytes) of the Petals server processes (and their forked workers) whose command line
    mentions ``needle`` (the lab's directory: other swarms on this machine are not ours). PSS splits shared
    pages between the processes that share them; their p2pd daemons are not counted."""
    pids = [pid for pid, (_, argv) in _processes().items() if _is_server(argv, needle)]
    return len(pids), sum(map(_pss, pids))


def rehearsal_pss(needle: str) -> int:
    """PSS bytes of this process and its descendants (lab daemons, exporter, Prometheus, CLI commands) plus
    the lab's server processes and theirs (containers are reparented away from dockerd): the rehearsal's
    own memory, not the machine's."""
    procs = _processes()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    todo = [os.getpid()] + [pid for pid, (_, argv) in procs.items() if _is_server(argv, needle)]
    seen: set[int] = set()
    while todo:
        pid = todo.pop()
        if pid not in seen:
            seen.add(pid)
            todo += children.get(pid, [])
    return sum(map(_pss, seen))


class Watcher(threading.Thread):
    """Polls Prometheus (the alert, ``petals_model_fully_served``) and memory every ``interval`` s, noting
    when each changes, so the timeline does not depend on how long the other steps' polling takes."""

    def __init__(self, prometheus, needle: str, interval: float = 0.5):
        super().__init__(daemon=True, name="rehearsal-watcher")
        self.prometheus, self.needle, self.interval = prometheus, needle, interval
        self.events: list[tuple[float, str, object]] = []  # (monotonic time, what, new value)
        self.state: dict[str, object] = {}
        self.peak_pss = 0
        self._halt = threading.Event()

    def _note(self, what: str, value) -> None:
        if self.state.get(what, "unset") != value:
            self.state[what] = value
            self.events.append((time.monotonic(), what, value))

    def run(self) -> None:
        ticks = 0
        while not self._halt.wait(self.interval):
            ticks += 1
            if ticks % 6 == 1:
                self.peak_pss = max(self.peak_pss, rehearsal_pss(self.needle))
            try:
                firing = self.prometheus.query(f'ALERTS{{alertname="{ALERT}",alertstate="firing"}}')
                served = self.prometheus.value("max(petals_model_fully_served)")
            except Exception:  # noqa: BLE001, S112 (a slow answer under load: try again next tick)
                continue
            self._note("alert_firing", bool(firing))
            self._note("fully_served", served)

    def first(self, what: str, value, after: float) -> float | None:
        return next((t for t, w, v in self.events if w == what and v == value and t >= after), None)

    def wait(self, what: str, value, after: float, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            t = self.first(what, value, after)
            if t is not None:
                return t
            time.sleep(0.2)
        raise RuntimeError(f"Prometheus: {what} did not become {value} within {timeout:.0f} s "
                           f"(now {self.state.get(what)})")

    def stop(self) -> None:
        self._halt.set()
        self.join(5)


@dataclass
class Rehearsal:
    """One rehearsal in ``root``. ``figures`` and ``timeline`` fill in as it runs; :meth:`run` tears
    everything down whatever happens."""

    root: Path
    hosts: int = 5
    gpu_memory_bytes: int | None = None  # None: an A10 (plan's default)
    quant: str = "nf4"
    outage_host: str | None = None  # default: the middle host
    questions: int = 10
    max_new_tokens: int = 12
    alert_for: str = "5s"
    refresh: str = "2s"
    hop_tokens: int = 24
    measure_hops: bool = True
    watch: bool = False  # the outages repaired by `petals-ops watch` (no human step), one per fault kind
    spares: int = 1  # with watch: extra lab hosts marked spare (the lost host's range goes there)
    log: object = print
    figures: dict = field(default_factory=dict)
    timeline: list[tuple[float, str]] = field(default_factory=list)

    def __post_init__(self):
        self.root = Path(self.root)
        self.lab: FleetLab | None = None
        self.prometheus = self.exporter = self.watcher = self.bench_proc = None
        self.t0 = time.monotonic()
        self.daemons: list[tuple[str, int]] = []  # (what, pid) of the lab's daemons, checked after teardown

    # -- helpers ---------------------------------------------------------------------------------
    def mark(self, what: str, at: float | None = None) -> float:
        at = time.monotonic() if at is None else at
        self.timeline.append((at - self.t0, what))
        self.log(f"[{at - self.t0:7.1f} s] {what}")
        return at

    def fleet(self, *args, **kw) -> subprocess.CompletedProcess:
        return cli(*args, "-i", self.inventory_path, **kw)

    def target(self, model: Path | None = None) -> list[str]:
        return ["--initial-peers", self.lab.initial_peers[0], "--model", str(model or self.model),
                "--dht-prefix", DHT_PREFIX]

    def swarm_status(self) -> dict:
        result = cli("swarm", "status", *self.target(), "-o", "json", check=False, timeout=120)
        if result.returncode not in (0, 1):
            raise RuntimeError(f"swarm status exited {result.returncode}: {result.stderr[-2000:]}")
        return json.loads(result.stdout)

    def wait_coverage(self, uncovered: list[int], timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            snap = self.swarm_status()
            if snap["coverage"]["uncovered_blocks"] == uncovered:
                return snap
            if time.monotonic() > deadline:
                raise RuntimeError(f"swarm status: uncovered blocks {snap['coverage']['uncovered_blocks']}, "
                                   f"expected {uncovered}")
            time.sleep(1)

    # -- steps -----------------------------------------------------------------------------------
    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        extra = self.spares if self.watch else 0
        self.lab = FleetLab(self.root / "lab", host_map=lab_hosts(self.hosts + extra), ssh_port=SSH_PORT)
        self.lab.start()
        self.mark(f"lab up: {self.hosts} hosts" + (f" and {extra} spare" if extra else "")
                  + " (sshd + dockerd each), bootstrap DHT")
        self.model = self.lab.root / "tiny-bloom-70"
        cli("model", "tiny", self.model, "--layers", 70, "--dht-prefix", DHT_PREFIX)
        self.mark("model tiny --layers 70 written")
        port = self.lab.server_port(SERVER_PORTS)
        data = self.lab.inventory(self.model, port=port, blocks=["0:70"] * (self.hosts + extra),
                                  token_env=None)
        for i, h in enumerate(data["hosts"].values()):  # unpinned: plan assigns the ranges
            h["server"].pop("block_indices")
            if self.gpu_memory_bytes:
                h["gpu_memory_bytes"] = self.gpu_memory_bytes
            if i >= self.hosts:
                h["spare"] = True
        self.inventory = data
        self.inventory_path = self.lab.write_inventory(self.root / "petals-ops.yaml", data)

    def check_and_plan(self) -> None:
        checked = self.fleet("hosts", "check", "-o", "json")  # exit 0: every host passed every check
        missing = [h for h in self.inventory["hosts"] if f'"{h}"' not in checked.stdout]
        assert not missing, f"hosts check did not report {missing}: {checked.stdout[-2000:]}"
        self.mark("hosts check: all ok")
        plan = json.loads(
            self.fleet("plan", "--as-model", AS_MODEL, "--quant", self.quant, "-o", "json").stdout
        )
        plan["assignment"] = {h: r for h, r in plan["assignment"].items()
                              if not self.inventory["hosts"][h].get("spare")}  # a spare has no range
        self.plan = plan
        self.figures["plan_assignment"] = plan["assignment"]
        self.figures["plan_covers_model"] = plan["covers_model"]
        for name, ranges in plan["assignment"].items():
            self.inventory["hosts"][name]["server"]["block_indices"] = ranges
        self.lab.write_inventory(self.inventory_path, self.inventory)
        pinned = json.loads(self.fleet("plan", "-o", "json").stdout)
        self.figures["plan_uncovered"] = pinned["uncovered"]
        self.mark(f"plan --as-model {AS_MODEL} --quant {self.quant}: "
                  + ", ".join(f"{h} {r[0]}" for h, r in plan["assignment"].items()))

    def start_monitoring(self) -> None:
        base = self.root / "prometheus"
        base.mkdir()
        config = make_test_config(base, base / "targets.json")
        config["rule_files"] = [str(rehearsal_rules(base / "rules.yml", self.alert_for))]
        self.prometheus = start_prometheus(base, config)
        self.exporter = ExporterProcess(
            [*self.target(), "--refresh", self.refresh, "--inventory", str(self.inventory_path)],
            self.root / "exporter.log")
        self.prometheus.set_targets([self.exporter.address])
        self.watcher = Watcher(self.prometheus, str(self.lab.root))
        self.watcher.start()
        rules = self.prometheus.api("rules")["data"]["groups"]
        assert any(r["name"] == ALERT for g in rules for r in g["rules"]), rules
        self.mark(f"Prometheus with the rules (for: {self.alert_for}) scraping the exporter "
                  f"(refresh {self.refresh})")

    def up(self) -> None:
        started = self.mark("up: all hosts")
        self.fleet("up", "--timeout", 900, "-o", "json", timeout=1000)
        done = self.mark("up returned: every server ONLINE")
        snap = self.wait_coverage([], 120)
        covered = self.mark("swarm status: 70 of 70 blocks covered")
        self.figures["up_seconds"] = round(done - started, 1)
        self.figures["full_coverage_seconds"] = round(covered - started, 1)
        self.figures["servers_online"] = sum(1 for s in snap["servers"] if s["state"] == "ONLINE")
        count, rss = servers_pss(str(self.lab.root))
        self.figures["server_processes"], self.figures["servers_pss_mib"] = count, round(rss / 2**20)
        table = cli("swarm", "status", *self.target(), timeout=120).stdout
        (self.root / "swarm-status.txt").write_text(table)
        t = self.watcher.wait("fully_served", 1.0, started, 120)
        self.figures["prometheus_fully_served_seconds"] = round(t - started, 1)

    def hop_latency(self) -> None:
        ends = [int(r[0].split(":")[1]) for r in self.plan["assignment"].values() if r and r[0]]
        out = self.root / "hops.json"
        cmd = [sys.executable, "-m", "petals_ops.lab.rehearsal", "hops", self.lab.initial_peers[0],
               str(self.root / "hops"), str(out), str(self.hop_tokens), *map(str, ends)]
        result = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600, cwd=CODE_ROOT)
        (self.root / "hops.log").write_text(result.stdout + result.stderr)
        if result.returncode != 0:
            raise RuntimeError(f"hop latency exited {result.returncode}: {result.stderr[-1500:]}")
        self.figures["per_token_ms_by_hops"] = json.loads(out.read_text())
        self.mark("greedy per-token latency through 1.." + str(len(ends)) + " hops measured")

    def start_bench(self) -> None:
        self.bench_dir = self.root / "bench"
        self.bench_args = ["bench", "gsm8k", "--data", "arith:test", "--limit", self.questions,
                           "--max-new-tokens", self.max_new_tokens, *self.target(),
                           "--run-dir", self.bench_dir,
                           "--retries", 2, "--backoff", 1, "--client-retries", 1, "--request-timeout", 10,
                           "--timeout", 60]
        self.bench_log = open(self.root / "bench-1.log", "w")  # noqa: SIM115 (the bench outlives this method)
        self.bench_proc = subprocess.Popen(
            [sys.executable, "-m", "petals_ops.cli.main", *map(str, self.bench_args)],
            stdout=self.bench_log, stderr=subprocess.STDOUT, cwd=CODE_ROOT, start_new_session=True)
        records = self.bench_dir / "records.jsonl"
        deadline = time.monotonic() + 300
        while not (records.is_file() and records.read_text().strip()):
            if self.bench_proc.poll() is not None or time.monotonic() > deadline:
                log = (self.root / "bench-1.log").read_text()
                raise RuntimeError(f"bench wrote no record: {log[-2000:]}")
            time.sleep(0.2)
        self.mark("bench gsm8k in flight: first question recorded")

    # -- with watch: three fault kinds, each detected and repaired with no human step ------------------
    def start_watch(self) -> None:
        from petals_ops.lab.fleet_lab import port_free as _free

        port = next(p for p in range(9570, 9670) if _free("127.0.0.1", p))
        self.watch_journal = self.root / "watch.jsonl"
        self.watch_log = open(self.root / "watch.log", "w")  # noqa: SIM115 (the watch outlives this method)
        self.watch_proc = subprocess.Popen(
            [sys.executable, "-m", "petals_ops.cli.main", "watch", "-i", str(self.inventory_path),
             "--interval", "3s", "--bad-readings", "2", "--backoff", "10s", "--healthy-reset", "20s",
             "--give-back-after", "20s", "--startup-grace", "30s", "--stop-timeout", "10",
             "--journal", str(self.watch_journal),
             "--metrics-listen", f"127.0.0.1:{port}"],
            stdout=self.watch_log, stderr=subprocess.STDOUT, cwd=CODE_ROOT, start_new_session=True)
        deadline = time.monotonic() + 120
        while not any(r["type"] == "start" for r in self._watch_records()):
            if self.watch_proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"watch did not start: {(self.root / 'watch.log').read_text()[-2000:]}")
            time.sleep(0.3)
        self.mark("petals-ops watch running (interval 3 s, K = 2 bad readings)")

    def _watch_records(self) -> list[dict]:
        """watch's journal, read as its users read it: one JSON object per line (a torn last line skipped)."""
        out = []
        if self.watch_journal.is_file():
            for line in self.watch_journal.read_text().splitlines():
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
        return [r for r in out if isinstance(r, dict) and "type" in r]

    def _wait_action(self, kind: str, key: str, after: float, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [r for r in self._watch_records() if r["type"] == "action" and r["kind"] == kind
                     and r["key"] == key and r["t"] >= after]
            if found:
                return found[0]
            if self.watch_proc.poll() is not None:
                raise RuntimeError(f"watch exited {self.watch_proc.returncode}")
            time.sleep(0.5)
        raise RuntimeError(f"watch did not {kind} {key} within {timeout:.0f} s "
                           f"(log: {self.root / 'watch.log'})")

    def _fault(self, kind: str, host: str, inject, action: str) -> None:
        """Inject a fault, then time watch's action on it (detection) and full coverage again (repair)."""
        key = f"{host}/petals-server-0"
        t_fault = self.mark(f"FAULT ({kind}): {host}")
        wall = time.time()
        inject()
        found = self._wait_action(action, key, wall, 300)
        t_detect = self.mark(f"watch: {action} {key}: {found['reason']}",
                             time.monotonic() - (time.time() - found["t"]))
        self.wait_coverage([], 300)
        t_rep = self.mark("swarm status: 70 of 70 blocks covered again")
        self.figures.setdefault("watch_faults", {})[kind] = {
            "host": host, "action": action, "detect_seconds": round(t_detect - t_fault, 1),
            "repair_seconds": round(t_rep - t_fault, 1)}

    def watch_faults(self) -> None:
        """A container stopped, a server frozen (SIGSTOP), a host's sshd and Docker engine stopped: each
        repaired by watch alone (restart, restart, the range on the spare); the lost host then returns and
        its spare is given back."""
        names = [n for n, h in self.inventory["hosts"].items() if not h.get("spare")]
        first, middle, last = names[0], names[len(names) // 2], names[-1]

        def stop_container():
            client = self.lab.docker(first)
            client.containers.get("petals-server-0").stop(timeout=30)
            client.close()

        def freeze():
            client = self.lab.docker(middle)
            for row in client.containers.get("petals-server-0").top()["Processes"]:
                os.kill(int(row[1]), signal.SIGSTOP)
            client.close()

        def host_down():
            from petals_ops.util import procs

            self.lab.stop_sshd(last)
            procs.stop_group(self.lab.hosts[last].dockerd_pgid, grace=30)  # its containers stop with it
            self.lab.hosts[last].dockerd_pgid = None

        self._fault("container stopped", first, stop_container, "restart")
        self._fault("server frozen", middle, freeze, "restart")
        self._fault("host down (sshd + engine)", last, host_down, "take_spare")
        t_back = self.mark(f"{last} back: Docker engine and sshd started (its server restarts with them)")
        wall = time.time()
        self.lab.start_dockerd(last)
        self.lab.start_sshd(last)
        found = self._wait_action("give_back", f"{last}/petals-server-0", wall, 300)
        t_given = self.mark(f"watch: give_back of {last}'s range: {found['reason']}",
                            time.monotonic() - (time.time() - found["t"]))
        self.wait_coverage([], 120)
        self.figures["watch_give_back_seconds"] = round(t_given - t_back, 1)
        counts: dict[str, int] = {}
        for r in self._watch_records():
            if r["type"] == "outcome":
                counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
        actions = [r for r in self._watch_records() if r["type"] == "action"]
        self.figures["watch_actions"] = [f"{r['kind']} {r['key']}" for r in actions]
        self.figures["watch_outcomes"] = counts
        if counts.get("failed"):
            raise RuntimeError(f"watch actions failed: {counts} (log: {self.root / 'watch.log'})")

    def stop_watch(self) -> None:
        if getattr(self, "watch_proc", None) is not None and self.watch_proc.poll() is None:
            self.watch_proc.send_signal(signal.SIGTERM)  # watch alone: it finishes its pass and exits
            try:
                self.watch_proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.watch_proc.pid, signal.SIGKILL)
                self.watch_proc.wait(10)
            self.watch_log.close()

    def outage(self) -> None:
        names = list(self.inventory["hosts"])
        host = self.outage_host or names[len(names) // 2]
        rng = self.plan["assignment"][host][0]
        start, end = map(int, rng.split(":"))
        client = self.lab.docker(host)
        t_out = self.mark(f"OUTAGE: docker stop {host}'s server (blocks {rng})")
        client.containers.get("petals-server-0").stop(timeout=30)
        client.close()
        self.mark(f"{host}'s container stopped")
        if self.bench_proc.poll() == 0:
            raise RuntimeError("the bench finished before the outage took effect: raise questions")
        self.wait_coverage(list(range(start, end)), 120)
        t_unc = self.mark(f"swarm status shows {rng} uncovered")
        t_alert = self.watcher.wait("alert_firing", True, t_out, 180)
        self.mark(f"Prometheus: {ALERT} firing", t_alert)
        self.figures.update(outage_host=host, outage_blocks=rng,
                            outage_to_uncovered_seconds=round(t_unc - t_out, 1),
                            outage_to_alert_seconds=round(t_alert - t_out, 1))
        self.outage_at, self.outage_host_name = t_out, host
        # The bench must have recorded the failure (an error record, or a retried attempt), not hung.
        deadline = time.monotonic() + 240
        while not self._bench_saw_failure():
            if time.monotonic() > deadline:
                raise RuntimeError("the bench recorded no error or retry during the outage (hung?)")
            time.sleep(0.5)
        self.mark("bench recorded errors/retries during the outage")

    def _records(self) -> list[dict]:
        path = self.bench_dir / "records.jsonl"
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def _bench_saw_failure(self) -> bool:
        log = (self.root / "bench-1.log").read_text()
        failed = any(r.get("error") or r.get("attempts", 1) > 1 for r in self._records())
        return failed or "retry" in log.lower()

    def repair(self) -> None:
        t_rep = self.mark(f"REPAIR: petals-ops restart --hosts {self.outage_host_name}")
        self.fleet("restart", "--hosts", self.outage_host_name, "--timeout", 600, "-o", "json", timeout=700)
        self.mark("restart returned: the server is ONLINE")
        self.wait_coverage([], 180)
        t_cov = self.mark("swarm status: 70 of 70 blocks covered again")
        t_res = self.watcher.wait("alert_firing", False, t_rep, 180)
        self.mark(f"Prometheus: {ALERT} resolved", t_res)
        self.figures.update(repair_to_full_coverage_seconds=round(t_cov - t_rep, 1),
                            repair_to_alert_resolved_seconds=round(t_res - t_rep, 1))

    def finish_bench(self) -> None:
        try:
            rc = self.bench_proc.wait(600)
        except subprocess.TimeoutExpired:
            raise RuntimeError("the bench in flight did not finish within 600 s of the repair (hung)") \
                from None
        self.bench_log.close()
        errors = sum(1 for r in self._records() if r.get("error"))
        self.mark(f"bench run 1 exited {rc} ({errors} error records)")
        self.figures["bench_first_exit"] = rc
        runs = 1
        while rc != 0 and runs < 3:
            result = cli(*self.bench_args, check=False, timeout=900)
            (self.root / f"bench-{runs + 1}.log").write_text(result.stdout + result.stderr)
            rc, runs = result.returncode, runs + 1
            self.mark(f"bench resumed (run {runs}) exited {rc}")
        records = self._records()
        ok: dict[str, int] = {}
        for r in records:
            if not r.get("error"):
                ok[r["id"]] = ok.get(r["id"], 0) + 1
        self.figures.update(
            bench_runs=runs, bench_final_exit=rc, bench_questions=len(ok),
            bench_error_records=sum(1 for r in records if r.get("error")),
            bench_retried_attempts=sum(r.get("attempts", 1) - 1 for r in records if not r.get("error")),
            bench_each_question_once=len(ok) == self.questions and set(ok.values()) == {1},
        )
        if rc != 0 or not self.figures["bench_each_question_once"]:
            raise RuntimeError(f"bench did not finish each question exactly once (exit {rc}, "
                               f"successes per id {ok})")

    def teardown(self) -> None:
        """Everything down in reverse order, whatever failed; then check that nothing is left running."""
        steps = [("watch", self.stop_watch)]
        if self.bench_proc is not None and self.bench_proc.poll() is None:
            steps.append(("bench", lambda: (os.killpg(self.bench_proc.pid, 9), self.bench_proc.wait(10))))
        if self.lab is not None and getattr(self, "inventory_path", None) and self.lab.dht_pgid:
            steps.append(("down", lambda: self.fleet("down", timeout=300, check=False)))
        if self.watcher is not None:
            steps.append(("watcher", self.watcher.stop))
        if self.exporter is not None:
            steps.append(("exporter", self.exporter.stop))
        if self.prometheus is not None:
            steps.append(("prometheus", self.prometheus.stop))
        if self.lab is not None:
            hosts = self.lab.hosts.values()
            self.daemons = [(f"sshd of {h.name}", h.sshd_pid) for h in hosts if h.sshd_pid]
            self.daemons += [(f"dockerd of {h.name}", h.dockerd_pgid) for h in hosts if h.dockerd_pgid]
            self.daemons += [("bootstrap DHT", self.lab.dht_pgid)] if self.lab.dht_pgid else []
            steps.append(("lab", self.lab.stop))
        errors = []
        for name, step in steps:
            try:
                step()
            except Exception as e:  # noqa: BLE001 (keep tearing down)
                errors.append(f"{name}: {e}")
        self.figures["left_running"] = leftovers(self)
        left = self.figures["left_running"]
        self.mark("torn down" + (f" (errors: {errors})" if errors else "")
                  + (f"; LEFT RUNNING: {left}" if left else ": nothing left running"))

    def run(self) -> dict:
        try:
            self.start()
            self.check_and_plan()
            self.start_monitoring()
            self.up()
            if self.measure_hops:
                self.hop_latency()
            if self.watch:
                self.start_watch()
                self.start_bench()
                self.watch_faults()
            else:
                self.start_bench()
                self.outage()
                self.repair()
            self.finish_bench()
        finally:
            if self.watcher is not None:
                self.figures["peak_pss_mib"] = round(self.watcher.peak_pss / 2**20)
            self.teardown()
            self.figures["total_seconds"] = round(time.monotonic() - self.t0, 1)
        return self.figures


def leftovers(rh: Rehearsal) -> list[str]:
    """What of the rehearsal still runs: lab daemons, servers, the exporter, Prometheus, the bench."""
    from petals_ops.util.procs import pid_alive

    left = [what for what, pid in rh.daemons if pid_alive(pid)]
    if rh.lab is not None:
        left += [f"port {a}:{SSH_PORT}" for a in rh.lab.host_map.values() if not port_free(a, SSH_PORT)]
        if rh.lab.root.exists():
            left.append(f"lab dir {rh.lab.root}")
    count, _ = servers_pss(str(rh.root))
    if count:
        left.append(f"{count} server process(es)")
    for name, proc in (("exporter", getattr(rh.exporter, "proc", None)),
                       ("prometheus", getattr(rh.prometheus, "proc", None)), ("bench", rh.bench_proc),
                       ("watch", getattr(rh, "watch_proc", None))):
        if proc is not None and proc.poll() is None:
            left.append(name)
    return left


def measure_hops(initial_peer: str, work: Path, out: Path, tokens: int, ends: list[int],
                 reps: int = 2) -> None:
    """Greedy per-token latency through 1..len(ends) servers: a client model whose config has ``ends[k-1]``
    blocks (same DHT prefix) routes through the first k servers. The median gap between consecutive new
    tokens over ``reps`` generations of ``tokens`` tokens (the prompt's prefill left out; robust to the odd
    slow step on a shared machine)."""
    import gc

    from petals_ops.client import generation, loading
    from petals_ops.client.models import resolve_model
    from petals_ops.lab.tiny_model import TinyModelSpec, make_tiny_bloom

    gc.disable()  # the petals client's GC hang (a session's __del__ on the event-loop thread)
    prompt = "Q: A baker has 12 trays of 24 muffins. How many muffins?\nA:"
    result = {}
    for hops, end in enumerate(ends, start=1):
        model = make_tiny_bloom(work / f"hops-{hops}", TinyModelSpec(layers=end, dht_prefix=DHT_PREFIX))
        with loading.load_swarm_model(resolve_model(str(model)), [initial_peer]) as loaded:
            generation.generate(loaded, prompt, max_new_tokens=2)  # warm-up: routes, connections
            gaps = []
            for _ in range(reps):
                clock = generation.StepClock()
                generation.generate(loaded, prompt, max_new_tokens=tokens, streamer=clock)
                gaps += clock.gaps()
                gc.collect()
        result[str(hops)] = round(1000 * statistics.median(gaps), 1)
        print(f"{hops} hop(s) (blocks 0:{end}): {result[str(hops)]} ms/token (median of {len(gaps)} steps)",
              flush=True)
    out.write_text(json.dumps(result))


if __name__ == "__main__":  # python -m petals_ops.lab.rehearsal hops PEER WORKDIR OUT TOKENS END1 END2 ...
    if sys.argv[1:2] == ["hops"]:
        measure_hops(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]), int(sys.argv[5]),
                     [int(a) for a in sys.argv[6:]])
        from petals_ops.util import tmpclean

        tmpclean.exit_now(0)
    sys.exit("usage: python -m petals_ops.lab.rehearsal hops PEER WORKDIR OUT TOKENS END...")
