"""Coverage-guided fuzzing (atheris) of every parser that reads what a user or a remote peer controls.

    .venv/bin/python benchmarks/fuzz_parsers.py [SECONDS_PER_TARGET]   # default 60 per target
    .venv/bin/python benchmarks/fuzz_parsers.py --all 25               # every target in one process (CI)
    .venv/bin/python benchmarks/fuzz_parsers.py --only state,dht 120   # some targets

Targets: user files (--data, --prompt-file, the inventory, a run dir's records and summary, a model dir's
config.json and petals_ops.json, the local swarm's state.json), option values (durations, listen
addresses, multiaddrs) and what remote peers announce (server records and a model's block count from the
DHT, announced strings shown on terminals). Each must return a result or raise our InputError/OpsError
(ValueError where the API says so); any other exception is a finding: atheris prints it with the crashing
input and the script exits non-zero. Seeds come from tests/data/fuzz_corpus/TARGET/ (copied to a scratch
dir, so a run never writes into the repo); add a file there for each finding after fixing it.
atheris is installed by ./install.sh (constraints.txt) where a wheel exists (CPython 3.11, x86_64).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

CORPUS = Path(__file__).resolve().parents[1] / "tests" / "data" / "fuzz_corpus"
TARGETS = ("number", "gold", "data", "prompt", "inventory", "records", "summary", "model_dir", "state",
           "dht_record", "block_count", "announced_text", "options")


def _target(name: str, scratch: Path):
    """The function atheris calls with each input for target ``name``."""
    from petals_ops.util.errors import InputError, OpsError

    def in_file(data: bytes, file: str, where: Path = scratch) -> Path:
        path = where / file
        path.write_bytes(data)
        return path

    def as_json(data: bytes):
        try:
            return json.loads(data.decode("utf-8", "replace"))
        except (ValueError, RecursionError):
            return None

    if name == "number":
        from petals_ops.bench.extraction import extract_answer, normalize_number

        def run(data: bytes):
            text = data.decode("utf-8", "replace")
            normalize_number(text)
            extract_answer(text)
        return run
    if name == "gold":
        from petals_ops.bench.extraction import parse_gold

        def run(data: bytes):
            try:
                parse_gold(data.decode("utf-8", "replace"))
            except ValueError:
                pass
        return run
    if name == "dht_record":
        return _dht_record_target(as_json)
    if name == "block_count":
        from petals_ops.client.models import MAX_BLOCKS, check_num_blocks

        def run(data: bytes):
            value = as_json(data)
            try:
                count = check_num_blocks(value, "the record")
            except InputError:
                return
            assert isinstance(count, int) and 1 <= count <= MAX_BLOCKS, count
        return run
    if name == "announced_text":
        return _announced_text_target()
    if name == "options":
        return _options_target()

    def run(data: bytes):
        try:
            if name == "data":
                from petals_ops.bench.data import load_jsonl
                load_jsonl(in_file(data, "data.jsonl"))
            elif name == "prompt":
                from petals_ops.bench.prompts import load_prompt_file
                load_prompt_file(in_file(data, "prompt.txt"))
            elif name == "inventory":
                from petals_ops.fleet.inventory import load_inventory
                load_inventory(in_file(data, "inv.yaml"))
            elif name == "records":
                from petals_ops.bench.report import load_records
                in_file(data, "records.jsonl")
                load_records(scratch)
            elif name == "summary":
                from petals_ops.bench.report import load_summary
                in_file(data, "summary.json")
                load_summary(scratch)
            elif name == "model_dir":
                from petals_ops.client.models import resolve_model
                model = scratch / "model"
                model.mkdir(exist_ok=True)
                (model / "model.safetensors").write_bytes(b"")
                # the first half is config.json, the rest petals_ops.json
                cut = len(data) // 2
                in_file(data[:cut], "config.json", model)
                in_file(data[cut:], "petals_ops.json", model)
                ref = resolve_model(str(model))
                assert isinstance(ref.num_blocks, int) and isinstance(ref.dht_prefix, str)
            elif name == "state":
                from petals_ops.lab.local_swarm import LocalSwarm
                in_file(data, "state.json")
                swarm = LocalSwarm.load(scratch)
                if swarm is not None:  # what down would signal: whole numbers >= 1 only
                    assert all(isinstance(p.pgid, int) and p.pgid >= 1 for p in swarm.processes)
        except (InputError, OpsError):
            pass
    return run


def _dht_record_target(as_json):
    """A server record as any peer may announce it (petals' ServerInfo fields, any JSON values) turned
    into a snapshot: never an exception, strings bounded, block ranges inside the model."""
    from types import SimpleNamespace

    from petals_ops.client.models import ModelRef
    from petals_ops.swarm.health import MAX_ANNOUNCED_CHARS, build_snapshot

    fields = ("start_block", "end_block", "throughput", "cache_tokens_left", "version", "torch_dtype",
              "quant_type", "public_name", "using_relay", "inference_rps", "forward_rps", "network_rps")

    def run(data: bytes):
        value = as_json(data)
        value = value if isinstance(value, dict) else {"public_name": value}
        info = SimpleNamespace(state=SimpleNamespace(name=str(value.get("state", "ONLINE"))),
                               **{f: value.get(f) for f in fields})
        blocks = [SimpleNamespace(uid=f"m.{i}", servers={"QmPeer": info}) for i in range(3)]
        snap = build_snapshot(ModelRef("m", "m", 3), blocks, taken_at=0.0, walk_seconds=0.0)
        for s in snap.servers:
            assert 0 <= s.start_block < s.end_block <= 3, s
            for text in (s.public_name, s.version, s.torch_dtype, s.quant_type):
                assert text is None or (isinstance(text, str) and len(text) <= MAX_ANNOUNCED_CHARS)
        snap.to_dict()
    return run


def _announced_text_target():
    """Announced text through the terminal helpers: no control character and no rich markup survives."""
    import io
    import unicodedata

    from rich.console import Console

    from petals_ops.util.safe_text import inert, inert_text, printable

    HIDDEN = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}  # noqa: N806  (control, format, unassigned...)

    def run(data: bytes):
        text = data.decode("utf-8", "replace")
        shown = printable(text)
        assert not {unicodedata.category(ch) for ch in shown} & HIDDEN, repr(shown)
        buf = io.StringIO()
        console = Console(file=buf, width=120, color_system=None, legacy_windows=False)
        console.print(inert(text))
        console.print(inert_text(text, keep_newlines=True))
        assert "\x1b" not in buf.getvalue(), repr(buf.getvalue())
    return run


def _options_target():
    """Option values: --refresh durations, --listen addresses, --initial-peers multiaddrs."""
    from petals_ops.lab.target import split_peers
    from petals_ops.monitoring.server import MAX_REFRESH, parse_duration, parse_listen
    from petals_ops.util.errors import InputError

    def run(data: bytes):
        text = data.decode("utf-8", "replace")
        try:
            seconds = parse_duration(text)
            assert 0.1 <= seconds <= MAX_REFRESH, seconds
        except InputError:
            pass
        try:
            host, port = parse_listen(text)
            assert 0 <= port <= 65535
        except InputError:
            pass
        try:
            split_peers([text])
        except InputError:
            pass
    return run


def fuzz_one(name: str, seconds: int, scratch: Path) -> None:
    """Run inside a child process: atheris.Setup/Fuzz take over the process and exit it."""
    import atheris

    with atheris.instrument_imports(include=["petals_ops"]):  # our code only: libraries are not the target
        import petals_ops.bench.data  # noqa: F401
        import petals_ops.bench.extraction  # noqa: F401
        import petals_ops.bench.prompts  # noqa: F401
        import petals_ops.bench.report  # noqa: F401
        import petals_ops.client.models  # noqa: F401
        import petals_ops.fleet.inventory  # noqa: F401
        import petals_ops.lab.local_swarm  # noqa: F401
        import petals_ops.swarm.health  # noqa: F401
        import petals_ops.util.safe_text  # noqa: F401
    seeds, work = scratch / "corpus", scratch / "work"
    seeds.mkdir()
    work.mkdir()
    names = TARGETS if name == "all" else (name,)
    for index, target in enumerate(names):  # with "all", an input's first byte picks its target
        files = sorted((CORPUS / target).glob("*")) if (CORPUS / target).is_dir() else []
        for seed in files or [None]:
            data = seed.read_bytes() if seed is not None else b""
            prefix = bytes([index]) if name == "all" else b""
            (seeds / f"{target}-{seed.name if seed else 'empty'}").write_bytes(prefix + data)
    runs = [_target(target, work) for target in names]
    if name == "all":
        def run(data: bytes):
            if data:
                runs[data[0] % len(runs)](data[1:])
    else:
        run = runs[0]
    atheris.Setup([sys.argv[0], f"-max_total_time={seconds}", "-rss_limit_mb=2048", "-timeout=10",
                   f"-artifact_prefix={scratch}/", str(seeds)], run)
    atheris.Fuzz()


def run_targets(names, seconds: int) -> list[str]:
    """Fuzz each target for ``seconds`` in its own process; return the names with findings."""
    failed = []
    for name in names:
        with tempfile.TemporaryDirectory(prefix="petals-ops-fuzz-") as scratch:
            result = subprocess.run([sys.executable, __file__, "--one", f"{name}:{seconds}", scratch],
                                    capture_output=True, text=True, timeout=seconds + 120)
        tail = (result.stderr.strip().splitlines() or [""])[-1]
        print(f"{name}: {'clean' if result.returncode == 0 else 'FINDING'} ({tail})", flush=True)
        if result.returncode != 0:
            failed.append(name)
            print(result.stderr[-3000:], file=sys.stderr)  # the crash input and its traceback
    return failed


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "--one":
        name, seconds = argv[1].split(":")
        fuzz_one(name, int(seconds), Path(argv[2]))
        return 0
    names = list(TARGETS)
    if argv[:1] == ["--only"]:
        names, argv = [n for n in argv[1].split(",") if n], argv[2:]
        unknown = set(names) - set(TARGETS)
        if unknown:
            print(f"unknown targets {sorted(unknown)}; known: {', '.join(TARGETS)}", file=sys.stderr)
            return 2
    if argv[:1] == ["--all"]:  # one process for every target: no start-up per target (the CI run)
        failed = run_targets(["all"], int(argv[1]))
        print(f"all {len(TARGETS)} targets {'clean' if not failed else 'have a FINDING'} in one run")
        return 1 if failed else 0
    seconds = int(argv[0]) if argv else 60
    failed = run_targets(names, seconds)
    print(f"{len(names) - len(failed)} of {len(names)} targets clean after {seconds} s each")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
