"""Batched, sharded feature extraction over a query or gallery split."""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np
from jax.sharding import Mesh

from personvit_jax.data.layouts import Split
from personvit_jax.data.pipeline import eval_iterator
from personvit_jax.training.sharding import to_global


def extract_features(embed_fn: Callable[[jax.Array, jax.Array], jax.Array], split: Split,
                     data_cfg, mesh: Mesh, batch_size: int) -> np.ndarray:
    """Features [N, D] of every image of `split`, in split order.

    `embed_fn(images [B, H, W, 3], camids [B]) -> [B, D]` must return a replicated array (each
    process then holds all rows). The split is read in global batches of `batch_size`; the last
    one is padded, and the padding is cut off here.
    """
    out = []
    it = eval_iterator(split, data_cfg, batch_size, jax.process_index(), jax.process_count())
    for batch in it:
        batch.pop("valid")
        g = to_global(batch, mesh)
        out.append(np.asarray(embed_fn(g["images"], g["camids"])))
    return np.concatenate(out)[: len(split)]
