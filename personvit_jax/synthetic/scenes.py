"""Cameras: each one's colour / optics style and its scene (a fixed background panorama).

*Nuisance* per camera (:func:`camera_style`): a distinct scene (mall, street, park, corridor, ...)
seen through a fixed panorama, a colour cast / brightness / contrast / saturation / gamma, optical
quality (blur, noise, low resolution) and the direction most people walk in. Same-camera
background and cast dominate raw colour statistics, as in real footage.

*Domains*: the cameras of a set are drawn from its own seed (the original domain). With a
``style_seed`` they come from that seed's own streams instead and share a domain-wide shift
(:class:`DomainShift`: white balance, exposure, contrast, saturation, and a subset of the scene
types), like a second camera network at another site: the same people look measurably different
there, for domain-adaptation experiments. ``style_seed=None`` leaves every draw of the original
domain as it was.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw

from personvit_jax.synthetic.people import BAG_COLORS, FACINGS, RGB, TOP_COLORS, shaded
from personvit_jax.synthetic.streams import TAG_CAMERA, TAG_CAMERA_SET, TAG_DOMAIN, choice, stream

# Scales every per-camera colour nuisance (cast, brightness, contrast,
# saturation, gamma). 0.25: colour histograms still fail across cameras
# (backgrounds dominate them), and a small ViT learns identity from scratch
# within a CPU budget (at 0.7 it could not; see the package docstring).
_CAST_STRENGTH = 0.25
# Background texture: textured scenes spread their colour mass over many
# histogram bins, like real pavement and walls, instead of a few flat ones.
_BG_BLOTCH = 0.15
_BG_GRAIN = 4.0
# Scene styles; each camera gets a different one (cycled if more cameras).
SCENES = ("mall", "street", "park", "corridor", "plaza", "glass", "underpass")
# A style domain shows this many of the scene types (its own choice of them).
_DOMAIN_SCENE_TYPES = 4


def _style_stream(seed: int, style_seed: Optional[int], *keys: int) -> np.random.Generator:
    """Stream of camera styles and scenes: the set's own seed in the original domain, else the
    style seed's domain space (never equal to any seed's original streams)."""
    if style_seed is None:
        return stream(seed, *keys)
    return stream(style_seed, TAG_DOMAIN, *keys)


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
    facing_bias: int  # index into FACINGS most people walk towards here


def camera_style(cam: int, seed: int, style_seed: Optional[int] = None) -> CameraStyle:
    """Nuisance parameters of camera ``cam`` (1-based); strong and distinct. ``style_seed``:
    the camera of that style domain instead of the set's original one (see the module)."""
    shift = None if style_seed is None else domain_shift(style_seed)
    scenes = SCENES if shift is None else shift.scenes
    order = _style_stream(seed, style_seed, TAG_CAMERA_SET).permutation(len(scenes))
    rng = _style_stream(seed, style_seed, TAG_CAMERA, cam)
    k = _CAST_STRENGTH
    gain = np.exp(rng.normal(0.0, 0.16 * k, 3))
    gain /= np.exp(np.log(gain).mean())  # the cast shifts hue; brightness is separate
    style = CameraStyle(
        scene=scenes[int(order[(cam - 1) % len(scenes)])],
        gain=tuple(float(g) for g in gain),  # type: ignore[arg-type]
        offset=tuple(float(o) for o in rng.normal(0.0, 0.035 * k, 3)),  # type: ignore[arg-type]
        brightness=float(np.exp(k * rng.uniform(-0.35, 0.25))),
        contrast=float(1.0 + k * rng.uniform(-0.3, 0.25)),
        saturation=float(1.0 + k * rng.uniform(-0.45, 0.25)),
        gamma=float(np.exp(k * rng.uniform(-0.22, 0.22))),
        blur=float(rng.uniform(0.0, 0.6)),
        noise=float(rng.uniform(1.0, 5.0)),
        resolution=float(rng.choice([1.0, 1.0, 0.75, 0.6])),
        facing_bias=int(rng.integers(0, len(FACINGS))),
    )
    return style if shift is None else shift.apply(style)


@dataclasses.dataclass(frozen=True)
class DomainShift:
    """What every camera of one style domain shares on top of its own style (one camera make,
    one site's lighting and surroundings)."""

    gain: tuple[float, float, float]  # white balance (geometric mean 1: a hue shift)
    brightness: float  # exposure factor
    contrast: float
    saturation: float
    scenes: tuple[str, ...]  # the scene types its cameras show

    def apply(self, style: CameraStyle) -> CameraStyle:
        return dataclasses.replace(
            style, gain=tuple(float(a * b) for a, b in zip(style.gain, self.gain)),
            brightness=style.brightness * self.brightness, contrast=style.contrast * self.contrast,
            saturation=style.saturation * self.saturation)


def domain_shift(style_seed: int) -> DomainShift:
    """The shared shift of style domain ``style_seed``. Its sizes are fixed and only the
    directions random, so that any two domains differ clearly: the white balance moves by
    0.12 in log gain (about twice one camera's own cast), the exposure by 10-25% up or down."""
    rng = stream(style_seed, TAG_DOMAIN)
    direction = rng.normal(0.0, 1.0, 3)
    direction -= direction.mean()  # orthogonal to grey: a colour temperature, not brightness
    log_gain = 0.12 * direction / np.linalg.norm(direction)
    sign = 1.0 if rng.random() < 0.5 else -1.0
    scenes = tuple(SCENES[int(i)] for i in rng.permutation(len(SCENES))[:_DOMAIN_SCENE_TYPES])
    return DomainShift(
        gain=tuple(float(g) for g in np.exp(log_gain)),  # type: ignore[arg-type]
        brightness=float(np.exp(sign * rng.uniform(0.1, 0.25))),
        contrast=float(1.0 + rng.uniform(-0.15, 0.1)),
        saturation=float(1.0 + rng.uniform(-0.25, 0.1)),
        scenes=scenes)


