"""Which model a command talks about: its name or local path, DHT prefix and number of blocks.

Petals announces block ``i`` of a model under the DHT key ``{dht_prefix}.{i}``. A hub name maps to a
prefix by Petals' own rule for BLOOM (``bigscience/bloom`` -> ``bigscience/bloom-petals``); a local
directory (the tiny model) records its prefix in ``petals_ops.json``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from petals_ops.util.errors import InputError

MODEL_META = "petals_ops.json"  # what a model directory records besides the checkpoint (its DHT prefix)

# Architectures petals-ops knows without downloading a config (layers, hidden size, heads, vocab).
KNOWN_MODELS = {
    "bigscience/bloom": {"num_blocks": 70, "hidden_size": 14336, "n_head": 112, "vocab_size": 250880},
    "bigscience/bloomz": {"num_blocks": 70, "hidden_size": 14336, "n_head": 112, "vocab_size": 250880},
    "bigscience/bloom-7b1": {"num_blocks": 30, "hidden_size": 4096, "n_head": 32, "vocab_size": 250880},
    "bigscience/bloom-560m": {"num_blocks": 24, "hidden_size": 1024, "n_head": 16, "vocab_size": 250880},
}
# The most blocks petals-ops accepts for a model, from any source (an option, a config.json, a DHT record):
# the largest open models have ~130 layers; a bigger count is a typo or a hostile record, and each block
# costs a DHT key in every walk (3,000,000 announced blocks once took 0.8 GB and a minute per walk).
MAX_BLOCKS = 1024
LEGACY_NAMES = {"bigscience/bloom-petals": "bigscience/bloom",
                "bigscience/bloomz-petals": "bigscience/bloomz"}


@dataclass(frozen=True)
class ModelRef:
    """A model as the swarm knows it. ``path`` is set when the checkpoint is on this machine."""

    name: str
    dht_prefix: str
    num_blocks: int | None
    path: str | None = None
    hidden_size: int | None = None

    def block_uids(self) -> list[str]:
        if self.num_blocks is None:
            raise InputError(f"the number of blocks of model {self.name} is unknown",
                             fix="pass --num-blocks N")
        return [f"{self.dht_prefix}.{i}" for i in range(self.num_blocks)]


def weights_sha256(directory: str | Path) -> str:
    """sha256 over the names and bytes of a checkpoint directory's files (weights, config, tokenizer; not
    petals_ops.json, which only describes the model): the identity of a local model in a run's config, so
    other weights under the same path are never mixed into one run."""
    h = hashlib.sha256()
    files = sorted(f for f in Path(directory).iterdir()
                   if f.is_file() and not f.name.startswith(".") and f.name != MODEL_META)
    for f in files:
        h.update(f"{f.name}\0{f.stat().st_size}\0".encode())
        with open(f, "rb") as stream:
            for chunk in iter(lambda stream=stream: stream.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def check_num_blocks(value: object, source: str, fix: str = "pass --num-blocks N") -> int:
    """``value`` as a block count (a whole number 1..MAX_BLOCKS), else an InputError naming ``source``."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_BLOCKS:
        shown = repr(value) if not isinstance(value, str) else repr(value[:40])
        raise InputError(f"{source} gives {shown} blocks, not a whole number from 1 to {MAX_BLOCKS}", fix=fix)
    return value


def is_model_dir(directory: str | Path) -> bool:
    """A checkpoint directory: a config.json and weights."""
    directory = Path(directory)
    return (directory / "config.json").is_file() and any(
        (directory / name).is_file()
        for name in ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")
    )


def dht_prefix_for(name: str) -> str:
    """Petals' rule for BLOOM models loaded from the hub (petals/models/bloom/config.py)."""
    return (name + "-petals").replace(".", "-")


def resolve_model(model: str, *, dht_prefix: str | None = None, num_blocks: int | None = None,
                  option: str = "--model") -> ModelRef:
    """Turn ``--model`` (a hub name or a local checkpoint directory) into a :class:`ModelRef`; errors name
    ``option``, the flag the user typed."""
    model = str(model).strip()
    if not model:
        raise InputError(f"{option} is empty",
                         fix="pass a hub name such as bigscience/bloom or a model directory")
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir() or not is_model_dir(path):
            raise InputError(
                f"{option} {model} is not a model directory (no config.json with weights)",
                fix="pass a directory made by 'petals-ops model tiny DIR' or a hub name",
            )
        config = _read_json_object(path / "config.json", option, model)
        meta_file = path / MODEL_META
        meta = _read_json_object(meta_file, option, model) if meta_file.is_file() else {}
        prefix = dht_prefix or meta.get("dht_prefix")
        if not prefix:
            raise InputError(f"model directory {model} records no DHT prefix", fix="pass --dht-prefix NAME")
        if not isinstance(prefix, str):
            raise InputError(f"{meta_file}: dht_prefix {prefix!r:.40} is not a string",
                             fix="re-create the model directory, or pass --dht-prefix NAME")
        if not num_blocks:
            layers = config.get("n_layer", config.get("num_hidden_layers"))
            num_blocks = check_num_blocks(layers, f"{path / 'config.json'} (n_layer)",
                                          fix="re-create the model directory, or pass --num-blocks N")
        hidden = config.get("hidden_size")
        return ModelRef(
            name=str(path.resolve()),
            dht_prefix=prefix,
            num_blocks=check_num_blocks(num_blocks, "--num-blocks"),
            path=str(path.resolve()),
            hidden_size=hidden if isinstance(hidden, int) and not isinstance(hidden, bool) and hidden > 0
            else None,
        )
    if "/" not in model and not dht_prefix:
        raise InputError(
            f"{option} {model} is neither a directory nor a hub name (owner/name)",
            fix=f"check the path, or pass e.g. {option} bigscience/bloom",
        )
    name = LEGACY_NAMES.get(model, model)
    known = KNOWN_MODELS.get(name, {})
    num_blocks = num_blocks or known.get("num_blocks")
    return ModelRef(
        name=name,
        dht_prefix=dht_prefix or dht_prefix_for(name),
        num_blocks=None if num_blocks is None else check_num_blocks(num_blocks, "--num-blocks"),
        hidden_size=known.get("hidden_size"),
    )


def _read_json_object(path: Path, option: str, model: str) -> dict:
    """A model directory's JSON file as a dict; a one-line InputError for anything else (unreadable,
    not JSON, nested past Python's recursion limit, or a list where an object belongs)."""
    try:
        data = json.loads(path.read_text())
    except (ValueError, OSError, RecursionError) as e:
        reason = "nested too deeply" if isinstance(e, RecursionError) else str(e)
        raise InputError(f"{option} {model}: cannot read {path.name} ({reason})",
                         fix="re-create the model directory") from e
    if not isinstance(data, dict):
        raise InputError(f"{option} {model}: {path.name} holds a {type(data).__name__}, not a JSON object",
                         fix="re-create the model directory")
    return data
