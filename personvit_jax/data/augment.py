"""Per-image augmentations in numpy/PIL (run in the input pipeline, on host CPUs); the multi-crop
colour operations are drawn here and applied on the device (`color_augment`).

Every random draw comes from the `np.random.Generator` passed in, which the pipeline seeds from
(seed, step, position in the global batch): the same image gets the same augmentation whatever
the number of processes or workers, and a resumed run repeats the exact batches.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import numpy as np
from PIL import Image, ImageEnhance

from personvit_jax.data import color_augment


class CorruptImageError(ValueError):
    """An image file that cannot be decoded (or is not the expected format)."""


def load_rgb(path_or_file, name: str = "") -> Image.Image:
    """A file path, or a file object holding encoded bytes (then `name` names it in errors),
    decoded to RGB. Bytes that do not decode raise CorruptImageError naming the image."""
    try:
        with Image.open(path_or_file) as im:
            return im.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise CorruptImageError(f"cannot read image {name or path_or_file}: {e}") from e


def normalize(img_hwc_uint8: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 [H, W, C] -> float32 (x / 255 - mean) / std, as one multiply-add per value."""
    std = np.asarray(std, np.float32)
    scale, offset = 1.0 / (255.0 * std), -np.asarray(mean, np.float32) / std
    return np.asarray(img_hwc_uint8, np.float32) * scale + offset


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


def color_jitter(img: Image.Image, rng: np.random.Generator, brightness: float,
                 contrast: float, saturation: float, hue: float) -> Image.Image:
    """torchvision's ColorJitter on a PIL image, with the operations torchvision itself uses
    on PIL images (ImageEnhance brightness / contrast / colour in uint8, hue as a shift of the
    HSV hue byte): factors drawn uniformly in [1 - x, 1 + x] (hue: a shift in [-hue, hue] of a
    turn), applied in random order."""
    for op in rng.permutation(4):
        if op == 0 and brightness:
            img = ImageEnhance.Brightness(img).enhance(rng.uniform(1 - brightness, 1 + brightness))
        elif op == 1 and contrast:
            img = ImageEnhance.Contrast(img).enhance(rng.uniform(1 - contrast, 1 + contrast))
        elif op == 2 and saturation:
            img = ImageEnhance.Color(img).enhance(rng.uniform(1 - saturation, 1 + saturation))
        elif op == 3 and hue:
            hsv = np.array(img.convert("HSV"))
            hsv[..., 0] += np.uint8(int(round(rng.uniform(-hue, hue) * 255)) % 256)  # wraps
            img = Image.fromarray(hsv, "HSV").convert("RGB")
    return img


def reid_train_transform(img: Image.Image, rng: np.random.Generator, cfg) -> np.ndarray:
    """TransReID train transform: resize (bicubic) -> flip -> pad + random crop -> [colour
    jitter, off in the PersonViT recipe] -> normalise -> random erasing. float32 [H, W, 3]."""
    h, w = cfg.image_size
    x = np.asarray(img.resize((w, h), Image.BICUBIC))
    if rng.random() < cfg.flip_prob:
        x = x[:, ::-1]
    if cfg.pad:
        p = cfg.pad
        x = np.pad(x, ((p, p), (p, p), (0, 0)))  # zero (black) padding, as torchvision's Pad
        top, left = rng.integers(0, 2 * p + 1), rng.integers(0, 2 * p + 1)
        x = x[top:top + h, left:left + w]
    cj = cfg.get("color_jitter")
    if cj and cj.prob and rng.random() < cj.prob:
        x = np.asarray(color_jitter(Image.fromarray(np.ascontiguousarray(x)), rng,
                                    cj.brightness, cj.contrast, cj.saturation, cj.hue))
    x = normalize(x, cfg.mean, cfg.std)
    return random_erasing(x, rng, cfg.erasing_prob)


def reid_test_transform(img: Image.Image, cfg) -> np.ndarray:
    """Test transform: resize (bilinear) -> normalise. float32 [H, W, 3]."""
    h, w = cfg.image_size
    return normalize(np.asarray(img.resize((w, h), Image.BILINEAR)), cfg.mean, cfg.std)


# ---------------------------------------------------------------------------------------------
# Pretraining multi-crop (DINO/iBOT, person aspect ratio): 2 global + N local crops.
# ---------------------------------------------------------------------------------------------


def resized_crop_box(w: int, h: int, rng: np.random.Generator, scale: Sequence[float],
                     ratio: Sequence[float] = (3 / 4, 4 / 3), attempts: int = 10
                     ) -> tuple[int, int, int, int]:
    """torchvision RandomResizedCrop.get_params as a PIL box (left, top, right, bottom): up to
    `attempts` boxes of `scale` x the area and log-uniform w/h `ratio`; when none fits, the
    centre crop clamped to `ratio` (a 64x128 person at ratio >= 3/4: the central 64x85), never
    the whole image of another aspect."""
    area = w * h
    for _ in range(attempts):
        target = area * rng.uniform(*scale)
        ar = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = int(round(math.sqrt(target * ar))), int(round(math.sqrt(target / ar)))
        if 0 < cw <= w and 0 < ch <= h:
            top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            return left, top, left + cw, top + ch
    cw, ch = w, h
    if w / h < min(ratio):
        ch = int(round(w / min(ratio)))
    elif w / h > max(ratio):
        cw = int(round(h * max(ratio)))
    top, left = (h - ch) // 2, (w - cw) // 2
    return left, top, left + cw, top + ch


