"""GSM8K problems: the JSONL loader (official layout), named packaged sets, the demo set, hub copy, selection.

A data line is ``{"question": ..., "answer": "...\\n#### N"}``. Problem ids are ``{prefix}:{line}`` (the
file stem for a path, ``gsm8k-test`` for the named set ``gsm8k:test``) so a resumed run recognises its
questions whatever ``--limit``/``--offset``/``--sample`` picked.

Named sets (``--data gsm8k:test``) are files shipped in the package, each registered with the sha256 of
its bytes; a copy whose bytes differ is refused. Register another with one line::

    register_dataset("arith:test", PACKAGE_DATA / "arith" / "test.jsonl", "<sha256>")
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from petals_ops.bench.extraction import parse_gold
from petals_ops.util.errors import InputError, OpsError
from petals_ops.util.fsutil import NOT_REGULAR, why_not_a_file

# Everything a command reads by default ships inside the package (a wheel install has no checkout).
PACKAGE_DATA = Path(__file__).resolve().parents[1] / "data"
DEMO_NAME = "gsm8k:demo"
HF_PREFIX = "hf:"
HF_FILES = {"test": "main/test-00000-of-00001.parquet", "train": "main/train-00000-of-00001.parquet"}
# what --data may call a named set: ``family:split`` (no path separator)
NAME_RE = re.compile(r"[A-Za-z][\w-]*:[\w-]+")


@dataclass(frozen=True)
class NamedDataset:
    path: Path
    sha256: str  # expected sha256 of the file's bytes
    id_prefix: str  # problem ids are f"{id_prefix}:{line}"
    prompt: Path | None = None  # the prompt file to use with this set when --prompt-file is not given


DATASETS: dict[str, NamedDataset] = {}
ALIASES: dict[str, str] = {"gsm8k": "gsm8k:test", "demo": DEMO_NAME}


def register_dataset(name: str, path: str | Path, sha256: str, *, id_prefix: str | None = None,
                     prompt: str | Path | None = None) -> None:
    """Make ``--data NAME`` load ``path`` (checked against ``sha256``); ids default to ``name`` with
    ``:`` -> ``-``."""
    if not NAME_RE.fullmatch(name):
        raise ValueError(f"dataset name {name!r} is not 'family:split'")
    sha256 = sha256.lower()
    if not re.fullmatch(r"[0-9a-f]{64}", sha256):
        raise ValueError(f"dataset {name}: {sha256!r} is not a sha256 hex digest")
    DATASETS[name] = NamedDataset(Path(path), sha256, id_prefix or name.replace(":", "-"),
                                  Path(prompt) if prompt is not None else None)


def canonical_name(spec: str | None) -> str:
    """``--data`` as a registered name would be looked up (aliases resolved: ``gsm8k`` -> ``gsm8k:test``)."""
    spec = (spec or "").strip()
    return ALIASES.get(spec, spec)


def default_prompt_for(spec: str | None) -> Path | None:
    """The prompt a named set brings (the synthetic arithmetic set has its own format), else None."""
    entry = DATASETS.get(canonical_name(spec))
    return entry.prompt if entry is not None else None


# 20 GSM8K-style problems written for this project (ids gsm8k_demo:N, as when it was read by path)
register_dataset(DEMO_NAME, PACKAGE_DATA / "demo" / "gsm8k_demo.jsonl",
                 "1071f9f7e5bcc4ae9a9493f8f1b5b8601976b576af68dce8a9bac536b854cddd", id_prefix="gsm8k_demo")
register_dataset("gsm8k:test", PACKAGE_DATA / "gsm8k" / "test.jsonl",
                 "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14")
register_dataset("gsm8k:train", PACKAGE_DATA / "gsm8k" / "train.jsonl",
                 "17f347dc51477c50d4efb83959dbb7c56297aba886e5544ee2aaed3024813465")
# The synthetic arithmetic task's held-out set (python -m petals_ops.lab.synthetic_math petals_ops/data/arith
# rewrites these bytes), with its own 2-exemplar prompt; the shipped tiny-bloom-arith model never saw it.
register_dataset("arith:test", PACKAGE_DATA / "arith" / "test.jsonl",
                 "cfe3f8e002d8b7136200aa5287eb8af7908beda44a8bbc6073cb57c62dfd4e5e",
                 prompt=PACKAGE_DATA / "arith" / "prompt.txt")


def known_names() -> list[str]:
    return [*sorted(ALIASES), *sorted(n for n in DATASETS if n != DEMO_NAME)]  # demo: listed by alias


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


# Bounds checked before any parsing: a GSM8K line is under 2,000 characters and the training split 4 MB.
# A 20 MB question line once cost 4.3 GB of memory (tokenized whole) before it was refused.
MAX_LINE_CHARS = 100_000
MAX_DATA_BYTES = 256 * 1024 * 1024


def _parse_lines(lines: list[str], where: str, id_prefix: str) -> list[Problem]:
    problems = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        loc = f"{where}:{number}"
        if len(line) > MAX_LINE_CHARS:
            raise InputError(f"{loc} is {len(line):,} characters long; a line of --data may have at most "
                             f"{MAX_LINE_CHARS:,}", fix="fix or remove that line of --data")
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{loc} is not valid JSON ({e.msg})",
                             fix="fix or remove that line of --data") from e
        except RecursionError as e:
            raise InputError(f"{loc} is nested deeper than JSON can be read here",
                             fix="fix or remove that line of --data") from e
        if (not isinstance(row, dict) or not isinstance(row.get("question"), str)
                or not isinstance(row.get("answer"), str)):
            raise InputError(f"{loc} lacks string fields 'question' and 'answer'",
                             fix="use the GSM8K JSONL layout")
        try:
            gold = parse_gold(row["answer"])
        except ValueError as e:
            raise InputError(f"{loc}: the answer has {e}", fix="end the answer with a line '#### N'") from e
        problems.append(Problem(id=f"{id_prefix}:{number}", line=number, question=row["question"].strip(),
                                gold=gold))
    if not problems:
        raise InputError(f"{where} holds no problems", fix="pass a GSM8K JSONL file with at least one line")
    return problems


def _read_file(path: Path, what: str) -> bytes:
    """The bytes of a regular file, or a one-line InputError saying what ``path`` is instead."""
    why = why_not_a_file(path)  # /dev/null, a FIFO, a socket: reading one would give nothing or block
    if why == "does not exist":
        raise InputError(f"{what} {path} does not exist",
                         fix="pass a GSM8K JSONL file, 'demo', gsm8k:test, gsm8k:train or hf:openai/gsm8k")
    if why is not None and why.endswith(NOT_REGULAR):  # 'is a FIFO (named pipe), not a regular file'
        raise InputError(f"{what} {path} is not a regular file",
                         fix=f"it {why.removesuffix(NOT_REGULAR)}: pass a GSM8K JSONL file")
    if why is not None:
        raise InputError(f"{what} {path} {why}", fix="pass a GSM8K JSONL file")
    try:
        size = path.stat().st_size
        if size > MAX_DATA_BYTES:
            raise InputError(f"{what} {path} is {size / 2**20:,.0f} MiB; --data files may have at most "
                             f"{MAX_DATA_BYTES // 2**20} MiB", fix="split it, or pass a smaller file")
        return path.read_bytes()
    except OSError as e:
        raise InputError(f"{what} {path} cannot be read ({e.strerror or e})",
                         fix="check its permissions") from e


def _dataset_from_bytes(raw: bytes, path: Path, id_prefix: str, source: str) -> Dataset:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"--data {path} is not UTF-8 text", fix="pass a GSM8K JSONL file") from e
    # JSONL lines end at "\n" only: str.splitlines also splits at U+2028, U+0085..., which are valid raw
    # inside a JSON string, and would shift every FILE:LINE id after them
    problems = _parse_lines(text.split("\n"), str(path), id_prefix)
    return Dataset(source=source, sha256=hashlib.sha256(raw).hexdigest(), problems=problems)


def load_jsonl(path: str | Path) -> Dataset:
    path = Path(path).expanduser()
    if path.is_dir():  # the official checkout layout: grade_school_math/data/test.jsonl
        for candidate in (path / "test.jsonl", path / "grade_school_math" / "data" / "test.jsonl",
                          path / "data" / "test.jsonl"):
            if candidate.is_file():
                path = candidate
                break
        else:
            raise InputError(f"--data {path} is a directory without test.jsonl",
                             fix="pass the JSONL file itself")
    raw = _read_file(path, "--data")
    return _dataset_from_bytes(raw, path, path.stem, str(path.resolve()))


def _restore_hint(path: Path) -> str:
    return f"restore {path}: reinstall petals-ops (in a source checkout: git checkout -- that file)"


def load_named(name: str) -> Dataset:
    """A registered set (``gsm8k:test``, ``gsm8k:train``, alias ``gsm8k``) after checking its sha256."""
    name = canonical_name(name)
    entry = DATASETS.get(name)
    if entry is None:
        raise InputError(f"--data {name} is not a known dataset name",
                         fix=f"use one of: {', '.join(known_names())}, "
                             "a JSONL path, or hf:openai/gsm8k[:split]")
    try:
        raw = _read_file(entry.path, f"--data {name}: the packaged file")
    except InputError as e:
        raise InputError(e.message, fix=_restore_hint(entry.path)) from e
    actual = hashlib.sha256(raw).hexdigest()
    if actual != entry.sha256:
        raise InputError(f"the packaged copy of {name} is modified "
                         f"({entry.path} has sha256 {actual[:16]}..., "
                         f"not the registered {entry.sha256[:16]}...)", fix=_restore_hint(entry.path))
    return _dataset_from_bytes(raw, entry.path, entry.id_prefix, name)


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
        raise OpsError(f"reading {local} needs pyarrow",
                       fix="pip install pyarrow, or pass --data PATH of a JSONL file") from e
    table = pq.read_table(local).to_pylist()
    lines = [json.dumps({"question": r["question"], "answer": r["answer"]}) for r in table]
    problems = _parse_lines(lines, f"{spec}", f"hf-{split}")
    return Dataset(source=spec, sha256=hashlib.sha256(Path(local).read_bytes()).hexdigest(),
                   problems=problems)


def load_dataset(spec: str | None) -> Dataset:
    """What ``--data`` names: ``demo`` (the shipped demo set, the default); a packaged set by name
    (``gsm8k:test``, ``gsm8k:train``, ``gsm8k`` = ``gsm8k:test``, anything registered with
    ``register_dataset``), sha256-checked; ``hf:owner/name[:split]``; or a path (a JSONL file or an
    official checkout directory). Names win over same-named paths; an unknown ``family:split`` that is
    not an existing path is an error listing the known names.
    """
    spec = (spec or "demo").strip()
    if spec.startswith(HF_PREFIX):
        return load_hub(spec)
    if spec in DATASETS or spec in ALIASES:
        return load_named(spec)
    if NAME_RE.fullmatch(spec) and not Path(spec).expanduser().exists():
        return load_named(spec)  # raises: unknown name, listing the known ones
    return load_jsonl(spec)


def select(problems: list[Problem], *, offset: int = 0, limit: int | None = None, sample: int | None = None,
           sample_seed: int = 0) -> list[Problem]:
    """``--offset`` then ``--sample`` (a seeded random subset, kept in file order) then ``--limit``."""
    if offset < 0 or (limit is not None and limit < 1) or (sample is not None and sample < 1):
        raise InputError("--offset must be >= 0 and --limit/--sample >= 1", fix="check the selection options")
    chosen = problems[offset:]
    if not chosen:
        raise InputError(f"--offset {offset} skips all {len(problems)} problems",
                         fix=f"use --offset below {len(problems)}")
    if sample is not None and sample < len(chosen):
        keep = sorted(random.Random(sample_seed).sample(range(len(chosen)), sample))
        chosen = [chosen[i] for i in keep]
    if limit is not None:
        chosen = chosen[:limit]
    return chosen
