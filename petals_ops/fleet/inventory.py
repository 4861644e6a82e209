"""The fleet's inventory file: YAML read with bounds, then validated by :mod:`petals_ops.fleet.schema`.

Layout (see ``deploy/petals-ops.example.yaml``)::

    ssh_config: ~/.ssh/config          # optional; where host aliases are resolved
    known_hosts: ~/.ssh/known_hosts    # optional; host keys are checked against it
    server: {...}                      # the server spec every host gets (defaults below)
    hosts:
      a10-1: {address: 203.0.113.7, user: ubuntu, gpus: 1, server: {block_indices: ["0:14"]}}

This module owns the file: its size and depth bounds and the line of each field, so an error names the
field path and its line. The values and their checks live in the schema. Nothing here imports more than
pydantic and PyYAML.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import ValidationError

from petals_ops.fleet.schema import Inventory, first_error
from petals_ops.util.errors import InputError
from petals_ops.util.fsutil import why_not_a_file
from petals_ops.util import safe_yaml

DEFAULT_INVENTORY = "petals-ops.yaml"


def _line_map(root) -> dict[tuple, int]:
    """Map each YAML key path of the composed ``root`` node to its 1-based line, for error messages."""
    import yaml

    lines: dict[tuple, int] = {}

    def walk(node, path):
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if not isinstance(k, yaml.ScalarNode):  # a complex key (? [a, b]) names no field
                    continue
                key = (*path, k.value)
                lines[key] = k.start_mark.line + 1
                walk(v, key)
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                lines[(*path, i)] = v.start_mark.line + 1
                walk(v, (*path, i))

    if root is not None:
        walk(root, ())
    return lines


def _parse_yaml(text: str, path: Path):
    """The inventory's YAML, parsed with bounds (util.safe_yaml): (data, composed root node)."""
    return safe_yaml.parse(text, f"inventory {path}")


def load_inventory(path: str | os.PathLike | None = None) -> Inventory:
    """Read and validate an inventory. ``None``: ``./petals-ops.yaml`` if present, else an empty inventory."""
    import yaml

    explicit = path is not None
    path = Path(path if explicit else os.environ.get("PETALS_OPS_INVENTORY", DEFAULT_INVENTORY)).expanduser()
    why = why_not_a_file(path)
    if why is not None:
        if explicit:
            raise InputError(f"inventory {path} {why}",
                             fix="pass --inventory PATH (see deploy/petals-ops.example.yaml)")
        return Inventory(source=None)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
        raise InputError(f"inventory {path} cannot be read ({reason})",
                         fix="check the file's permissions and that it is a UTF-8 YAML file") from None
    try:
        data, root = _parse_yaml(text, path)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise InputError(f"inventory {path} is not valid YAML{where} ({getattr(e, 'problem', e)})",
                         fix="fix the YAML syntax") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InputError(f"inventory {path}: the top level must be a mapping (hosts:, server:)",
                         fix="see deploy/petals-ops.example.yaml")
    try:
        inv = Inventory.model_validate(data)
    except ValidationError as e:
        raise InputError(f"inventory {path}: {first_error(e, _line_map(root))}",
                         fix="see deploy/petals-ops.example.yaml for the fields") from None
    inv.source = str(path)
    lines = _line_map(root)
    for name in inv.hosts:  # overrides are checked combined with the defaults, now rather than at use
        inv.server_for(name, _lines=lines)
    return inv