def _lowfreq_noise(rng: np.random.Generator, height: int, width: int,
                   cells: tuple[int, int]) -> np.ndarray:
    """Smooth noise in [-1, 1] (blotchy lighting / dirt) via upsampled random grid."""
    grid = rng.uniform(0, 255, cells).astype(np.uint8)
    image = Image.fromarray(grid, "L").resize((width, height), Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.float32) / 127.5 - 1.0


def rand_color(rng: np.random.Generator, base: Sequence[float], spread: float) -> RGB:
    """A colour near ``base``: per-camera variation of a scene element."""
    return tuple(int(np.clip(b + rng.normal(0, spread), 0, 255)) for b in base)  # type: ignore


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


def _pick_material(rng: np.random.Generator, colors: Sequence[RGB], weights: Sequence[float],
                   spread: float) -> RGB:
    """A shared material colour chosen with the scene's preferences."""
    return rand_color(rng, choice(rng, list(zip(colors, weights))), spread)


def _decorate_segment(d: ImageDraw.ImageDraw, rng: np.random.Generator, scene: str, x0: float,
                      x1: float, horizon: int, wall: RGB, cw: int, ch: int) -> None:
    """Scene-typical structure (windows, doors, trees, ...) on one wall segment."""
    w = x1 - x0
    if scene == "mall" and rng.random() < 0.7:  # shop window with goods and a sign
        d.rectangle([x0 + w * 0.08, horizon * 0.3, x1 - w * 0.08, horizon], fill=shaded(wall, 0.5))
        for _ in range(5):
            gx, gy = x0 + rng.uniform(0.1, 0.8) * w, horizon * rng.uniform(0.35, 0.85)
            s = cw * rng.uniform(0.05, 0.15)
            d.rectangle([gx, gy, gx + s, gy + s], fill=choice(rng, TOP_COLORS))
        d.rectangle([x0 + w * 0.08, horizon * 0.12, x1 - w * 0.08, horizon * 0.24],
                    fill=choice(rng, BAG_COLORS))
    elif scene in ("street", "plaza"):  # window grid
        step_x, step_y = cw * rng.uniform(0.35, 0.55), ch * rng.uniform(0.16, 0.24)
        glass = rand_color(rng, (45, 50, 60), 15)
        for wx in np.arange(x0 + step_x * 0.2, x1 - step_x * 0.6, step_x):
            for wy in np.arange(horizon * 0.05, horizon - step_y * 0.8, step_y):
                d.rectangle([wx, wy, wx + step_x * 0.6, wy + step_y * 0.6], fill=glass)
    elif scene == "park":  # trees
        for _ in range(int(rng.integers(0, 3))):
            r = cw * rng.uniform(0.25, 0.6)
            tx, ty = rng.uniform(x0, x1), horizon - r * rng.uniform(0.4, 1.0)
            d.rectangle([tx - r * 0.08, ty, tx + r * 0.08, horizon + 4], fill=(70, 50, 35))
            d.ellipse([tx - r, ty - r, tx + r, ty + r], fill=rand_color(rng, (50, 90, 45), 15))
    elif scene == "corridor":  # door and ceiling light
        if rng.random() < 0.6:
            d.rectangle([x0 + w * 0.3, horizon * 0.3, x0 + w * 0.3 + cw * 0.4, horizon],
                        fill=rand_color(rng, (110, 80, 55), 20))
        d.rectangle([x0 + w * 0.2, 0, x0 + w * 0.6, ch * 0.04], fill=(250, 245, 225))
    elif scene == "glass":  # mullions and a reflection
        for mx in np.arange(x0, x1, cw * 0.5):
            d.rectangle([mx, 0, mx + 4, horizon], fill=(55, 58, 62))
        rx = rng.uniform(x0, x1)
        d.polygon([(rx, 0), (rx + cw * 0.2, 0), (rx - cw * 0.1, horizon), (rx - cw * 0.3, horizon)],
                  fill=shaded(wall, 1.2))
    elif scene == "underpass":  # pillar
        px = rng.uniform(x0, x1)
        d.rectangle([px, 0, px + cw * 0.22, horizon + ch * 0.08], fill=shaded(wall, 1.15))
    if scene in ("street", "plaza", "underpass") and rng.random() < 0.35:  # poster / graffiti
        px, py = rng.uniform(x0, x1), horizon * rng.uniform(0.4, 0.8)
        d.rectangle([px, py, px + cw * 0.25, py + ch * 0.12], fill=choice(rng, TOP_COLORS))


def scene_panorama(cam: int, seed: int, canvas_h: int, canvas_w: int,
                   style_seed: Optional[int] = None) -> Image.Image:
    """Wide static background of one camera; each image crops a window of it.

    The panorama is a row of wall segments of shared materials over a ground
    plane, decorated in the camera's scene style. A fixed panorama makes the
    background a *camera* cue, as in real footage, while varying segments keep
    two crops of one camera from being near-identical.
    """
    style = camera_style(cam, seed, style_seed)
    rng = _style_stream(seed, style_seed, TAG_CAMERA, cam, 1)
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
        d.line([0, y, pw, y], fill=shaded(ground, 0.85), width=2)

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

