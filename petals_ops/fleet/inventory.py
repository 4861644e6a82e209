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


# What an inventory may expand to. Aliases are shared by reference, so a few lines can stand for
# billions of values (a "billion laughs" alias bomb) that validation and the line map would then walk:
# an inventory of 1,000 hosts is about 30,000 values.
MAX_YAML_VALUES = 200_000
MAX_YAML_DEPTH = 64


def _yaml_children(node) -> list:
    import yaml

    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_yaml_size(root, path: Path) -> None:
    """Refuse a composed YAML document whose expansion (aliases counted each time they are used) exceeds
    MAX_YAML_VALUES values or MAX_YAML_DEPTH levels, or that refers to itself. Iterative and memoised:
    linear in the document's size, whatever it expands to."""
    fix = "write the values out instead of repeating aliases"
    size: dict[int, int] = {}
    on_path = {id(root)}
    stack = [(root, iter(_yaml_children(root)))]
    while stack:
        node, children = stack[-1]
        child = next(children, None)
        if child is None:
            stack.pop()
            on_path.discard(id(node))
            size[id(node)] = 1 + sum(size[id(c)] for c in _yaml_children(node))
            if size[id(node)] > MAX_YAML_VALUES:
                raise InputError(f"inventory {path} expands to more than {MAX_YAML_VALUES:,} values "
                                 "(YAML aliases repeated inside aliases)", fix=fix)
        elif id(child) in on_path:
            raise InputError(f"inventory {path}: a YAML alias at line {child.start_mark.line + 1} "
                             "refers to a value that contains it (a recursive structure)", fix=fix)
        elif id(child) not in size:
            if len(stack) >= MAX_YAML_DEPTH:
                raise InputError(f"inventory {path} nests deeper than {MAX_YAML_DEPTH} levels "
                                 f"(line {child.start_mark.line + 1})", fix="flatten the structure")
            on_path.add(id(child))
            stack.append((child, iter(_yaml_children(child))))


def _parse_yaml(text: str, path: Path):
    """``yaml.safe_load`` with bounds: the document is composed, checked by :func:`_check_yaml_size`, then
    built. Returns (data, composed root node for the line map)."""
    import yaml

    loader = yaml.SafeLoader(text)
    try:
        try:
            root = loader.get_single_node()
        except RecursionError:  # the composer recurses once per nesting level
            raise InputError(f"inventory {path} nests deeper than {MAX_YAML_DEPTH} levels",
                             fix="flatten the structure") from None
        if root is None:
            return None, None
        _check_yaml_size(root, path)
        return loader.construct_document(root), root
    finally:
        loader.dispose()


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
