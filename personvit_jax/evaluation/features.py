"""Batched, sharded feature extraction over a split, and a progress line for it."""

from __future__ import annotations

import sys
import time
from typing import Callable, Optional

import jax
import numpy as np
from jax.sharding import Mesh

from personvit_jax.data.layouts import Split
from personvit_jax.data.pipeline import eval_iterator
from personvit_jax.training.sharding import to_global


def extract_features(embed_fn: Callable[[jax.Array, jax.Array], jax.Array], split: Split,
                     preprocessing, mesh: Mesh, batch_size: int, num_workers: int = 0,
                     prefetch: int = 2,
                     progress: Optional[Callable[[int, int], None]] = None) -> np.ndarray:
    """Features [N, D] of every image of `split`, in split order.

    `embed_fn(images [B, H, W, 3], camids [B]) -> [B, D]` must return a replicated array (each
    process then holds all rows); `preprocessing` has image_size, mean and std
    (`inference.Preprocessing`). The split is read in global batches of `batch_size`; the last
    one is padded, and the padding is cut off here. `progress(done, total)` is called after
    each batch (e.g. `progress_printer`).
    """
    out = []
    it = eval_iterator(split, preprocessing, batch_size, jax.process_index(), jax.process_count(),
                       num_workers=num_workers, prefetch=prefetch)
    for batch in it:
        batch.pop("valid")
        g = to_global(batch, mesh)
        out.append(np.asarray(embed_fn(g["images"], g["camids"])))
        if progress is not None:
            progress(min(len(out) * batch_size, len(split)), len(split))
    return np.concatenate(out)[: len(split)]


def progress_printer(label: str, stream=None) -> Callable[[int, int], None]:
    """(done, total) -> one self-overwriting progress line with rate and ETA on stderr."""
    stream = stream or sys.stderr
    t0 = time.perf_counter()

    def show(done: int, total: int) -> None:
        dt = max(time.perf_counter() - t0, 1e-9)
        eta = (total - done) * dt / max(done, 1)
        bar = "#" * int(30 * done / max(total, 1))
        stream.write(f"\r{label} [{bar:<30}] {done}/{total} images, {done / dt:.1f} img/s, "
                     f"ETA {eta:.0f} s")
        if done >= total:
            stream.write("\n")
        stream.flush()
    return show


def effective_rank(features_nd: np.ndarray) -> float:
    """exp(entropy of the normalised singular values) of a feature matrix [N, D] after removing
    its mean (Roy & Vetterli 2007; RankMe without the shared direction, which retrieval
    ignores): about D for features that spread over every direction, 1 for features that vary
    along one only (dimensional collapse)."""
    x = np.asarray(features_nd, np.float64)
    s = np.linalg.svd(x - x.mean(0), compute_uv=False)
    p = s / max(s.sum(), 1e-30) + 1e-12
    return float(np.exp(-np.sum(p * np.log(p))))