def random_resized_crop(img: Image.Image, rng: np.random.Generator, out_hw: Sequence[int],
                        scale: Sequence[float], ratio: Sequence[float] = (3 / 4, 4 / 3),
                        attempts: int = 10) -> Image.Image:
    """torchvision RandomResizedCrop: the box of `resized_crop_box`, resized (bicubic) to
    out_hw."""
    box = resized_crop_box(*img.size, rng, scale, ratio, attempts)
    return img.resize((out_hw[1], out_hw[0]), Image.BICUBIC, box=box)


def sensor_jitter(view: Image.Image, rng: np.random.Generator, min_resolution: float,
                  max_noise: float) -> Image.Image:
    """A random camera's optics on one view (not in DINO / iBOT): down to a factor r ~
    U(min_resolution, 1) of its size and back (bilinear), then Gaussian noise of sigma ~
    U(0, max_noise) grey levels, so the views of one image differ in the sensor cues (sharpness,
    noise) they would otherwise share."""
    w, h = view.size
    r = rng.uniform(min_resolution, 1.0)
    small = (max(1, round(w * r)), max(1, round(h * r)))
    view = view.resize(small, Image.BILINEAR).resize((w, h), Image.BILINEAR)
    sigma = rng.uniform(0.0, max_noise)
    x = np.asarray(view, np.float32) + rng.normal(0.0, sigma, (h, w, 3)).astype(np.float32)
    return Image.fromarray(np.clip(x + 0.5, 0, 255).astype(np.uint8))


def swap_margins(img: Image.Image, donor: Image.Image, margin: float) -> Image.Image:
    """`img` with its left and right `margin` x width columns taken from `donor` (resized to
    img's size): a detector box centres its person, so the sides are mostly background, and
    the views of one image stop sharing that background."""
    w, h = img.size
    m = int(round(margin * w))
    if m == 0:
        return img
    x = np.array(img.convert("RGB"))
    d = np.asarray(donor.convert("RGB").resize((w, h), Image.BILINEAR))
    x[:, :m], x[:, w - m:] = d[:, :m], d[:, w - m:]
    return Image.fromarray(x)


def multicrop_view(img: Image.Image, rng: np.random.Generator, out_hw: Sequence[int],
                   scale: Sequence[float], blur_prob: float, solarize_prob: float,
                   cfg, donor: Optional[Callable[[np.random.Generator], Image.Image]] = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """One DINO view: (-> `swap_margins` with a `donor(rng)` image, p cfg.background_swap.prob)
    -> resized crop (w/h in cfg.crop_ratio; DINO's 3/4-4/3 without it) -> flip (->
    `sensor_jitter`, p cfg.sensor_jitter.prob) here, on the host, as uint8 [h, w, 3]; its
    colour jitter (p cfg.color_jitter.prob) -> grayscale -> Gaussian blur -> solarise ->
    normalise happen in the train step (`color_augment.apply`) from the parameters [P] drawn
    here."""
    swap = cfg.get("background_swap")
    # drawn only when on, so the default views are DINO's draw for draw
    if swap is not None and swap.prob > 0 and rng.random() < swap.prob:
        if donor is None:
            raise ValueError("data.background_swap is on but this caller gives no donor images")
        img = swap_margins(img, donor(rng), swap.margin)
    ratio = tuple(cfg.get("crop_ratio", (3 / 4, 4 / 3)))
    view = random_resized_crop(img, rng, out_hw, scale, ratio)
    if rng.random() < 0.5:
        view = view.transpose(Image.FLIP_LEFT_RIGHT)
    sensor = cfg.get("sensor_jitter")
    # drawn only when on, so the default views are DINO's draw for draw
    if sensor is not None and sensor.prob > 0 and rng.random() < sensor.prob:
        view = sensor_jitter(view, rng, sensor.min_resolution, sensor.max_noise)
    return np.asarray(view), color_augment.draw_params(rng, cfg, blur_prob, solarize_prob)


def multicrop(img: Image.Image, rng: np.random.Generator, cfg,
              donor: Optional[Callable[[np.random.Generator], Image.Image]] = None
              ) -> dict[str, np.ndarray]:
    """{global: uint8 [2, H, W, 3], local: uint8 [L, h, w, 3], global_color [2, P], local_color
    [L, P] float32}; blur p 1.0 / 0.1 on the two global views and 0.5 on locals, solarisation
    p 0.2 on the second global view (BYOL/DINO asymmetry). `donor(rng)`: another image of the
    set, for cfg.background_swap (each view draws its own)."""
    g = [multicrop_view(img, rng, cfg.global_size, cfg.global_scale, 1.0, 0.0, cfg, donor),
         multicrop_view(img, rng, cfg.global_size, cfg.global_scale, 0.1, cfg.solarize_prob,
                        cfg, donor)]
    loc = [multicrop_view(img, rng, cfg.local_size, cfg.local_scale, 0.5, 0.0, cfg, donor)
           for _ in range(cfg.num_local_crops)]
    return {**_stack_views(g, "global", cfg.global_size),
            **_stack_views(loc, "local", cfg.local_size)}


def _stack_views(views, name: str, hw: Sequence[int]) -> dict[str, np.ndarray]:
    """[(view [h, w, 3], params [P])] -> {name: [V, h, w, 3], name_color: [V, P]} (V may be 0)."""
    if not views:
        return {name: np.zeros((0, *hw, 3), np.uint8),
                f"{name}_color": np.zeros((0, color_augment.NUM_PARAMS), np.float32)}
    images, params = zip(*views)
    return {name: np.stack(images), f"{name}_color": np.stack(params)}
