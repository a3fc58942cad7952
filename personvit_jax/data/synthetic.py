"""Procedural, seeded stand-in for Market-1501.

Why this exists
---------------
Real re-identification data cannot be downloaded on the machines this project
runs on, yet the training / evaluation code must be exercised on something
that *is* a re-identification problem. This module draws simple people with
numpy + ``PIL.ImageDraw`` and writes them as JPEGs in the exact Market-1501
folder layout and file naming, so the very same parser reads either set::

    <root>/bounding_box_train/0002_c1s1_000451_03.jpg
    <root>/query/...
    <root>/bounding_box_test/...      (also 0000_* distractors and -1_* junk)

File names are ``PPPP_cCsS_FFFFFF_NN.jpg``: person id (4 digits, ``-1`` for
junk, ``0000`` for distractors), camera, sequence (1-6), frame (6 digits) and
box index within the frame.

Identity versus nuisance
------------------------
The split between what identifies a person and what varies from image to
image is the whole point of the generator; a model can only learn
re-identification if identity survives every nuisance, and a trivial
baseline must fail because nuisance dominates raw colour statistics.

*Identity* (fixed per person id, :func:`person_attributes`): body proportions
(head size, leg length, shoulder / hip width, limb thickness, stature), skin
tone, hair colour and style, upper garment colour(s) + pattern (solid, stripes,
two-tone, checks, chest logo) + sleeve length, lower garment type (trousers /
shorts / skirt) and colour, shoe colour, bag (backpack / shoulder bag / tote /
none) and its colour, hat, carried object. Every palette is small and shared,
so many people share any single attribute (lots of dark trousers, black and
white tops); only the *combination* identifies a person.

*Nuisance* (per camera, :func:`camera_style`): a distinct scene (mall,
street, park, corridor, ...) seen through a fixed panorama, a strong colour
cast / brightness / contrast / saturation / gamma, optical quality (blur,
noise, low resolution). *Nuisance* (per image): facing direction (front, back,
side; a person tends to walk the same way through one camera, like a Market
tracklet), walking phase (legs and arms), mirror flip, detector-like scale and
translation jitter of the box, random background clutter and far-away people,
partial occlusion (pole, car, sign, another person) covering roughly 10-40% of
the person, illumination gradient, blur, noise and JPEG compression.

Nuisance shifts colours but never erases them, and occluders never cover most
of the person, so identity stays consistently visible across cameras.

Calibration (default arguments, Market-1501 protocol, 363 queries)
-----------------------------------------------------------------
Features without learning: whole-crop 8x8x8 RGB histogram (L2-normalised,
Euclidean) mAP 0.022; the same per 6 horizontal stripes 0.037; raw 32x16
pixels 0.059; HSV stripe histograms 0.086. Same-camera background and colour
cast dominate such features, as in real footage. Learned: a linear
discriminant fitted on ``bounding_box_train`` over the HSV stripe histograms
reaches 0.66, and the CPU-sized ViT fine-tune (``configs/finetune.py:synthetic``)
learns it from scratch (numbers in the README). Version 1 used stronger
colour nuisance (0.7): there the ViT was data-starved and reached only ~0.1
in the CPU budget, while a small CNN reached 0.5.

Determinism
-----------
Every random draw comes from ``np.random.default_rng`` seeded with a tuple
``(salt, seed, stream tag, ids...)``: the person, the camera and each image
have independent streams, so the output does not depend on iteration order
and the same arguments always give byte-identical files (PIL's JPEG encoder
is deterministic).

Safety
------
The set is built in a sibling temporary directory ``<root>.tmp-<hex>`` and
renamed to ``root`` only when complete, so an interrupted run never leaves a
half-built ``root``. ``root/manifest.json`` records a format version and every
argument; an existing ``root`` is returned untouched when its manifest matches
and is never overwritten or deleted otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import math
import os
import re
import secrets
import shutil
import socket
import sys
import time
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "SPLITS",
    "PersonAttributes",
    "CameraStyle",
    "person_attributes",
    "camera_style",
    "generate_synthetic_market",
    "main",
]

FORMAT_NAME = "personvit_jax.synthetic_market"
# Bump whenever the rendered bytes change for the same arguments, so an old
# set on disk is reported as different instead of silently reused.
FORMAT_VERSION = 2
SPLITS = ("bounding_box_train", "query", "bounding_box_test")
MANIFEST = "manifest.json"
_INCOMPLETE_MARKER = ".personvit_synthetic_incomplete"

# Render at twice the output resolution and box-filter down: cheap
# anti-aliasing for the polygon drawing.
_SUPERSAMPLE = 2
# Scales every per-camera colour nuisance (cast, brightness, contrast,
# saturation, gamma). 0.25: colour histograms still fail across cameras
# (backgrounds dominate them), and a small ViT learns identity from scratch
# within a CPU budget (at 0.7 it could not; see the calibration above).
_CAST_STRENGTH = 0.25
# Scales the per-image lighting change (exposure, white-balance drift, light
# gradient across the crop) within one camera.
_IMAGE_LIGHT_JITTER = 0.25
# Background texture: textured scenes spread their colour mass over many
# histogram bins, like real pavement and walls, instead of a few flat ones.
_BG_BLOTCH = 0.15
_BG_GRAIN = 4.0
_JPEG_QUALITY = 90

# Independent random streams. The salt keeps our streams apart from any other
# use of the same user seed.
_SALT = 0x5EED_1501
_TAG_PERSON = 1
_TAG_CAMERA = 2
_TAG_CAMERA_SET = 3
_TAG_LAYOUT = 4
_TAG_IMAGE = 5
_TAG_TRACK = 6
_TAG_DISTRACTOR = 7
_TAG_JUNK = 8
# Distractor people are ordinary people that belong to no split; they live in
# a person-id space far above any real id (real ids are at most 9999).
_DISTRACTOR_PERSON_BASE = 1_000_000

RGB = tuple[int, int, int]


def _rng(seed: int, *keys: int) -> np.random.Generator:
    """Independent generator for one (seed, stream, ids...) key."""
    return np.random.default_rng([_SALT, seed, *keys])


# ---------------------------------------------------------------------------
# Palettes. Small and shared on purpose: a single attribute never identifies a
# person, and dark / neutral clothes dominate as in real street footage.
# ---------------------------------------------------------------------------

_TOP_COLORS: tuple[tuple[RGB, float], ...] = (
    ((25, 25, 28), 3.0),  # black
    ((235, 235, 230), 2.5),  # white
    ((128, 128, 130), 2.0),  # grey
    ((62, 62, 68), 2.0),  # dark grey
    ((30, 40, 90), 1.5),  # navy
    ((40, 90, 180), 1.2),  # blue
    ((140, 180, 225), 1.0),  # light blue
    ((190, 35, 40), 1.2),  # red
    ((110, 30, 40), 0.8),  # maroon
    ((40, 130, 60), 0.8),  # green
    ((100, 105, 50), 0.6),  # olive
    ((225, 200, 50), 0.6),  # yellow
    ((230, 120, 40), 0.5),  # orange
    ((230, 150, 180), 0.7),  # pink
    ((110, 60, 140), 0.6),  # purple
    ((210, 190, 150), 0.9),  # beige
    ((110, 75, 45), 0.8),  # brown
    ((30, 130, 130), 0.5),  # teal
)
_LOWER_COLORS: tuple[tuple[RGB, float], ...] = (
    ((22, 22, 26), 3.0),  # black
    ((60, 60, 66), 1.5),  # dark grey
    ((32, 40, 80), 1.5),  # navy
    ((60, 85, 130), 2.0),  # denim
    ((120, 150, 190), 1.0),  # light denim
    ((170, 150, 105), 1.0),  # khaki
    ((130, 130, 132), 1.0),  # grey
    ((225, 225, 220), 0.5),  # white
    ((100, 70, 45), 0.6),  # brown
    ((170, 40, 45), 0.25),  # red
    ((90, 100, 55), 0.3),  # olive
    ((205, 185, 150), 0.5),  # beige
)
_SHOE_COLORS: tuple[tuple[RGB, float], ...] = (
    ((20, 20, 22), 3.0),
    ((235, 235, 235), 2.5),
    ((120, 120, 120), 1.0),
    ((95, 60, 35), 1.0),
    ((35, 45, 90), 0.5),
    ((180, 40, 40), 0.3),
)
_HAIR_COLORS: tuple[tuple[RGB, float], ...] = (
    ((20, 18, 18), 4.0),  # black
    ((55, 35, 25), 2.5),  # dark brown
    ((100, 65, 40), 1.2),  # brown
    ((200, 170, 110), 0.6),  # blond
    ((150, 150, 150), 0.4),  # grey
    ((130, 55, 30), 0.4),  # auburn
)
_SKIN_COLORS: tuple[tuple[RGB, float], ...] = (
    ((245, 220, 200), 1.0),
    ((235, 195, 165), 1.3),
    ((215, 170, 135), 1.3),
    ((190, 140, 100), 1.0),
    ((150, 100, 70), 0.8),
    ((100, 70, 50), 0.6),
)
_BAG_COLORS: tuple[tuple[RGB, float], ...] = (
    ((25, 25, 28), 3.0),
    ((110, 110, 115), 1.0),
    ((30, 40, 85), 1.0),
    ((170, 40, 45), 0.6),
    ((105, 70, 40), 1.0),
    ((50, 110, 60), 0.5),
    ((45, 95, 175), 0.6),
    ((225, 150, 175), 0.4),
    ((205, 185, 145), 0.5),
    ((225, 120, 40), 0.3),
)
_PATTERNS = (
    ("solid", 0.38),
    ("hstripes", 0.14),
    ("vstripes", 0.08),
    ("two_tone", 0.14),
    ("checks", 0.10),
    ("logo", 0.16),
)
_HAIR_STYLES = (("short", 0.38), ("medium", 0.18), ("long", 0.24), ("ponytail", 0.12), ("buzz", 0.08))
_LOWER_TYPES = (("trousers", 0.68), ("shorts", 0.17), ("skirt", 0.15))
_BAG_TYPES = (("none", 0.42), ("backpack", 0.30), ("shoulder", 0.20), ("tote", 0.08))
_HATS = (("none", 0.80), ("cap", 0.12), ("beanie", 0.08))
_CARRIED = (("none", 0.85), ("umbrella", 0.08), ("paper", 0.07))
_FACINGS = ("front", "back", "left", "right")
# Scene styles; each camera gets a different one (cycled if more cameras).
_SCENES = ("mall", "street", "park", "corridor", "plaza", "glass", "underpass")


def _choice(rng: np.random.Generator, options: Sequence[tuple[object, float]]):
    """Weighted choice from ``(value, weight)`` pairs."""
    weights = np.array([w for _, w in options], dtype=np.float64)
    index = rng.choice(len(options), p=weights / weights.sum())
    return options[int(index)][0]


def _jitter_color(rng: np.random.Generator, color: RGB, sigma: float = 9.0) -> RGB:
    """A person's own shade of a palette colour (consistent across images)."""
    values = np.clip(np.array(color, dtype=np.float64) + rng.normal(0.0, sigma, 3), 0, 255)
    return tuple(int(round(v)) for v in values)  # type: ignore[return-value]


