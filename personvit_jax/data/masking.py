"""iBOT's blockwise masks on the patch grid (BEiT's generator), drawn in the input pipeline.

A mask is a bool [gh, gw] grid (True = the student sees the mask token there). Blocks are added
until at least ratio x gh x gw patches are masked (or no block adds any in 10 tries): each
block has a target area uniform in (min_block, patches still wanted), an aspect ratio h/w
log-uniform in (min_aspect, 1 / min_aspect), h = round(sqrt(area x aspect)),
w = round(sqrt(area / aspect)), must be smaller than the grid on both sides, and is kept only if
it adds between 1 and the patches still wanted. iBOT's lower bound is min_block =
(min(gh, gw) // 3) ** 2 (4 on the 16x8 grid of a 256x128 crop; 1 on 8x4).

Example on the 16x8 grid with ratio 0.25 (32 patches), '#' = masked:
    ........
    ..####..
    ..####..
    ..####..   one 3x4 block, then a 4x5 block clipped by what is already masked, ...
"""

from __future__ import annotations

import math

import numpy as np


def ibot_min_block(grid: tuple[int, int]) -> int:
    """iBOT's smallest target block area on a grid: (min(gh, gw) // 3) ** 2."""
    return (min(grid) // 3) ** 2


def _add_block(mask: np.ndarray, rng: np.random.Generator, max_new: float, min_block: float,
               log_aspect: tuple[float, float], attempts: int = 10) -> int:
    """Masks one random block adding between 1 and `max_new` patches; returns how many
    (0 if no try fitted)."""
    gh, gw = mask.shape
    for _ in range(attempts):
        area = rng.uniform(*sorted((min_block, max_new)))  # as random.uniform, either order
        aspect = math.exp(rng.uniform(*log_aspect))
        h = int(round(math.sqrt(area * aspect)))
        w = int(round(math.sqrt(area / aspect)))
        if not (h < gh and w < gw):
            continue
        top, left = rng.integers(0, gh - h + 1), rng.integers(0, gw - w + 1)
        window = mask[top:top + h, left:left + w]
        new = int(h * w - window.sum())
        if 0 < new <= max_new:
            window[:] = True
            return new
    return 0


def block_mask(grid: tuple[int, int], num_masked: float, rng: np.random.Generator,
               min_block: float = 0, min_aspect: float = 0.3) -> np.ndarray:
    """bool [gh, gw] with about `num_masked` (a float, as iBOT's ratio x gh x gw) patches masked
    in blocks; `min_block` 0 = iBOT's `ibot_min_block(grid)`."""
    mask = np.zeros(grid, bool)
    log_aspect = (math.log(min_aspect), math.log(1.0 / min_aspect))
    min_block = min_block or ibot_min_block(grid)
    count = 0
    while count < num_masked:
        added = _add_block(mask, rng, num_masked - count, min_block, log_aspect)
        if added == 0:
            break
        count += added
    return mask


def draw_mask_ratio(rng: np.random.Generator, ratio: float, ratio_var: float,
                    masked_fraction: float) -> float:
    """Per-crop masking ratio: U(ratio - var, ratio + var) for a `masked_fraction` of the
    crops, 0 for the others (iBOT's pred_ratio [0, 0.3], pred_ratio_var [0, 0.2]: one of the
    two picked at random for each crop)."""
    if rng.random() >= masked_fraction:
        return 0.0
    return float(rng.uniform(ratio - ratio_var, ratio + ratio_var)) if ratio_var else ratio


def image_mask(grid: tuple[int, int], rng: np.random.Generator, ratio: float = 0.3,
               ratio_var: float = 0.2, masked_fraction: float = 0.5, min_block: float = 0,
               min_aspect: float = 0.3) -> np.ndarray:
    """The mask of one student global crop: bool [gh * gw] in row-major patch order."""
    r = draw_mask_ratio(rng, ratio, ratio_var, masked_fraction)
    return block_mask(grid, r * grid[0] * grid[1], rng, min_block, min_aspect).reshape(-1)
