"""BEiT/iBOT-style blockwise masks on the patch grid, drawn in the input pipeline (numpy).

A mask is a bool [gh, gw] grid (True = the student sees the mask token there). It is built from
rectangular blocks: each block covers at least `min_block` patches, has an aspect ratio h/w
log-uniform in (min_aspect, 1 / min_aspect), and is placed at random; blocks are added until the
target number of masked patches is reached (or no block fits any more).

Example on the 16x8 grid of a 256x128 crop with ratio 0.25 (32 patches), '#' = masked:
    ........
    ..####..
    ..####..
    ..####..   one 3x4 block, then a 4x5 block clipped by what is already masked, ...
"""

from __future__ import annotations

import math

import numpy as np


def _add_block(mask: np.ndarray, rng: np.random.Generator, max_new: int, min_block: int,
               log_aspect: tuple[float, float], attempts: int = 10) -> int:
    """Masks one random block adding between 1 and `max_new` patches; returns how many."""
    gh, gw = mask.shape
    for _ in range(attempts):
        area = rng.uniform(min_block, max(min_block, max_new))
        aspect = math.exp(rng.uniform(*log_aspect))
        h = int(round(math.sqrt(area * aspect)))
        w = int(round(math.sqrt(area / aspect)))
        if not (1 <= h < gh and 1 <= w < gw) or h * w < min_block:
            continue  # does not fit, or rounding made it smaller than a block may be
        top, left = rng.integers(0, gh - h + 1), rng.integers(0, gw - w + 1)
        window = mask[top:top + h, left:left + w]
        new = int(h * w - window.sum())
        if 0 < new <= max_new:
            window[:] = True
            return new
    return 0


def block_mask(grid: tuple[int, int], num_masked: int, rng: np.random.Generator,
               min_block: int = 4, min_aspect: float = 0.3) -> np.ndarray:
    """bool [gh, gw] with (up to) `num_masked` patches masked in blocks."""
    mask = np.zeros(grid, bool)
    log_aspect = (math.log(min_aspect), math.log(1.0 / min_aspect))
    count = 0
    while count < num_masked:
        added = _add_block(mask, rng, num_masked - count, min_block, log_aspect)
        if added == 0:
            break
        count += added
    return mask


def draw_mask_ratio(rng: np.random.Generator, ratio: float, ratio_var: float,
                    masked_fraction: float) -> float:
    """Per-image masking ratio: U(ratio - var, ratio + var) for a `masked_fraction` of the
    images, 0 for the others (iBOT: 0.3 +- 0.2 on about half of the images)."""
    if rng.random() >= masked_fraction:
        return 0.0
    return float(rng.uniform(ratio - ratio_var, ratio + ratio_var)) if ratio_var else ratio


def image_mask(grid: tuple[int, int], rng: np.random.Generator, ratio: float = 0.3,
               ratio_var: float = 0.2, masked_fraction: float = 0.5, min_block: int = 4,
               min_aspect: float = 0.3) -> np.ndarray:
    """The mask of one student global crop: bool [gh * gw] in row-major patch order."""
    r = draw_mask_ratio(rng, ratio, ratio_var, masked_fraction)
    num = int(round(r * grid[0] * grid[1]))
    return block_mask(grid, num, rng, min_block, min_aspect).reshape(-1)