def _shade(color: RGB, factor: float) -> RGB:
    """Darken (factor < 1) or brighten a colour, e.g. for far-side limbs."""
    return tuple(int(max(0, min(255, round(c * factor)))) for c in color)  # type: ignore[return-value]


# ---------------------------------------------------------------------------
# Identity
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PersonAttributes:
    """Everything that identifies one person; fixed across all their images."""

    head_ratio: float  # head height / body height
    leg_ratio: float  # hip-to-sole length / body height
    shoulder_ratio: float  # shoulder width / body height
    hip_ratio: float  # hip width / shoulder width
    limb_ratio: float  # multiplier on arm and leg thickness
    stature: float  # how much of the detector box the body fills (tall ~1)
    skin: RGB
    hair_color: RGB
    hair_style: str
    top_color: RGB
    top_color2: RGB
    top_pattern: str
    stripe_count: int  # stripes / checks per torso height
    long_sleeves: bool
    lower_type: str
    lower_color: RGB
    lower_length: float  # shorts / skirt length as a fraction of the leg
    shoe_color: RGB
    bag_type: str
    bag_color: RGB
    bag_size: float
    bag_side: int  # +1 / -1: which hip or hand carries the bag
    hat: str
    hat_color: RGB
    carried: str


def _sample_attributes(rng: np.random.Generator) -> PersonAttributes:
    """Draw one person. Used for real ids, distractors and background people."""
    top_color = _jitter_color(rng, _choice(rng, _TOP_COLORS))
    pattern = _choice(rng, _PATTERNS)
    # The second garment colour must differ visibly, or the pattern vanishes.
    top_color2 = top_color
    for _ in range(20):
        candidate = _jitter_color(rng, _choice(rng, _TOP_COLORS))
        if sum(abs(a - b) for a, b in zip(candidate, top_color)) > 120:
            top_color2 = candidate
            break
    lower_type = _choice(rng, _LOWER_TYPES)
    return PersonAttributes(
        head_ratio=float(rng.uniform(0.115, 0.15)),
        leg_ratio=float(rng.uniform(0.43, 0.52)),
        shoulder_ratio=float(rng.uniform(0.25, 0.34)),
        hip_ratio=float(rng.uniform(0.76, 1.02)),
        limb_ratio=float(rng.uniform(0.85, 1.2)),
        stature=float(rng.uniform(0.93, 1.03)),
        skin=_jitter_color(rng, _choice(rng, _SKIN_COLORS), 6.0),
        hair_color=_jitter_color(rng, _choice(rng, _HAIR_COLORS), 6.0),
        hair_style=_choice(rng, _HAIR_STYLES),
        top_color=top_color,
        top_color2=top_color2,
        top_pattern=pattern,
        stripe_count=int(rng.integers(3, 8)),
        long_sleeves=bool(rng.random() < 0.55),
        lower_type=lower_type,
        lower_color=_jitter_color(rng, _choice(rng, _LOWER_COLORS)),
        lower_length=float(rng.uniform(0.35, 0.5) if lower_type == "shorts" else rng.uniform(0.4, 0.75)),
        shoe_color=_jitter_color(rng, _choice(rng, _SHOE_COLORS), 6.0),
        bag_type=_choice(rng, _BAG_TYPES),
        bag_color=_jitter_color(rng, _choice(rng, _BAG_COLORS)),
        bag_size=float(rng.uniform(0.8, 1.2)),
        bag_side=1 if rng.random() < 0.5 else -1,
        hat=_choice(rng, _HATS),
        hat_color=_jitter_color(rng, _choice(rng, _TOP_COLORS)),
        carried=_choice(rng, _CARRIED),
    )


def person_attributes(pid: int, seed: int) -> PersonAttributes:
    """The fixed appearance of person ``pid`` (>= 0) in the set built with ``seed``."""
    return _sample_attributes(_rng(seed, _TAG_PERSON, pid))


# ---------------------------------------------------------------------------
# Cameras
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CameraStyle:
    """Per-camera nuisance: scene and colour / optics of the sensor."""

    scene: str
    gain: tuple[float, float, float]  # per-channel white-balance error
    offset: tuple[float, float, float]  # additive tint, in [0, 1] units
    brightness: float
    contrast: float
    saturation: float
    gamma: float
    blur: float  # base Gaussian blur radius at output resolution
    noise: float  # sensor noise sigma, 0-255 units
    resolution: float  # < 1: the camera is effectively lower resolution
    facing_bias: int  # index into _FACINGS most people walk towards here


def camera_style(cam: int, seed: int) -> CameraStyle:
    """Nuisance parameters of camera ``cam`` (1-based); strong and distinct."""
    order = _rng(seed, _TAG_CAMERA_SET).permutation(len(_SCENES))
    rng = _rng(seed, _TAG_CAMERA, cam)
    k = _CAST_STRENGTH
    gain = np.exp(rng.normal(0.0, 0.16 * k, 3))
    gain /= np.exp(np.log(gain).mean())  # the cast shifts hue; brightness is separate
    return CameraStyle(
        scene=_SCENES[int(order[(cam - 1) % len(_SCENES)])],
        gain=tuple(float(g) for g in gain),  # type: ignore[arg-type]
        offset=tuple(float(o) for o in rng.normal(0.0, 0.035 * k, 3)),  # type: ignore[arg-type]
        brightness=float(np.exp(k * rng.uniform(-0.35, 0.25))),
        contrast=float(1.0 + k * rng.uniform(-0.3, 0.25)),
        saturation=float(1.0 + k * rng.uniform(-0.45, 0.25)),
        gamma=float(np.exp(k * rng.uniform(-0.22, 0.22))),
        blur=float(rng.uniform(0.0, 0.6)),
        noise=float(rng.uniform(1.0, 5.0)),
        resolution=float(rng.choice([1.0, 1.0, 0.75, 0.6])),
        facing_bias=int(rng.integers(0, len(_FACINGS))),
    )


