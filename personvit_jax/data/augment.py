"""Per-image augmentations in numpy/PIL (run in the input pipeline, on host CPUs).

Every random draw comes from the `np.random.Generator` passed in, which the pipeline seeds from
(seed, step, position in the global batch): the same image gets the same augmentation whatever
the number of processes or workers, and a resumed run repeats the exact batches.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from PIL import Image


def load_rgb(path: str) -> Image.Image:
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, SyntaxError) as e:
        raise OSError(f"cannot read image {path}: {e}") from e


def normalize(img_hwc_uint8: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    x = img_hwc_uint8.astype(np.float32) * (1.0 / 255.0)
    return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def random_erasing(img_hwc: np.ndarray, rng: np.random.Generator, prob: float,
                   area: Sequence[float] = (0.02, 1 / 3), aspect: Sequence[float] = (0.3, 1 / 0.3),
                   attempts: int = 10) -> np.ndarray:
    """Erases one random rectangle with per-pixel N(0, 1) noise (timm 'pixel' mode, the
    normalised-image space), area fraction in `area`, log-uniform aspect in `aspect`."""
    if rng.random() >= prob:
        return img_hwc
    h, w, c = img_hwc.shape
    for _ in range(attempts):
        target = rng.uniform(*area) * h * w
        ar = math.exp(rng.uniform(math.log(aspect[0]), math.log(aspect[1])))
        eh, ew = int(round(math.sqrt(target * ar))), int(round(math.sqrt(target / ar)))
        if eh < h and ew < w:
            top, left = rng.integers(0, h - eh + 1), rng.integers(0, w - ew + 1)
            img_hwc = img_hwc.copy()
            img_hwc[top:top + eh, left:left + ew] = rng.standard_normal((eh, ew, c), np.float32)
            break
    return img_hwc


def reid_train_transform(img: Image.Image, rng: np.random.Generator, cfg) -> np.ndarray:
    """TransReID train transform: resize (bicubic) -> flip -> pad + random crop -> normalise ->
    random erasing. Returns float32 [H, W, 3]."""
    h, w = cfg.image_size
    x = np.asarray(img.resize((w, h), Image.BICUBIC))
    if rng.random() < cfg.flip_prob:
        x = x[:, ::-1]
    if cfg.pad:
        p = cfg.pad
        x = np.pad(x, ((p, p), (p, p), (0, 0)))  # zero (black) padding, as torchvision's Pad
        top, left = rng.integers(0, 2 * p + 1), rng.integers(0, 2 * p + 1)
        x = x[top:top + h, left:left + w]
    x = normalize(x, cfg.mean, cfg.std)
    return random_erasing(x, rng, cfg.erasing_prob)


def reid_test_transform(img: Image.Image, cfg) -> np.ndarray:
    """Test transform: resize (bilinear) -> normalise. float32 [H, W, 3]."""
    h, w = cfg.image_size
    return normalize(np.asarray(img.resize((w, h), Image.BILINEAR)), cfg.mean, cfg.std)
