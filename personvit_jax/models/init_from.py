"""Weight surgery: putting arrays from another run or a converted checkpoint into a model.

Pure functions of parameter trees (reading the files is the caller's job, `inference.py`):
the pretrained backbone into a new model (`merge_backbone`), a pretraining run's projection
head into a new pretraining model (`transfer_head`), and position embeddings between patch
grids (`resize_pos_embed_tokens`, `stored_grid`). `init_from` of both training stages and
`tools/convert` use them.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import jax
import numpy as np

from personvit_jax import trees
from personvit_jax.models.vit import resize_pos_embed

# Backbone arrays a new model may lack or add: the mask token of pretraining, TransReID's SIE.
OPTIONAL_BACKBONE = ("mask_token", "sie_embed")


def stored_grid(num_patches: int, expected: Optional[Sequence[int]] = None) -> tuple[int, int]:
    """Grid of a stored position embedding from its patch count: `expected` (e.g. the grid the
    checkpoint's config or image size and stride give, such as TransReID's 21x10 at 256x128 with
    stride 12) when its size matches, else height = 2 x width (person crops, e.g. 16x8 at
    256x128) when that fits, else square (e.g. 14x14 at 224x224)."""
    if expected is not None and int(expected[0]) * int(expected[1]) == num_patches:
        return int(expected[0]), int(expected[1])
    w = int(round((num_patches / 2) ** 0.5))
    if 2 * w * w == num_patches:
        return 2 * w, w
    s = int(round(num_patches ** 0.5))
    if s * s == num_patches:
        return s, s
    raise ValueError(f"cannot infer the grid of a stored pos_embed with {num_patches} patch "
                     "tokens (neither the expected grid "
                     f"{tuple(expected) if expected is not None else None}, nor h = 2w, nor square)")


def resize_pos_embed_tokens(pos_1nd: np.ndarray, new_grid: Sequence[int],
                            old_grid: Optional[Sequence[int]] = None) -> np.ndarray:
    """[1, 1 + h*w, D] (CLS first) -> [1, 1 + h'*w', D] for `new_grid` = (h', w'), bilinearly
    (as PersonViT / TransReID load weights); the stored grid (h, w) is `old_grid` when it fits
    the token count, else inferred (`stored_grid`)."""
    d = pos_1nd.shape[-1]
    h, w = stored_grid(pos_1nd.shape[1] - 1, old_grid)
    grid = resize_pos_embed(jax.numpy.asarray(pos_1nd[0, 1:]).reshape(h, w, d), new_grid)
    return np.concatenate([pos_1nd[:, :1], np.asarray(grid).reshape(1, -1, d)], axis=1)


def merge_backbone(params: dict, backbone: dict, pos_grid: Sequence[int], source: str,
                   stored_pos_grid: Optional[Sequence[int]] = None,
                   log: Callable[[str], None] = print) -> dict:
    """`params` with params['backbone'] replaced by `backbone` (pos_embed resized from
    `stored_pos_grid` when the grid differs; the JPM block, if any, starts as a copy of the last
    block). Missing or mis-shaped arrays are errors naming them and `source`; the new model's
    heads keep their fresh initialisation. `pos_grid` = the new model's config.model.pos_grid."""
    target = trees.flatten(params["backbone"])
    loaded = trees.flatten(backbone)
    d = trees.diff(trees.shapes(loaded), trees.shapes(target))
    lacking = [k for k in d.missing if k not in OPTIONAL_BACKBONE]
    if lacking:
        raise ValueError(f"{source}: backbone lacks {lacking} (different model size or depth?)")
    new = dict(target)
    mismatched = []
    for name, v in loaded.items():
        if name not in target:
            continue
        t = target[name]
        if name == "pos_embed" and np.shape(v) != np.shape(t):
            v = resize_pos_embed_tokens(np.asarray(v), tuple(pos_grid), stored_pos_grid)
            log(f"init_from: resized pos_embed {np.shape(loaded[name])} -> {np.shape(t)}")
        if np.shape(v) != np.shape(t):
            mismatched.append(f"{name}: checkpoint {tuple(np.shape(v))} vs model "
                              f"{tuple(np.shape(t))}")
            continue
        new[name] = jax.numpy.asarray(v, t.dtype)
    if mismatched:
        raise ValueError(f"{source}: shape mismatch for " + "; ".join(mismatched))
    out = dict(params, backbone=jax.tree.unflatten(jax.tree.structure(params["backbone"]),
                                                   [new[k] for k in target]))
    if "jpm" in params:
        depth = sum(1 for k in backbone if k.startswith("blocks_"))
        out["jpm"] = dict(params["jpm"], block=backbone[f"blocks_{depth - 1}"])
        log(f"init_from: JPM block initialised from blocks_{depth - 1}")
    log(f"init_from: loaded {len(loaded) - len(d.unexpected)} backbone arrays from {source}"
        + (f"; ignored {list(d.unexpected)}" if d.unexpected else "")
        + (f"; kept fresh {list(d.missing)}" if d.missing else ""))
    return out


def transfer_head(fresh_head: dict, head: Optional[dict], source: str,
                  log: Callable[[str], None] = print) -> dict:
    """The projection head to continue pretraining with: `head` (a pretraining run's TEACHER
    head, or iBOT/DINO weights converted with --heads) when it has exactly the arrays and shapes
    of `fresh_head`; else `fresh_head`, and the log says why."""
    if head is None:
        log(f"init_from: {source} has no projection head; the head starts fresh")
        return fresh_head
    d = trees.diff(trees.shapes(trees.flatten(head)), trees.shapes(trees.flatten(fresh_head)))
    if d:
        log(f"init_from: the head of {source} does not match config.head "
            f"({d.problems()[:5]}); the head starts fresh")
        return fresh_head
    log(f"init_from: projection head loaded from {source} (teacher head)")
    return jax.tree.map(lambda f, h: np.asarray(h, np.asarray(f).dtype), fresh_head, head)