def _lowfreq_noise(rng: np.random.Generator, height: int, width: int, cells: tuple[int, int]) -> np.ndarray:
    """Smooth noise in [-1, 1] (blotchy lighting / dirt) via upsampled random grid."""
    grid = rng.uniform(0, 255, cells).astype(np.uint8)
    image = Image.fromarray(grid, "L").resize((width, height), Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.float32) / 127.5 - 1.0


def _rand_color(rng: np.random.Generator, base: Sequence[float], spread: float) -> RGB:
    """A colour near ``base``: per-camera variation of a scene element."""
    return tuple(int(np.clip(b + rng.normal(0, spread), 0, 255)) for b in base)  # type: ignore[return-value]


# Scene materials shared by all cameras: real backgrounds are mostly muted
# greys and beiges, so two cameras overlap in colour statistics; each scene
# only prefers some materials (weights), which gives it its character.
_WALLS: tuple[RGB, ...] = (
    (205, 200, 190),  # off-white
    (160, 160, 160),  # concrete
    (115, 115, 120),  # dark concrete
    (185, 165, 135),  # sandstone
    (150, 82, 65),  # brick
    (115, 140, 160),  # tinted glass
    (70, 105, 65),  # foliage
    (85, 80, 78),  # dark wall
    (175, 125, 95),  # terracotta
    (150, 170, 190),  # pale sky
)
_GROUNDS: tuple[RGB, ...] = (
    (175, 172, 165),  # light paving
    (125, 125, 125),  # concrete
    (88, 88, 92),  # asphalt
    (190, 178, 155),  # sand-coloured tiles
    (150, 135, 110),  # dirt path
    (85, 120, 60),  # grass
)
# scene -> (wall weights, ground weights, decoration)
_SCENE_MATERIALS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mall": ((3, 1, 0, 2, 0, 1, 0, 0, 1, 0), (3, 1, 0, 2, 0, 0)),
    "street": ((1, 2, 1, 2, 2, 1, 0, 1, 1, 0), (1, 2, 3, 0, 0, 0)),
    "park": ((0, 1, 0, 1, 0, 0, 4, 0, 0, 3), (0, 0, 0, 1, 3, 3)),
    "corridor": ((1, 1, 3, 0, 0, 0, 0, 3, 1, 0), (1, 3, 1, 1, 0, 0)),
    "plaza": ((1, 1, 0, 2, 3, 0, 1, 0, 2, 1), (3, 1, 0, 2, 1, 0)),
    "glass": ((1, 1, 1, 0, 0, 4, 0, 1, 0, 1), (3, 2, 0, 1, 0, 0)),
    "underpass": ((0, 3, 2, 2, 0, 0, 0, 2, 0, 0), (0, 3, 2, 0, 1, 0)),
}


def _pick_material(rng: np.random.Generator, colors: Sequence[RGB], weights: Sequence[float], spread: float) -> RGB:
    """A shared material colour chosen with the scene's preferences."""
    return _rand_color(rng, _choice(rng, list(zip(colors, weights))), spread)


def _decorate_segment(d: ImageDraw.ImageDraw, rng: np.random.Generator, scene: str, x0: float, x1: float,
                      horizon: int, wall: RGB, cw: int, ch: int) -> None:
    """Scene-typical structure (windows, doors, trees, ...) on one wall segment."""
    w = x1 - x0
    if scene == "mall" and rng.random() < 0.7:  # shop window with goods and a sign
        d.rectangle([x0 + w * 0.08, horizon * 0.3, x1 - w * 0.08, horizon], fill=_shade(wall, 0.5))
        for _ in range(5):
            gx, gy = x0 + rng.uniform(0.1, 0.8) * w, horizon * rng.uniform(0.35, 0.85)
            s = cw * rng.uniform(0.05, 0.15)
            d.rectangle([gx, gy, gx + s, gy + s], fill=_choice(rng, _TOP_COLORS))
        d.rectangle([x0 + w * 0.08, horizon * 0.12, x1 - w * 0.08, horizon * 0.24], fill=_choice(rng, _BAG_COLORS))
    elif scene in ("street", "plaza"):  # window grid
        step_x, step_y = cw * rng.uniform(0.35, 0.55), ch * rng.uniform(0.16, 0.24)
        glass = _rand_color(rng, (45, 50, 60), 15)
        for wx in np.arange(x0 + step_x * 0.2, x1 - step_x * 0.6, step_x):
            for wy in np.arange(horizon * 0.05, horizon - step_y * 0.8, step_y):
                d.rectangle([wx, wy, wx + step_x * 0.6, wy + step_y * 0.6], fill=glass)
    elif scene == "park":  # trees
        for _ in range(int(rng.integers(0, 3))):
            r = cw * rng.uniform(0.25, 0.6)
            tx, ty = rng.uniform(x0, x1), horizon - r * rng.uniform(0.4, 1.0)
            d.rectangle([tx - r * 0.08, ty, tx + r * 0.08, horizon + 4], fill=(70, 50, 35))
            d.ellipse([tx - r, ty - r, tx + r, ty + r], fill=_rand_color(rng, (50, 90, 45), 15))
    elif scene == "corridor":  # door and ceiling light
        if rng.random() < 0.6:
            d.rectangle([x0 + w * 0.3, horizon * 0.3, x0 + w * 0.3 + cw * 0.4, horizon],
                        fill=_rand_color(rng, (110, 80, 55), 20))
        d.rectangle([x0 + w * 0.2, 0, x0 + w * 0.6, ch * 0.04], fill=(250, 245, 225))
    elif scene == "glass":  # mullions and a reflection
        for mx in np.arange(x0, x1, cw * 0.5):
            d.rectangle([mx, 0, mx + 4, horizon], fill=(55, 58, 62))
        rx = rng.uniform(x0, x1)
        d.polygon([(rx, 0), (rx + cw * 0.2, 0), (rx - cw * 0.1, horizon), (rx - cw * 0.3, horizon)],
                  fill=_shade(wall, 1.2))
    elif scene == "underpass":  # pillar
        px = rng.uniform(x0, x1)
        d.rectangle([px, 0, px + cw * 0.22, horizon + ch * 0.08], fill=_shade(wall, 1.15))
    if scene in ("street", "plaza", "underpass") and rng.random() < 0.35:  # poster / graffiti
        px, py = rng.uniform(x0, x1), horizon * rng.uniform(0.4, 0.8)
        d.rectangle([px, py, px + cw * 0.25, py + ch * 0.12], fill=_choice(rng, _TOP_COLORS))


