"""GSM8K problems: the JSONL loader (official layout), the shipped demo set, hub copy, and selection.

A data line is ``{"question": ..., "answer": "...\\n#### N"}``. Problem ids are ``{source}:{line}`` so a
resumed run recognises its questions whatever ``--limit``/``--offset``/``--sample`` picked.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

from petals_ops.bench.extraction import parse_gold
from petals_ops.errors import InputError, OpsError

EXPERIMENTS_DIR = Path(__file__).resolve().parents[2] / "experiments"
DEMO_DATA = EXPERIMENTS_DIR / "data" / "gsm8k_demo.jsonl"
HF_PREFIX = "hf:"
HF_FILES = {"test": "main/test-00000-of-00001.parquet", "train": "main/train-00000-of-00001.parquet"}


@dataclass(frozen=True)
class Problem:
    id: str
    line: int
    question: str
    gold: str  # normalised number


@dataclass(frozen=True)
class Dataset:
    source: str  # what --data said, resolved
    sha256: str  # of the file's bytes
    problems: list[Problem]


def _parse_lines(lines: list[str], where: str, id_prefix: str) -> list[Problem]:
    problems = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        loc = f"{where}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{loc} is not valid JSON ({e.msg})", fix="fix or remove that line of --data") from e
        if not isinstance(row, dict) or not isinstance(row.get("question"), str) or not isinstance(row.get("answer"), str):
            raise InputError(f"{loc} lacks string fields 'question' and 'answer'", fix="use the GSM8K JSONL layout")
        try:
            gold = parse_gold(row["answer"])
        except ValueError as e:
            raise InputError(f"{loc}: the answer has {e}", fix="end the answer with a line '#### N'") from e
        problems.append(Problem(id=f"{id_prefix}:{number}", line=number, question=row["question"].strip(), gold=gold))
    if not problems:
        raise InputError(f"{where} holds no problems", fix="pass a GSM8K JSONL file with at least one line")
    return problems


def load_jsonl(path: str | Path) -> Dataset:
    path = Path(path).expanduser()
    if path.is_dir():  # the official checkout layout: grade_school_math/data/test.jsonl
        for candidate in (path / "test.jsonl", path / "grade_school_math" / "data" / "test.jsonl", path / "data" / "test.jsonl"):
            if candidate.is_file():
                path = candidate
                break
        else:
            raise InputError(f"--data {path} is a directory without test.jsonl", fix="pass the JSONL file itself")
    if not path.is_file():
        raise InputError(f"--data {path} does not exist", fix="pass a GSM8K JSONL file, 'demo', or hf:openai/gsm8k")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"--data {path} is not UTF-8 text", fix="pass a GSM8K JSONL file") from e
    problems = _parse_lines(text.splitlines(), str(path), path.stem)
    return Dataset(source=str(path.resolve()), sha256=hashlib.sha256(raw).hexdigest(), problems=problems)


def load_hub(spec: str) -> Dataset:
    """``hf:openai/gsm8k`` (optionally ``hf:openai/gsm8k:train``) through huggingface_hub's cache."""
    name, _, split = spec[len(HF_PREFIX):].partition(":")
    split = split or "test"
    if split not in HF_FILES:
        raise InputError(f"--data {spec}: unknown split {split!r}", fix="use :test or :train")
    try:
        from huggingface_hub import hf_hub_download

        local = hf_hub_download(repo_id=name, filename=HF_FILES[split], repo_type="dataset")
    except Exception as e:
        raise OpsError(
            f"cannot download {name} ({split}) from the Hugging Face hub ({type(e).__name__})",
            fix="this machine may be offline; pass --data PATH of a local GSM8K test.jsonl instead",
        ) from e
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise OpsError(f"reading {local} needs pyarrow", fix="pip install pyarrow, or pass --data PATH of a JSONL file") from e
    table = pq.read_table(local).to_pylist()
    lines = [json.dumps({"question": r["question"], "answer": r["answer"]}) for r in table]
    problems = _parse_lines(lines, f"{spec}", f"hf-{split}")
    return Dataset(source=spec, sha256=hashlib.sha256(Path(local).read_bytes()).hexdigest(), problems=problems)


def load_dataset(spec: str | None) -> Dataset:
    """``demo`` (the shipped set), ``hf:owner/name[:split]``, or a path (file or official directory)."""
    spec = (spec or "demo").strip()
    if spec == "demo":
        return load_jsonl(DEMO_DATA)
    if spec.startswith(HF_PREFIX):
        return load_hub(spec)
    return load_jsonl(spec)


def select(problems: list[Problem], *, offset: int = 0, limit: int | None = None, sample: int | None = None,
           sample_seed: int = 0) -> list[Problem]:
    """``--offset`` then ``--sample`` (a seeded random subset, kept in file order) then ``--limit``."""
    if offset < 0 or (limit is not None and limit < 1) or (sample is not None and sample < 1):
        raise InputError("--offset must be >= 0 and --limit/--sample >= 1", fix="check the selection options")
    chosen = problems[offset:]
    if not chosen:
        raise InputError(f"--offset {offset} skips all {len(problems)} problems", fix=f"use --offset below {len(problems)}")
    if sample is not None and sample < len(chosen):
        keep = sorted(random.Random(sample_seed).sample(range(len(chosen)), sample))
        chosen = [chosen[i] for i in keep]
    if limit is not None:
        chosen = chosen[:limit]
    return chosen
