"""The one tree-path convention of the project and the one tree-diff helper.

A leaf's name is its path joined by '/', e.g. 'params/backbone/blocks_0/attn/qkv/kernel', the
same whether the tree holds dicts, lists or namedtuples (optax states) or the dicts Orbax's
metadata reads them back as. Checkpoint checks, weight surgery, conversion and sharding rules
all speak in these names.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import numpy as np


def path_name(path) -> str:
    """'a/b/c' for a jax tree path (dict keys, attribute names, sequence indices)."""
    parts = []
    for p in path:
        for attr in ("key", "name", "idx"):
            if hasattr(p, attr):
                parts.append(str(getattr(p, attr)))
                break
    return "/".join(parts)


def flatten(tree: Any) -> dict[str, Any]:
    """{'a/b/c': leaf} in tree order."""
    return {path_name(p): leaf for p, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def unflatten(flat: Mapping[str, Any]) -> dict:
    """Nested dicts from {'a/b/c': leaf} (the inverse of `flatten` for dict trees)."""
    tree: dict = {}
    for name, leaf in flat.items():
        *parents, last = name.split("/")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = leaf
    return tree


def shapes(flat: Mapping[str, Any]) -> dict[str, tuple]:
    """{'a/b': shape} of a flat tree of arrays (or anything with .shape)."""
    return {k: tuple(np.shape(v)) for k, v in flat.items()}


@dataclasses.dataclass(frozen=True)
class TreeDiff:
    """How a tree `have` differs from a tree `want` (both {name: shape})."""

    missing: tuple[str, ...]  # in want only
    unexpected: tuple[str, ...]  # in have only
    mismatched: tuple[tuple[str, tuple, tuple], ...]  # (name, have shape, want shape)

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.mismatched)

    def problems(self, have: str = "checkpoint", want: str = "model") -> list[str]:
        """One line per difference, e.g. 'a/b: checkpoint (3,) vs model (4,)'."""
        return ([f"{k}: {have} {a} vs {want} {b}" for k, a, b in self.mismatched]
                + [f"{k}: only in the {want}" for k in self.missing]
                + [f"{k}: only in the {have}" for k in self.unexpected])


def diff(have: Mapping[str, tuple], want: Mapping[str, tuple]) -> TreeDiff:
    """Names and shapes of `have` against `want` ({name: shape} each, e.g. from `shapes`)."""
    common = sorted(set(have) & set(want))
    return TreeDiff(missing=tuple(sorted(set(want) - set(have))),
                    unexpected=tuple(sorted(set(have) - set(want))),
                    mismatched=tuple((k, tuple(have[k]), tuple(want[k])) for k in common
                                     if tuple(have[k]) != tuple(want[k])))