def _scene_panorama(cam: int, seed: int, canvas_h: int, canvas_w: int) -> Image.Image:
    """Wide static background of one camera; each image crops a window of it.

    The panorama is a row of wall segments of shared materials over a ground
    plane, decorated in the camera's scene style. A fixed panorama makes the
    background a *camera* cue, as in real footage, while varying segments keep
    two crops of one camera from being near-identical.
    """
    style = camera_style(cam, seed)
    rng = _rng(seed, _TAG_CAMERA, cam, 1)
    ph, pw = int(canvas_h * 1.3), int(canvas_w * 6)
    horizon = int(ph * rng.uniform(0.4, 0.6))
    wall_w, ground_w = _SCENE_MATERIALS[style.scene]
    img = Image.new("RGB", (pw, ph))
    d = ImageDraw.Draw(img)

    ground = _pick_material(rng, _GROUNDS, ground_w, 10)
    d.rectangle([0, horizon, pw, ph], fill=ground)
    if rng.random() < 0.5:  # a band of a second ground material (path, kerb, mat)
        band_top = horizon + (ph - horizon) * rng.uniform(0.2, 0.6)
        d.rectangle([0, band_top, pw, band_top + (ph - horizon) * rng.uniform(0.15, 0.4)],
                    fill=_pick_material(rng, _GROUNDS, ground_w, 10))
    for y in np.arange(horizon, ph, canvas_h * rng.uniform(0.06, 0.14)):  # tiles / paving joints
        d.line([0, y, pw, y], fill=_shade(ground, 0.85), width=2)

    x = 0.0
    while x < pw:
        seg_w = canvas_w * rng.uniform(0.6, 1.6)
        wall = _pick_material(rng, _WALLS, wall_w, 12)
        d.rectangle([x, 0, x + seg_w, horizon], fill=wall)
        _decorate_segment(d, rng, style.scene, x, x + seg_w, horizon, wall, canvas_w, canvas_h)
        x += seg_w

    # Dirt / uneven lighting so the background has texture at every scale.
    arr = np.asarray(img, dtype=np.float32)
    arr *= 1.0 + _BG_BLOTCH * _lowfreq_noise(rng, ph, pw, (6, 36))[..., None]
    arr *= 1.0 + _BG_BLOTCH * _lowfreq_noise(rng, ph, pw, (ph // 10, pw // 10))[..., None]
    arr += rng.normal(0.0, _BG_GRAIN, arr.shape).astype(np.float32)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


# ---------------------------------------------------------------------------
# Drawing a person
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Pose:
    facing: str  # front / back / side (side always drawn facing right)
    mirror: bool  # flip the person horizontally (left-facing, bag swaps side)
    phase: float  # walking phase in radians
    stride: float  # leg swing amplitude in radians


def _limb(p0, p1, w0: float, w1: float) -> list[tuple[float, float]]:
    """Quadrilateral around segment p0-p1 with widths w0 at p0 and w1 at p1."""
    dx, dy = p1[0] - p0[0], p1[1] - p0[1]
    length = math.hypot(dx, dy) or 1.0
    nx, ny = -dy / length, dx / length
    return [
        (p0[0] + nx * w0 / 2, p0[1] + ny * w0 / 2),
        (p1[0] + nx * w1 / 2, p1[1] + ny * w1 / 2),
        (p1[0] - nx * w1 / 2, p1[1] - ny * w1 / 2),
        (p0[0] - nx * w0 / 2, p0[1] - ny * w0 / 2),
    ]


def _lerp(p0, p1, t: float) -> tuple[float, float]:
    return (p0[0] + (p1[0] - p0[0]) * t, p0[1] + (p1[1] - p0[1]) * t)


def _disc(d: ImageDraw.ImageDraw, center, radius: float, fill) -> None:
    d.ellipse([center[0] - radius, center[1] - radius, center[0] + radius, center[1] + radius], fill=fill)


def _pattern_mask(a: PersonAttributes, facing: str, w: int, h: int) -> np.ndarray:
    """Boolean map of where the torso shows the second garment colour.

    Periods are relative to the torso height so a pattern looks the same at
    every scale.
    """
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    period = max(2.0, h / a.stripe_count)
    if a.top_pattern == "hstripes":
        return (yy // (period / 2)) % 2 == 1
    if a.top_pattern == "vstripes":
        return (xx // (period / 2)) % 2 == 1
    if a.top_pattern == "checks":
        return ((yy // (period / 2)) + (xx // (period / 2))) % 2 == 1
    if a.top_pattern == "two_tone":
        return yy > h * 0.45
    if a.top_pattern == "logo" and facing == "front":
        cx, cy = w * 0.5, h * 0.3
        return (np.abs(xx - cx) < w * 0.18) & (np.abs(yy - cy) < h * 0.13)
    return np.zeros((h, w), dtype=bool)


def _paste_torso(layer: Image.Image, poly, a: PersonAttributes, facing: str) -> None:
    """Fill the torso polygon with the garment pattern."""
    xs, ys = [p[0] for p in poly], [p[1] for p in poly]
    x0, y0 = int(math.floor(min(xs))), int(math.floor(min(ys)))
    w, h = max(1, int(math.ceil(max(xs))) - x0 + 1), max(1, int(math.ceil(max(ys))) - y0 + 1)
    second = _pattern_mask(a, facing, w, h)
    pixels = np.where(second[..., None], np.array(a.top_color2, np.uint8), np.array(a.top_color, np.uint8))
    mask = Image.new("L", (w, h), 0)
    ImageDraw.Draw(mask).polygon([(x - x0, y - y0) for x, y in poly], fill=255)
    layer.paste(Image.fromarray(pixels.astype(np.uint8), "RGB"), (x0, y0), mask)


def _draw_person(layer: Image.Image, a: PersonAttributes, pose: _Pose, cx: float, top: float, ph: float) -> None:
    """Draw person ``a`` on the RGBA ``layer``: body height ``ph`` from ``top``.

    Front and back views share the geometry (the back view shows the backpack
    and hides the face and chest logo); the side view is drawn facing right
    and mirrored by the caller for left.
    """
    d = ImageDraw.Draw(layer)
    side = pose.facing == "side"
    skin, lower = a.skin + (255,), a.lower_color + (255,)
    sleeve = a.top_color + (255,)

    head_h = ph * a.head_ratio
    head_w = head_h * 0.8
    y_sh = top + head_h * 1.12
    y_foot = top + ph
    y_hip = y_foot - ph * a.leg_ratio
    leg_len = y_foot - y_hip
    sw = ph * a.shoulder_ratio * (0.6 if side else 1.0)
    hw = sw * a.hip_ratio if not side else sw * 0.95
    limb_w = ph * 0.065 * a.limb_ratio
    arm_len = ph * 0.37
    swing = pose.stride * math.sin(pose.phase)
    lean = ph * 0.02 if side else 0.0
    cx_t = cx + lean  # torso centre (leans forward when walking sideways)
    shoe_h = ph * 0.035
    bag = a.bag_color + (255,)
    bag_dark = _shade(a.bag_color, 0.7) + (255,)

    # -- hips and shoulders ---------------------------------------------------
    if side:
        hips = [(cx, y_hip), (cx, y_hip)]
        leg_angles = [-swing, swing]  # far leg first, then near leg
    else:
        hips = [(cx - hw * 0.25, y_hip), (cx + hw * 0.25, y_hip)]
        leg_angles = [0.06 + 0.03 * math.sin(pose.phase), -0.06 - 0.03 * math.sin(pose.phase)]

    def draw_leg(hip, angle: float, shade: float) -> None:
        foot = (hip[0] + leg_len * math.sin(angle), hip[1] + leg_len * math.cos(angle))
        if not side:  # a lifted foot in front / back views
            foot = (foot[0], foot[1] - ph * 0.02 * max(0.0, math.sin(pose.phase + (0 if hip[0] < cx else math.pi))))
        w_top, w_bot = (hw * 0.48, limb_w * 0.9) if not side else (hw * 0.8, limb_w * 0.9)
        d.polygon(_limb(hip, foot, w_top, w_bot), fill=_shade(a.skin, shade) + (255,))
        if a.lower_type == "trousers":
            d.polygon(_limb(hip, foot, w_top * 1.05, w_bot * 1.15), fill=_shade(a.lower_color, shade) + (255,))
        elif a.lower_type == "shorts":
            knee = _lerp(hip, foot, a.lower_length)
            d.polygon(_limb(hip, knee, w_top * 1.1, w_top * 0.95), fill=_shade(a.lower_color, shade) + (255,))
        # Shoe: elongated forward in the side view.
        shoe_col = _shade(a.shoe_color, shade) + (255,)
        if side:
            d.ellipse([foot[0] - ph * 0.03, foot[1] - shoe_h, foot[0] + ph * 0.07, foot[1] + shoe_h * 0.3],
                      fill=shoe_col)
        else:
            d.ellipse([foot[0] - w_bot * 0.75, foot[1] - shoe_h, foot[0] + w_bot * 0.75, foot[1] + shoe_h * 0.3],
                      fill=shoe_col)

    def arm_points(shoulder, angle: float, direction: int):
        """Shoulder, elbow and hand for an arm hanging at ``angle`` from vertical."""
        upper = arm_len * 0.48
        elbow = (shoulder[0] + upper * math.sin(angle), shoulder[1] + upper * math.cos(angle))
        fore_angle = angle + (0.3 if side else 0.05 * direction)
        fore = arm_len - upper
        hand = (elbow[0] + fore * math.sin(fore_angle), elbow[1] + fore * math.cos(fore_angle))
        return elbow, hand

    def draw_arm(shoulder, angle: float, direction: int, shade: float):
        elbow, hand = arm_points(shoulder, angle, direction)
        aw = limb_w * 0.95
        col = _shade(a.skin, shade) + (255,)
        d.polygon(_limb(shoulder, elbow, aw, aw * 0.85), fill=col)
        d.polygon(_limb(elbow, hand, aw * 0.85, aw * 0.7), fill=col)
        sl = _shade(sleeve[:3], shade) + (255,)
        d.polygon(_limb(shoulder, elbow, aw * 1.15, aw * 1.0), fill=sl)
        _disc(d, shoulder, aw * 0.58, sl)
        if a.long_sleeves:
            d.polygon(_limb(elbow, _lerp(elbow, hand, 0.85), aw * 1.0, aw * 0.85), fill=sl)
        _disc(d, hand, aw * 0.45, col)
        return hand

    # Shoulder anchor points for the arms.
    if side:
        shoulders = [(cx_t, y_sh + limb_w * 0.5), (cx_t, y_sh + limb_w * 0.5)]
        arm_angles = [swing * 0.9, -swing * 0.9]  # arms swing against the legs
    else:
        shoulders = [(cx - sw / 2 + limb_w * 0.2, y_sh + limb_w * 0.55),
                     (cx + sw / 2 - limb_w * 0.2, y_sh + limb_w * 0.55)]
        arm_angles = [0.09 + 0.03 * math.sin(pose.phase), -0.09 + 0.03 * math.sin(pose.phase)]

    # -- behind the body --------------------------------------------------------
    hx0, hy0 = cx_t - head_w / 2 + (head_w * 0.08 if side else 0), top
    hx1, hy1 = hx0 + head_w, top + head_h
    hair = a.hair_color + (255,)
    if a.hair_style == "long" and pose.facing == "front":
        d.rectangle([hx0 - head_w * 0.08, hy0 + head_h * 0.4, hx1 + head_w * 0.08, y_sh + ph * 0.06], fill=hair)
    if side and a.bag_type == "backpack":
        depth = sw * 0.55 * a.bag_size
        d.rounded_rectangle([cx_t - sw / 2 - depth, y_sh + ph * 0.02, cx_t - sw / 2 + sw * 0.2,
                             y_sh + (y_hip - y_sh) * 0.75 * a.bag_size], radius=depth * 0.3, fill=bag)
    hands = [None, None]
    if side:  # far arm and far leg, slightly shaded
        hands[0] = draw_arm(shoulders[0], arm_angles[0], -1, 0.78)
        draw_leg(hips[0], leg_angles[0], 0.78)
        draw_leg(hips[1], leg_angles[1], 1.0)
    else:
        draw_leg(hips[0], leg_angles[0], 1.0)
        draw_leg(hips[1], leg_angles[1], 1.0)

    # -- pelvis / skirt -----------------------------------------------------------
    if a.lower_type == "skirt":
        bottom = y_hip + leg_len * a.lower_length
        flare = hw * (1.4 if not side else 1.6)
        d.polygon([(cx - hw / 2, y_hip - ph * 0.04), (cx + hw / 2, y_hip - ph * 0.04),
                   (cx + flare / 2, bottom), (cx - flare / 2, bottom)], fill=lower)
    else:
        d.rectangle([cx - hw / 2, y_hip - ph * 0.04, cx + hw / 2, y_hip + ph * 0.05], fill=lower)

    # -- torso --------------------------------------------------------------------
    r = sw * 0.12
    y_waist = y_hip + ph * 0.015
    torso = [(cx_t - sw / 2 + r, y_sh - ph * 0.01), (cx_t + sw / 2 - r, y_sh - ph * 0.01), (cx_t + sw / 2, y_sh + r),
             (cx + hw / 2, y_waist), (cx - hw / 2, y_waist), (cx_t - sw / 2, y_sh + r)]
    d.rectangle([cx_t - head_w * 0.18, hy1 - head_h * 0.1, cx_t + head_w * 0.18, y_sh + 2], fill=skin)  # neck
    _paste_torso(layer, torso, a, pose.facing)

    # -- arms ---------------------------------------------------------------------
    if side:
        hands[1] = draw_arm(shoulders[1], arm_angles[1], 1, 1.0)
    else:
        hands[0] = draw_arm(shoulders[0], arm_angles[0], -1, 1.0)
        hands[1] = draw_arm(shoulders[1], arm_angles[1], 1, 1.0)

    # -- bags -----------------------------------------------------------------------
    torso_len = y_hip - y_sh
    if a.bag_type == "backpack" and pose.facing == "back":
        bw, bh = sw * 0.75 * a.bag_size, torso_len * 0.7 * a.bag_size
        d.rounded_rectangle([cx_t - bw / 2, y_sh + ph * 0.015, cx_t + bw / 2, y_sh + ph * 0.015 + bh],
                            radius=bw * 0.15, fill=bag)
        d.rectangle([cx_t - bw * 0.35, y_sh + bh * 0.55, cx_t + bw * 0.35, y_sh + bh * 0.95], fill=bag_dark)
    elif a.bag_type == "backpack" and pose.facing == "front":  # only the straps show
        for s in (-1, 1):
            d.polygon(_limb((cx_t + s * sw * 0.28, y_sh), (cx_t + s * sw * 0.3, y_sh + torso_len * 0.7),
                            sw * 0.09, sw * 0.08), fill=bag_dark)
    elif a.bag_type == "backpack":  # side: strap over the shoulder
        d.polygon(_limb((cx_t - sw * 0.1, y_sh), (cx_t + sw * 0.2, y_sh + torso_len * 0.6), sw * 0.12, sw * 0.1),
                  fill=bag_dark)
    elif a.bag_type == "shoulder":
        s = a.bag_side if not side else 0
        bag_w, bag_h = ph * 0.11 * a.bag_size, ph * 0.08 * a.bag_size
        bx = cx + s * (hw / 2 + bag_w * 0.2)
        by = y_hip - ph * 0.02
        strap_top = (cx_t - s * sw * 0.35 if s else cx_t - sw * 0.1, y_sh)  # over the opposite shoulder
        d.line([strap_top, (bx, by)], fill=bag_dark, width=max(2, int(sw * 0.06)))
        d.rounded_rectangle([bx - bag_w / 2, by, bx + bag_w / 2, by + bag_h], radius=bag_w * 0.15, fill=bag)
    elif a.bag_type == "tote":
        hand = hands[1] if (side or a.bag_side > 0) else hands[0]
        tw, th = ph * 0.1 * a.bag_size, ph * 0.11 * a.bag_size
        d.rectangle([hand[0] - tw / 2, hand[1] + ph * 0.005, hand[0] + tw / 2, hand[1] + th], fill=bag)

    if a.carried == "umbrella":
        hand = hands[0] if a.bag_side > 0 else hands[1]
        d.line([hand, (hand[0] + ph * 0.05, y_foot - ph * 0.03)], fill=(30, 30, 35, 255), width=max(2, int(ph * 0.018)))
    elif a.carried == "paper":
        hand = hands[0] if a.bag_side > 0 else hands[1]
        d.rectangle([hand[0] - ph * 0.03, hand[1] - ph * 0.07, hand[0] + ph * 0.03, hand[1] + ph * 0.01],
                    fill=(240, 240, 235, 255))

    # -- head and hair ----------------------------------------------------------------
    _draw_head(d, a, pose, (hx0, hy0, hx1, hy1), y_sh, torso_len, ph)


def _draw_head(d: ImageDraw.ImageDraw, a: PersonAttributes, pose: _Pose, box, y_sh: float, torso_len: float,
               ph: float) -> None:
    """Head, face, hair and hat: the back view is mostly hair, the front mostly face."""
    hx0, hy0, hx1, hy1 = box
    hw, hh = hx1 - hx0, hy1 - hy0
    skin, hair = a.skin + (255,), a.hair_color + (255,)
    style = a.hair_style
    hairline = {"buzz": 0.18, "short": 0.3, "ponytail": 0.3, "medium": 0.32, "long": 0.32}[style]
    grow = 0.02 if style == "buzz" else 0.07

    if pose.facing == "back":
        if style == "long":
            d.rounded_rectangle([hx0 - hw * 0.08, hy0 + hh * 0.4, hx1 + hw * 0.08, y_sh + torso_len * 0.45],
                                radius=hw * 0.3, fill=hair)
        d.ellipse([hx0, hy0, hx1, hy1], fill=skin)
        nape = 0.25 if style in ("short", "buzz") else 0.0  # short hair shows the neck
        d.ellipse([hx0 - hw * grow, hy0 - hh * grow, hx1 + hw * grow, hy1 - hh * nape], fill=hair)
        if style == "ponytail":
            d.rounded_rectangle([hx0 + hw * 0.38, hy1 - hh * 0.3, hx1 - hw * 0.38, y_sh + torso_len * 0.15],
                                radius=hw * 0.1, fill=hair)
    elif pose.facing == "side":
        if style == "long":
            d.rounded_rectangle([hx0 - hw * 0.05, hy0 + hh * 0.3, hx0 + hw * 0.45, y_sh + torso_len * 0.3],
                                radius=hw * 0.2, fill=hair)
        elif style == "ponytail":
            d.ellipse([hx0 - hw * 0.35, hy0 + hh * 0.25, hx0 + hw * 0.15, hy0 + hh * 0.9], fill=hair)
        d.ellipse([hx0, hy0, hx1, hy1], fill=skin)
        back = 0.6 if style in ("medium", "long") else 0.45
        d.chord([hx0 - hw * grow, hy0 - hh * grow, hx1 + hw * grow, hy1 + hh * grow], 120, 360, fill=hair)
        d.ellipse([hx0 - hw * grow, hy0 - hh * grow, hx0 + hw * back, hy1 - hh * 0.15], fill=hair)
    else:  # front
        sides = 0.3 if style in ("short", "buzz") else 0.0  # longer hair frames the face
        d.ellipse([hx0 - hw * grow, hy0 - hh * grow, hx1 + hw * grow, hy1 - hh * sides], fill=hair)
        d.ellipse([hx0 + hw * 0.1, hy0 + hh * hairline, hx1 - hw * 0.1, hy1], fill=skin)
        eye_y = hy0 + hh * 0.58
        for ex in (0.35, 0.65):  # tiny dark eyes: the front view has a face
            _disc(d, (hx0 + hw * ex, eye_y), max(1.0, hw * 0.05), (40, 30, 30, 255))

    if a.hat == "cap":
        col, brim = a.hat_color + (255,), _shade(a.hat_color, 0.8) + (255,)
        d.chord([hx0 - hw * 0.06, hy0 - hh * 0.08, hx1 + hw * 0.06, hy0 + hh * 0.75], 180, 360, fill=col)
        if pose.facing == "side":
            d.rectangle([hx1 - hw * 0.2, hy0 + hh * 0.28, hx1 + hw * 0.35, hy0 + hh * 0.36], fill=brim)
        elif pose.facing == "front":
            d.ellipse([hx0 - hw * 0.05, hy0 + hh * 0.26, hx1 + hw * 0.05, hy0 + hh * 0.42], fill=brim)
    elif a.hat == "beanie":
        d.chord([hx0 - hw * 0.08, hy0 - hh * 0.15, hx1 + hw * 0.08, hy0 + hh * 0.95], 180, 360,
                fill=a.hat_color + (255,))


def _person_layer(size: tuple[int, int], a: PersonAttributes, pose: _Pose, cx: float, top: float,
                  ph: float) -> Image.Image:
    """Transparent canvas-sized layer with the person; mirrored if requested."""
    layer = Image.new("RGBA", size, (0, 0, 0, 0))
    width = size[0]
    _draw_person(layer, a, pose, width - cx if pose.mirror else cx, top, ph)
    if pose.mirror:
        layer = layer.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return layer


def _random_pose(rng: np.random.Generator, facing_name: str) -> _Pose:
    """Map a facing direction to a drawable pose with a random walking phase."""
    if facing_name in ("left", "right"):
        return _Pose("side", facing_name == "left", float(rng.uniform(0, 2 * math.pi)), float(rng.uniform(0.15, 0.4)))
    return _Pose(facing_name, bool(rng.random() < 0.5), float(rng.uniform(0, 2 * math.pi)), 0.0)


# ---------------------------------------------------------------------------
# Rendering one image
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Framing:
    """Where the detector box puts the person (fractions of the crop)."""

    height: float  # body height / crop height
    top: float  # head top / crop height
    center: float  # body centre x / crop width


def _normal_framing(rng: np.random.Generator, a: PersonAttributes) -> _Framing:
    """Detector-like box: tight-ish around the person, with scale / shift jitter."""
    height = float(rng.uniform(0.8, 0.98) * a.stature)
    slack = 1.0 - height
    top = float(rng.uniform(-0.02, max(0.0, slack * 0.8)))
    return _Framing(height, top, float(0.5 + rng.uniform(-0.13, 0.13)))


class _Renderer:
    """Renders images for one generation; caches per-camera panoramas."""

    def __init__(self, seed: int, num_cameras: int, height: int, width: int):
        self.seed, self.height, self.width = seed, height, width
        self.cw, self.ch = width * _SUPERSAMPLE, height * _SUPERSAMPLE
        self.cameras = {c: camera_style(c, seed) for c in range(1, num_cameras + 1)}
        self._panoramas: dict[int, Image.Image] = {}

    def panorama(self, cam: int) -> Image.Image:
        if cam not in self._panoramas:
            self._panoramas[cam] = _scene_panorama(cam, self.seed, self.ch, self.cw)
        return self._panoramas[cam]

    def background(self, rng: np.random.Generator, cam: int, zoom: float) -> Image.Image:
        """A window of the camera's panorama plus per-image clutter."""
        pano = self.panorama(cam)
        crop_h = pano.height * rng.uniform(0.6, 0.77) / zoom
        crop_h = min(crop_h, pano.height)
        crop_w = crop_h * self.cw / self.ch
        x0 = rng.uniform(0, pano.width - crop_w)
        y0 = rng.uniform(0, pano.height - crop_h)
        bg = pano.resize((self.cw, self.ch), Image.Resampling.BILINEAR, box=(x0, y0, x0 + crop_w, y0 + crop_h))
        d = ImageDraw.Draw(bg)
        for _ in range(int(rng.poisson(1.5))):  # bins, signs, far-away objects
            x, y = rng.uniform(0, self.cw), rng.uniform(0.1 * self.ch, self.ch)
            s = self.cw * rng.uniform(0.08, 0.35)
            col = _choice(rng, _TOP_COLORS) if rng.random() < 0.6 else _choice(rng, _BAG_COLORS)
            if rng.random() < 0.5:
                d.rectangle([x, y, x + s, y + s * rng.uniform(0.4, 2.0)], fill=col)
            else:
                d.ellipse([x, y, x + s, y + s], fill=col)
        return bg.convert("RGBA")

    def add_person(self, canvas: Image.Image, a: PersonAttributes, pose: _Pose, framing: _Framing) -> None:
        ph = framing.height * self.ch
        layer = _person_layer(canvas.size, a, pose, framing.center * self.cw, framing.top * self.ch, ph)
        canvas.alpha_composite(layer)

    def add_bystander(self, rng: np.random.Generator, canvas: Image.Image, front: bool) -> None:
        """Another (random, unnamed) person partly in the box: behind or in front."""
        a = _sample_attributes(rng)
        pose = _random_pose(rng, _FACINGS[int(rng.integers(0, 4))])
        side = 1 if rng.random() < 0.5 else -1
        if front:  # occluder: overlaps the main person's side, at most ~40%
            framing = _Framing(float(rng.uniform(0.85, 1.1)), float(rng.uniform(-0.05, 0.15)),
                               0.5 + side * float(rng.uniform(0.5, 0.65)))
        else:
            framing = _Framing(float(rng.uniform(0.5, 0.9)), float(rng.uniform(-0.05, 0.25)),
                               0.5 + side * float(rng.uniform(0.35, 0.7)))
        self.add_person(canvas, a, pose, framing)

    def add_occluder(self, rng: np.random.Generator, canvas: Image.Image, framing: _Framing) -> None:
        """Pole, car, sign or person in front of the main person (~10-40% covered)."""
        d = ImageDraw.Draw(canvas)
        kind = _choice(rng, (("pole", 0.3), ("car", 0.3), ("sign", 0.2), ("person", 0.2)))
        body_top, body_h = framing.top * self.ch, framing.height * self.ch
        if kind == "pole":
            w = self.cw * rng.uniform(0.08, 0.17)
            x = framing.center * self.cw + rng.uniform(-0.25, 0.25) * self.cw - w / 2
            col = _rand_color(rng, (120, 120, 125), 40)
            d.rectangle([x, 0, x + w, self.ch], fill=col + (255,))
            d.rectangle([x + w * 0.15, 0, x + w * 0.35, self.ch], fill=_shade(col, 1.3) + (255,))
        elif kind == "car":
            cover = rng.uniform(0.15, 0.38)
            y = body_top + body_h * (1 - cover)
            col = _choice(rng, _TOP_COLORS)
            d.rounded_rectangle([-self.cw * 0.2, y, self.cw * 1.2, self.ch + 10], radius=self.cw * 0.15,
                                fill=col + (255,))
            d.rectangle([-10, y + (self.ch - y) * 0.3, self.cw + 10, y + (self.ch - y) * 0.45],
                        fill=_shade(col, 0.6) + (255,))
        elif kind == "sign":
            w = self.cw * rng.uniform(0.3, 0.45)
            left = rng.random() < 0.5
            x = -5 if left else self.cw - w + 5
            y = body_top + body_h * rng.uniform(0.15, 0.5)
            h = body_h * rng.uniform(0.2, 0.35)
            d.rectangle([x, y, x + w, y + h], fill=_choice(rng, _BAG_COLORS) + (255,))
            d.rectangle([x + w * 0.15, y + h * 0.3, x + w * 0.85, y + h * 0.45], fill=(240, 240, 240, 255))
        else:
            self.add_bystander(rng, canvas, front=True)

    def finish(self, rng: np.random.Generator, canvas: Image.Image, cam: int) -> Image.Image:
        """Camera optics and colour: downsample, cast, lighting, blur, noise."""
        style = self.cameras[cam]
        img = canvas.convert("RGB").resize((self.width, self.height), Image.Resampling.BOX)
        if style.resolution < 1.0:
            small = (max(8, int(self.width * style.resolution)), max(16, int(self.height * style.resolution)))
            img = img.resize(small, Image.Resampling.BILINEAR)
            img = img.resize((self.width, self.height), Image.Resampling.BILINEAR)
        x = np.asarray(img, dtype=np.float32) / 255.0
        j = _IMAGE_LIGHT_JITTER
        gain = np.array(style.gain) * np.exp(rng.normal(0, 0.03 * j, 3))
        x = x * gain + np.array(style.offset)
        lum = x @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        x = lum[..., None] + style.saturation * (x - lum[..., None])
        x = (x - 0.5) * style.contrast + 0.5
        yy = np.linspace(-0.5, 0.5, self.height, dtype=np.float32)[:, None]
        xx = np.linspace(-0.5, 0.5, self.width, dtype=np.float32)[None, :]
        exposure = style.brightness * math.exp(rng.normal(0, 0.08 * j))
        light = exposure * (1 + rng.normal(0, 0.15 * j) * yy + rng.normal(0, 0.15 * j) * xx)
        x = np.clip(x * light[..., None], 0, 1) ** style.gamma
        img = Image.fromarray((x * 255 + 0.5).astype(np.uint8))
        radius = style.blur + (rng.uniform(0, 0.8) if rng.random() < 0.4 else 0.0)
        if radius > 0.05:
            img = img.filter(ImageFilter.GaussianBlur(radius))
        noisy = np.asarray(img, dtype=np.float32) + rng.normal(0, style.noise, (self.height, self.width, 3))
        return Image.fromarray(np.clip(noisy + 0.5, 0, 255).astype(np.uint8))

    def render_person(self, rng: np.random.Generator, cam: int, a: PersonAttributes, facing: str,
                      framing: _Framing | None = None, occlusion: float = 0.22) -> Image.Image:
        """A normal detection of person ``a`` seen by camera ``cam``."""
        framing = framing or _normal_framing(rng, a)
        canvas = self.background(rng, cam, zoom=framing.height)
        if rng.random() < 0.25:
            self.add_bystander(rng, canvas, front=False)
        self.add_person(canvas, a, _random_pose(rng, facing), framing)
        if rng.random() < occlusion:
            self.add_occluder(rng, canvas, framing)
        return self.finish(rng, canvas, cam)

    def render_empty(self, rng: np.random.Generator, cam: int) -> Image.Image:
        """A false detection: background and clutter, maybe a sliver of someone."""
        canvas = self.background(rng, cam, zoom=float(rng.uniform(0.6, 1.0)))
        if rng.random() < 0.5:
            self.add_bystander(rng, canvas, front=False)
        return self.finish(rng, canvas, cam)


# ---------------------------------------------------------------------------
# Planning: which images exist, their names and splits
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _ImageSpec:
    split: str
    name: str
    pid: int  # -1 junk, 0 distractor, else the person id
    cam: int
    kind: str  # "person", "distractor", "junk"
    key: tuple[int, ...]  # random stream of this image


def _market_name(pid: int, cam: int, seq: int, frame: int, box: int) -> str:
    pid_str = "-1" if pid < 0 else f"{pid:04d}"
    return f"{pid_str}_c{cam}s{seq}_{frame:06d}_{box:02d}.jpg"


def _plan_identity(seed: int, pid: int, test: bool, num_cameras: int,
                   images_per_id: tuple[int, int]) -> list[_ImageSpec]:
    """Images of one id: >= 2 cameras, >= 2 images per camera (so every query
    keeps a cross-camera match in the gallery), one tracklet per camera."""
    rng = _rng(seed, _TAG_LAYOUT, pid)
    n = int(rng.integers(images_per_id[0], images_per_id[1] + 1))
    max_cams = min(num_cameras, n // 2)
    k = int(rng.integers(2, max_cams + 1))
    cams = sorted(int(c) + 1 for c in rng.choice(num_cameras, size=k, replace=False))
    counts = np.full(k, 2) + rng.multinomial(n - 2 * k, np.full(k, 1.0 / k))
    specs = []
    for cam, count in zip(cams, counts):
        seq = int(rng.integers(1, 7))
        step = int(rng.integers(5, 60))
        start = int(rng.integers(0, 999_999 - step * int(count)))
        query_index = int(rng.integers(0, count)) if test else -1
        for j in range(int(count)):
            name = _market_name(pid, cam, seq, start + step * j, int(rng.choice([1, 1, 1, 2, 3, 4])))
            split = ("query" if j == query_index else "bounding_box_test") if test else "bounding_box_train"
            specs.append(_ImageSpec(split, name, pid, cam, "person", (_TAG_IMAGE, pid, cam, j)))
    return specs


def _plan_extras(seed: int, tag: int, count: int, pid: int, num_cameras: int, used: set[str]) -> list[_ImageSpec]:
    """Distractors (pid 0) or junk (pid -1); names bumped until unique."""
    specs = []
    kind = "distractor" if pid == 0 else "junk"
    for i in range(count):
        rng = _rng(seed, tag, i, 0)
        cam = int(rng.integers(1, num_cameras + 1))
        seq, frame, box = int(rng.integers(1, 7)), int(rng.integers(0, 1_000_000)), int(rng.integers(1, 6))
        name = _market_name(pid, cam, seq, frame, box)
        while name in used:  # deterministic: plan order is fixed
            box = box % 99 + 1
            frame = (frame + (1 if box == 1 else 0)) % 1_000_000
            name = _market_name(pid, cam, seq, frame, box)
        used.add(name)
        specs.append(_ImageSpec("bounding_box_test", name, pid, cam, kind, (tag, i, 1)))
    return specs


def _plan(args: dict) -> list[_ImageSpec]:
    seed, ntr, nte = args["seed"], args["num_train_ids"], args["num_test_ids"]
    specs: list[_ImageSpec] = []
    for pid in range(1, ntr + nte + 1):
        specs += _plan_identity(seed, pid, pid > ntr, args["num_cameras"], tuple(args["images_per_id"]))
    used = {s.name for s in specs}
    specs += _plan_extras(seed, _TAG_DISTRACTOR, args["num_distractors"], 0, args["num_cameras"], used)
    specs += _plan_extras(seed, _TAG_JUNK, args["num_junk"], -1, args["num_cameras"], used)
    return specs


def _render_spec(renderer: _Renderer, spec: _ImageSpec, args: dict) -> Image.Image:
    """Draw one planned image from its own random stream."""
    seed = args["seed"]
    rng = _rng(seed, *spec.key)
    if spec.kind == "person":
        # People tend to cross a camera in one direction (a Market tracklet).
        track = _rng(seed, _TAG_TRACK, spec.pid, spec.cam)
        dominant = _FACINGS[int((track.integers(0, 4) + renderer.cameras[spec.cam].facing_bias) % 4)]
        facing = dominant if rng.random() < 0.7 else _FACINGS[int(rng.integers(0, 4))]
        return renderer.render_person(rng, spec.cam, person_attributes(spec.pid, seed), facing)
    num_ids = args["num_train_ids"] + args["num_test_ids"]
    if spec.kind == "distractor":
        mode = _choice(rng, (("person", 0.55), ("empty", 0.25), ("partial", 0.2)))
        if mode == "empty":
            return renderer.render_empty(rng, spec.cam)
        a = person_attributes(_DISTRACTOR_PERSON_BASE + spec.key[1], seed)
        facing = _FACINGS[int(rng.integers(0, 4))]
        if mode == "person":
            return renderer.render_person(rng, spec.cam, a, facing)
        # Partial: box covers only the upper or lower half of a stranger.
        scale = rng.uniform(1.4, 1.9)
        tops = [rng.uniform(-0.9, -0.6), rng.uniform(0.0, 0.1)]  # lower body only / upper body only
        framing = _Framing(float(scale), float(rng.choice(tops)), float(rng.uniform(0.35, 0.65)))
        return renderer.render_person(rng, spec.cam, a, facing, framing, occlusion=0.0)
    # Junk: badly cropped fragment of anybody (dataset people included, as in
    # Market where junk boxes are failed detections of the same crowd).
    if rng.random() < 0.5 and num_ids:
        pid = int(rng.integers(1, num_ids + 1))
    else:
        pid = _DISTRACTOR_PERSON_BASE + 500_000 + spec.key[1]
    a = person_attributes(pid, seed)
    mode = _choice(rng, (("zoom", 0.4), ("edge", 0.35), ("tiny", 0.25)))
    if mode == "zoom":
        framing = _Framing(float(rng.uniform(2.0, 3.2)), float(-rng.uniform(0.2, 1.6)), float(rng.uniform(0.3, 0.7)))
    elif mode == "edge":
        framing = _Framing(float(rng.uniform(0.8, 1.0)), float(rng.uniform(0.0, 0.1)), float(rng.choice([-0.15, 1.15])))
    else:
        framing = _Framing(float(rng.uniform(0.25, 0.4)), float(rng.uniform(0.2, 0.6)), float(rng.uniform(0.2, 0.8)))
    return renderer.render_person(rng, spec.cam, a, _FACINGS[int(rng.integers(0, 4))], framing, occlusion=0.0)


# ---------------------------------------------------------------------------
# Writing the set atomically
# ---------------------------------------------------------------------------


def _validate(args: dict) -> None:
    if not isinstance(args["seed"], int) or args["seed"] < 0:
        raise ValueError(f"seed must be a non-negative int, got {args['seed']!r}")
    if not 2 <= args["num_cameras"] <= 9:
        raise ValueError("num_cameras must be in 2..9 (Market names have one camera digit)")
    if args["num_train_ids"] < 0 or args["num_test_ids"] < 0:
        raise ValueError("num_train_ids and num_test_ids must be >= 0")
    if args["num_train_ids"] + args["num_test_ids"] > 9999:
        raise ValueError("at most 9999 ids fit the 4-digit Market person id")
    lo, hi = args["images_per_id"]
    if not 4 <= lo <= hi:
        raise ValueError("images_per_id must be (lo, hi) with 4 <= lo <= hi (two cameras x two images)")
    if args["num_distractors"] < 0 or args["num_junk"] < 0:
        raise ValueError("num_distractors and num_junk must be >= 0")
    if args["height"] < 16 or args["width"] < 8:
        raise ValueError("height must be >= 16 and width >= 8")


def _read_manifest(root: str) -> dict | None:
    try:
        with open(os.path.join(root, MANIFEST), encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _check_existing(root: str, args: dict) -> None:
    """Accept an existing ``root`` only if it was built with these arguments."""
    manifest = _read_manifest(root) if os.path.isdir(root) else None
    if manifest is None:
        raise ValueError(f"{root!r} exists but has no readable {MANIFEST} from this generator; "
                         "refusing to touch it (choose another path or remove it yourself)")
    expected = {"format": FORMAT_NAME, "version": FORMAT_VERSION, **args}
    found = {"format": manifest.get("format"), "version": manifest.get("version"), **manifest.get("args", {})}
    keys = sorted(set(expected) | set(found))
    diffs = [f"{k}: existing={found.get(k)!r}, requested={expected.get(k)!r}"
             for k in keys if found.get(k) != expected.get(k)]
    if diffs:
        raise ValueError(f"{root!r} holds a synthetic set built with different arguments ({'; '.join(diffs)}); "
                         "refusing to overwrite it")


def _clean_stale_temps(root: str) -> None:
    """Remove temp dirs of *crashed* runs of this generator for this root.

    Only directories named ``<root>.tmp-<8 hex>`` whose marker file names a
    process on this host that no longer exists are removed; anything else
    (including a concurrent run's directory) is left alone.
    """
    parent, base = os.path.split(root)
    pattern = re.compile(re.escape(base) + r"\.tmp-[0-9a-f]{8}$")
    try:
        entries = sorted(os.listdir(parent or "."))
    except OSError:
        return
    for entry in entries:
        if not pattern.fullmatch(entry):
            continue
        path = os.path.join(parent, entry)
        try:
            with open(os.path.join(path, _INCOMPLETE_MARKER), encoding="utf-8") as f:
                owner = json.load(f)
            if owner.get("host") != socket.gethostname():
                continue
            os.kill(int(owner["pid"]), 0)
            continue  # owner still alive
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue


def _count(specs: list[_ImageSpec]) -> dict:
    counts = {}
    for split in SPLITS:
        items = [s for s in specs if s.split == split]
        counts[split] = {
            "images": len(items),
            "ids": len({s.pid for s in items if s.pid > 0}),
            "distractors": sum(s.pid == 0 for s in items),
            "junk": sum(s.pid < 0 for s in items),
        }
    return counts


def _build(tmp: str, args: dict) -> None:
    """Render every planned image into ``tmp`` and write the manifest."""
    specs = _plan(args)
    for split in SPLITS:
        os.makedirs(os.path.join(tmp, split))
    renderer = _Renderer(args["seed"], args["num_cameras"], args["height"], args["width"])
    for spec in specs:
        image = _render_spec(renderer, spec, args)
        image.save(os.path.join(tmp, spec.split, spec.name), "JPEG", quality=_JPEG_QUALITY)
    manifest = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "args": args, "counts": _count(specs)}
    with open(os.path.join(tmp, MANIFEST), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
        f.write("\n")


def generate_synthetic_market(
    root: str,
    *,
    seed: int = 0,
    num_train_ids: int = 450,
    num_test_ids: int = 150,
    num_cameras: int = 6,
    images_per_id: tuple[int, int] = (4, 8),
    num_distractors: int = 300,
    num_junk: int = 100,
    height: int = 128,
    width: int = 64,
) -> str:
    """Writes the set to `root` (if absent) and returns root.

    Layout and names follow Market-1501 exactly (see the module docstring).
    Train ids are ``1..num_train_ids``, test ids follow. Each id has
    ``images_per_id`` images (uniform, inclusive) over >= 2 cameras with >= 2
    images per camera; for test ids one image per camera goes to ``query`` and
    the rest to ``bounding_box_test``, together with ``num_distractors``
    (pid ``0000``) and ``num_junk`` (pid ``-1``) images.

    Deterministic: the same arguments give byte-identical files. If ``root``
    exists with a matching ``manifest.json`` it is returned untouched; if its
    manifest is missing or differs a ``ValueError`` names the path and the
    differing keys. Nothing is ever overwritten or deleted, and the set
    appears at ``root`` only once complete.
    """
    root_str = os.fspath(root)
    root_norm = os.path.normpath(os.path.abspath(root_str))
    args = {
        "seed": seed,
        "num_train_ids": int(num_train_ids),
        "num_test_ids": int(num_test_ids),
        "num_cameras": int(num_cameras),
        "images_per_id": [int(images_per_id[0]), int(images_per_id[1])],
        "num_distractors": int(num_distractors),
        "num_junk": int(num_junk),
        "height": int(height),
        "width": int(width),
    }
    _validate(args)
    if os.path.lexists(root_norm):
        _check_existing(root_norm, args)
        return root_str

    parent = os.path.dirname(root_norm)
    os.makedirs(parent, exist_ok=True)
    _clean_stale_temps(root_norm)
    while True:
        tmp = f"{root_norm}.tmp-{secrets.token_hex(4)}"
        try:
            os.mkdir(tmp)
            break
        except FileExistsError:
            continue
    try:
        with open(os.path.join(tmp, _INCOMPLETE_MARKER), "w", encoding="utf-8") as f:
            json.dump({"pid": os.getpid(), "host": socket.gethostname()}, f)
        _build(tmp, args)
        os.remove(os.path.join(tmp, _INCOMPLETE_MARKER))
        try:
            os.rename(tmp, root_norm)
        except OSError:
            # Someone else created root meanwhile (e.g. a concurrent run): keep
            # theirs if it is the same set, otherwise report it.
            if not os.path.lexists(root_norm):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
            _check_existing(root_norm, args)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root_str


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m personvit_jax.data.synthetic --out=DIR [...]``"""
    parser = argparse.ArgumentParser(description="Generate a synthetic Market-1501-style re-id set.")
    parser.add_argument("--out", required=True, help="root directory to create")
    # Defaults come from generate_synthetic_market's signature: one place for them.
    defaults = {k: p.default for k, p in inspect.signature(generate_synthetic_market).parameters.items()}
    for name in ("seed", "num_train_ids", "num_test_ids", "num_cameras", "num_distractors",
                 "num_junk", "height", "width"):
        parser.add_argument(f"--{name}", type=int, default=defaults[name])
    parser.add_argument("--images_per_id", type=int, nargs=2, default=defaults["images_per_id"],
                        metavar=("LO", "HI"))
    ns = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        root = generate_synthetic_market(
            ns.out, seed=ns.seed, num_train_ids=ns.num_train_ids, num_test_ids=ns.num_test_ids,
            num_cameras=ns.num_cameras, images_per_id=tuple(ns.images_per_id),
            num_distractors=ns.num_distractors, num_junk=ns.num_junk, height=ns.height, width=ns.width)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    counts = (_read_manifest(root) or {}).get("counts", {})
    print(f"{root} ({time.perf_counter() - start:.1f} s)")
    for split in SPLITS:
        c = counts.get(split, {})
        print(f"  {split:<20} images={c.get('images')} ids={c.get('ids')} "
              f"distractors={c.get('distractors')} junk={c.get('junk')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
