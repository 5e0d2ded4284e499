"""Addressing a field of a scenario tree by path (``plants.<id>.utilisation_max_frac``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["item_key", "locate_path", "set_path"]

_POOL_FIELDS = {"region", "material", "initial_t", "reserve_t", "target_t", "max_t"}


def item_key(x: dict[str, Any]) -> str | None:
    """How list items are addressed: by ``id``, or a pool by ``region/material``."""
    if "id" in x:
        return str(x["id"])
    if "material" in x and set(x) <= _POOL_FIELDS:
        return f"{x.get('region', 'baotou')}/{x['material']}"
    return None


def locate_path(tree: Mapping[str, Any], path: str) -> tuple[Any, str]:
    """The mapping that holds the field a parameter path names, and the field's name.

    Paths address list items by id (``plants.<id>``) or, for pools, ``<region>/<material>``
    (``pools.baotou/concentrate.max_t``); ``KeyError`` names the part that does not exist.
    """
    *parents, last = path.split(".")
    node: Any = tree
    for part in parents:
        if isinstance(node, list):
            match = [x for x in node if isinstance(x, dict) and item_key(x) == part]
            if not match:
                keys = ", ".join(str(item_key(x)) for x in node)
                raise KeyError(f"no item {part!r} (known: {keys})")
            node = match[0]
        elif isinstance(node, Mapping):
            if part not in node:
                raise KeyError(f"no field {part!r} (known: {', '.join(map(str, node))})")
            node = node[part]
        else:
            raise KeyError(f"{part!r}: cannot descend into a scalar")
    if isinstance(node, list):
        raise KeyError("a path must end at a field, not at a list item")
    if not isinstance(node, Mapping):
        raise KeyError(f"{last!r}: cannot descend into a scalar")
    if last not in node:
        raise KeyError(f"no field {last!r} (known: {', '.join(map(str, node))})")
    return node, last


def set_path(tree: dict[str, Any], path: str, value: Any) -> None:
    """Set the scalar field ``path`` names; ``KeyError`` says why it cannot be set."""
    node, field = locate_path(tree, path)
    if isinstance(node[field], dict | list):
        raise KeyError(f"{field!r} is not a scalar field")
    node[field] = value
