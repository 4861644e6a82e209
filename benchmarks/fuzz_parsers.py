"""Coverage-guided fuzzing (atheris) of the parsers that read user files, for a bounded time each.

    .venv/bin/pip install atheris          # not a dev dependency: it builds a native extension
    .venv/bin/python benchmarks/fuzz_parsers.py [SECONDS_PER_TARGET]   # default 60

Each target must return a result or raise our InputError (ValueError where the API says so); any other
exception is a finding: atheris prints it with the crashing input and the script exits non-zero.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

TARGETS = ("number", "gold", "data", "prompt", "inventory", "records", "summary")


def _target(name: str, scratch: Path):
    from petals_ops.util.errors import InputError

    def in_file(data: bytes, file: str) -> Path:
        path = scratch / file
        path.write_bytes(data)
        return path

    if name == "number":
        from petals_ops.bench.extraction import extract_answer, normalize_number

        def run(data: bytes):
            text = data.decode("utf-8", "replace")
            normalize_number(text)
            extract_answer(text)
    elif name == "gold":
        from petals_ops.bench.extraction import parse_gold

        def run(data: bytes):
            try:
                parse_gold(data.decode("utf-8", "replace"))
            except ValueError:
                pass
    else:
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
            except InputError:
                pass
    return run


def fuzz_one(name: str, seconds: int, scratch: Path) -> None:
    """Run inside a child process: atheris.Setup/Fuzz take over the process and exit it."""
    import atheris

    with atheris.instrument_imports():
        import petals_ops.bench.extraction  # noqa: F401
        import petals_ops.bench.prompts  # noqa: F401
        import petals_ops.bench.records  # noqa: F401
        import petals_ops.bench.store  # noqa: F401
        import petals_ops.fleet.inventory  # noqa: F401
    seeds = scratch / "corpus"
    seeds.mkdir()
    (seeds / "1").write_text(json.dumps({"question": "2+2?", "answer": "2+2=4\n#### 4"}) + "\n")
    (seeds / "2").write_text("hosts:\n  a10-1: {gpus: 1, server: {port: 31330}}\nserver: &s {device: cpu}\n")
    run = _target(name, scratch)
    atheris.Setup([sys.argv[0], f"-max_total_time={seconds}", "-rss_limit_mb=2048", "-timeout=10",
                   f"-artifact_prefix={scratch}/", str(seeds)], run)
    atheris.Fuzz()


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--one":
        name, seconds = sys.argv[2].split(":")
        fuzz_one(name, int(seconds), Path(sys.argv[3]))
        return 0
    seconds = int(sys.argv[1]) if len(sys.argv) > 1 else 60
    failed = []
    for name in TARGETS:
        # crash inputs are printed below
        with tempfile.TemporaryDirectory(prefix="petals-ops-fuzz-") as scratch:
            result = subprocess.run([sys.executable, __file__, "--one", f"{name}:{seconds}", scratch],
                                    capture_output=True, text=True)
        tail = (result.stderr.strip().splitlines() or [""])[-1]
        print(f"{name}: {'clean' if result.returncode == 0 else 'FINDING'} ({tail})")
        if result.returncode != 0:
            failed.append(name)
            print(result.stderr[-3000:], file=sys.stderr)
    print(f"{len(TARGETS) - len(failed)} of {len(TARGETS)} targets clean after {seconds} s each")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
