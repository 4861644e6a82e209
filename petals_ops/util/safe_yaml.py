"""YAML from users (an inventory, a sweep spec) parsed with bounds: ``yaml.safe_load`` builds whatever
aliases expand to, so a few lines can stand for billions of values (a "billion laughs" alias bomb) or a
structure that contains itself; these are refused in one line before anything is built."""

from __future__ import annotations

from petals_ops.util.errors import InputError

# What a document may expand to: an inventory of 1,000 hosts is about 30,000 values.
MAX_YAML_VALUES = 200_000
MAX_YAML_DEPTH = 64


def _yaml_children(node) -> list:
    import yaml

    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def check_size(root, what: str) -> None:
    """Refuse a composed YAML document whose expansion (aliases counted each time they are used) exceeds
    MAX_YAML_VALUES values or MAX_YAML_DEPTH levels, or that refers to itself. Iterative and memoised:
    linear in the document's size, whatever it expands to. ``what`` names it: 'inventory PATH'."""
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
                raise InputError(f"{what} expands to more than {MAX_YAML_VALUES:,} values "
                                 "(YAML aliases repeated inside aliases)", fix=fix)
        elif id(child) in on_path:
            raise InputError(f"{what}: a YAML alias at line {child.start_mark.line + 1} "
                             "refers to a value that contains it (a recursive structure)", fix=fix)
        elif id(child) not in size:
            if len(stack) >= MAX_YAML_DEPTH:
                raise InputError(f"{what} nests deeper than {MAX_YAML_DEPTH} levels "
                                 f"(line {child.start_mark.line + 1})", fix="flatten the structure")
            on_path.add(id(child))
            stack.append((child, iter(_yaml_children(child))))


def parse(text: str, what: str):
    """``yaml.safe_load`` with bounds: the document is composed, checked by :func:`check_size`, then
    built. Returns (data, composed root node, for line maps). yaml.YAMLError for bad syntax."""
    import yaml

    loader = yaml.SafeLoader(text)
    try:
        try:
            root = loader.get_single_node()
        except RecursionError:  # the composer recurses once per nesting level
            raise InputError(f"{what} nests deeper than {MAX_YAML_DEPTH} levels",
                             fix="flatten the structure") from None
        if root is None:
            return None, None
        check_size(root, what)
        return loader.construct_document(root), root
    finally:
        loader.dispose()
