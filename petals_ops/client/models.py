"""Which model a command talks about: its name or local path, DHT prefix and number of blocks.

Petals announces block ``i`` of a model under the DHT key ``{dht_prefix}.{i}``. A hub name maps to a
prefix by Petals' own rule for BLOOM (``bigscience/bloom`` -> ``bigscience/bloom-petals``); a local
directory (the tiny model) records its prefix in ``petals_ops.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from petals_ops.util.errors import InputError
from petals_ops.lab.tiny_model import MODEL_META, is_model_dir

# Architectures petals-ops knows without downloading a config (layers, hidden size, heads, vocab).
KNOWN_MODELS = {
    "bigscience/bloom": {"num_blocks": 70, "hidden_size": 14336, "n_head": 112, "vocab_size": 250880},
    "bigscience/bloomz": {"num_blocks": 70, "hidden_size": 14336, "n_head": 112, "vocab_size": 250880},
    "bigscience/bloom-7b1": {"num_blocks": 30, "hidden_size": 4096, "n_head": 32, "vocab_size": 250880},
    "bigscience/bloom-560m": {"num_blocks": 24, "hidden_size": 1024, "n_head": 16, "vocab_size": 250880},
}
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
        meta_file = path / MODEL_META
        try:
            config = json.loads((path / "config.json").read_text())
            meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
        except (ValueError, OSError) as e:
            raise InputError(f"{option} {model}: cannot read its config.json or {MODEL_META} ({e})",
                             fix="re-create the model directory") from e
        prefix = dht_prefix or meta.get("dht_prefix")
        if not prefix:
            raise InputError(f"model directory {model} records no DHT prefix", fix="pass --dht-prefix NAME")
        return ModelRef(
            name=str(path.resolve()),
            dht_prefix=prefix,
            num_blocks=num_blocks or config.get("n_layer") or config.get("num_hidden_layers"),
            path=str(path.resolve()),
            hidden_size=config.get("hidden_size"),
        )
    if "/" not in model and not dht_prefix:
        raise InputError(
            f"{option} {model} is neither a directory nor a hub name (owner/name)",
            fix=f"check the path, or pass e.g. {option} bigscience/bloom",
        )
    name = LEGACY_NAMES.get(model, model)
    known = KNOWN_MODELS.get(name, {})
    return ModelRef(
        name=name,
        dht_prefix=dht_prefix or dht_prefix_for(name),
        num_blocks=num_blocks or known.get("num_blocks"),
        hidden_size=known.get("hidden_size"),
    )
