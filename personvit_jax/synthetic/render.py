"""Rendering one image: a window of the camera's panorama, clutter, maybe a bystander, the person
in a detector-like box, maybe an occluder, then the camera's optics and colour.

Drawn at twice the output size and box-filtered down (cheap anti-aliasing of the polygons).
*Nuisance* per image: facing direction (a person tends to walk the same way through one camera,
like a Market tracklet), walking phase, mirror flip, detector-like scale and translation jitter of
the box, background clutter and far-away people, partial occlusion (pole, car, sign, another
person) covering roughly 10-40% of the person, illumination gradient, blur, noise. Nuisance shifts
colours but never erases them, and occluders never cover most of the person, so identity stays
visible across cameras.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from personvit_jax.synthetic.people import (BAG_COLORS, FACINGS, TOP_COLORS, PersonAttributes,
                                            Pose, garments_only, person_attributes, person_layer,
                                            random_pose, sample_attributes, shaded)
from personvit_jax.synthetic.plan import DISTRACTOR_PERSON_BASE, JUNK_PERSON_BASE, ImageSpec
from personvit_jax.synthetic.scenes import CameraStyle, camera_style, rand_color, scene_panorama
from personvit_jax.synthetic.streams import TAG_TRACK, choice, stream

# Render at twice the output resolution and box-filter down: cheap
# anti-aliasing for the polygon drawing.
_SUPERSAMPLE = 2
# Scales the per-image lighting change (exposure, white-balance drift, light
# gradient across the crop) within one camera.
_IMAGE_LIGHT_JITTER = 0.25
# The sanity mode's plain background (mid grey) and the body every person shares there.
_SANITY_BACKGROUND = (128, 128, 128, 255)
_SANITY_BODY_PID = 0


# The parts of the nuisance the sanity mode can remove, one at a time or together.
NUISANCE = ("background", "camera", "people", "extras")


def nuisance_removed(sanity) -> frozenset:
    """The parts of NUISANCE a `sanity` argument removes: True = all; False / '' = none; a
    comma-separated string (or a list) of parts = those (`check_sanity` canonicalises)."""
    if sanity is True:
        return frozenset(NUISANCE)
    if not sanity:
        return frozenset()
    parts = sanity.split(",") if isinstance(sanity, str) else list(sanity)
    return frozenset(p.strip() for p in parts if p.strip())


def check_sanity(sanity):
    """The canonical form of a `sanity` argument (True, False, or the sorted parts joined by
    commas), or a ValueError naming what is wrong."""
    if isinstance(sanity, bool):
        return sanity
    if not isinstance(sanity, (str, list, tuple)):
        raise ValueError(f"sanity must be True, False or parts of {list(NUISANCE)} (e.g. "
                         f"'background,camera'), got {sanity!r}")
    if isinstance(sanity, str) and sanity.strip() == "all":
        return True
    parts = nuisance_removed(sanity)
    unknown = sorted(parts - set(NUISANCE))
    if unknown:
        raise ValueError(f"sanity={sanity!r}: unknown part(s) {unknown}; expected some of "
                         f"{list(NUISANCE)} (or True / 'all' for every one)")
    if parts == set(NUISANCE):
        return True
    return ",".join(sorted(parts)) if parts else False


@dataclasses.dataclass(frozen=True)
class Framing:
    """Where the detector box puts the person (fractions of the crop)."""

    height: float  # body height / crop height
    top: float  # head top / crop height
    center: float  # body centre x / crop width


def normal_framing(rng: np.random.Generator, a: PersonAttributes) -> Framing:
    """Detector-like box: tight-ish around the person, with scale / shift jitter."""
    height = float(rng.uniform(0.8, 0.98) * a.stature)
    slack = 1.0 - height
    top = float(rng.uniform(-0.02, max(0.0, slack * 0.8)))
    return Framing(height, top, float(0.5 + rng.uniform(-0.13, 0.13)))


class Renderer:
    """Renders the images of one set (seed, output size, style domain); caches the styles and
    panoramas of the cameras it has drawn. Output: RGB PIL images of height x width.

    sanity=True: the nuisance is gone. A plain grey background with no clutter, bystanders or
    occluders, cameras without colour cast, optics, lighting or noise, and people who share one
    body, skin and hair and carry nothing (`people.garments_only`); what remains is garments,
    pose, facing and the detector box. A check of a method: what it cannot learn here, it will
    not learn on the full set either. sanity='background,camera' (any of NUISANCE) removes only
    those parts: which one a method fails on."""

    def __init__(self, seed: int, height: int, width: int, style_seed: Optional[int] = None,
                 sanity: bool = False):
        self.seed, self.height, self.width, self.style_seed = seed, height, width, style_seed
        self.plain = nuisance_removed(sanity)
        self.cw, self.ch = width * _SUPERSAMPLE, height * _SUPERSAMPLE
        self._cameras: dict[int, CameraStyle] = {}
        self._panoramas: dict[int, Image.Image] = {}
        self._body = person_attributes(_SANITY_BODY_PID, seed)

    def camera(self, cam: int) -> CameraStyle:
        if cam not in self._cameras:
            style = camera_style(cam, self.seed, self.style_seed)
            if "camera" in self.plain:  # an ideal sensor; people still cross it in its direction
                style = dataclasses.replace(style, scene="plain", gain=(1.0, 1.0, 1.0),
                                            offset=(0.0, 0.0, 0.0), brightness=1.0,
                                            contrast=1.0, saturation=1.0, gamma=1.0, blur=0.0,
                                            noise=0.0, resolution=1.0)
            self._cameras[cam] = style
        return self._cameras[cam]

    def person(self, pid: int) -> PersonAttributes:
        """The appearance of `pid` in this set (garments only in the sanity mode)."""
        a = person_attributes(pid, self.seed)
        return garments_only(a, self._body) if "people" in self.plain else a

    def panorama(self, cam: int) -> Image.Image:
        if cam not in self._panoramas:
            self._panoramas[cam] = scene_panorama(cam, self.seed, self.ch, self.cw,
                                                  self.style_seed)
        return self._panoramas[cam]

    def background(self, rng: np.random.Generator, cam: int, zoom: float) -> Image.Image:
        """A window of the camera's panorama plus per-image clutter (plain in the sanity
        mode)."""
        if "background" in self.plain:
            return Image.new("RGBA", (self.cw, self.ch), _SANITY_BACKGROUND)
        pano = self.panorama(cam)
        crop_h = pano.height * rng.uniform(0.6, 0.77) / zoom
        crop_h = min(crop_h, pano.height)
        crop_w = crop_h * self.cw / self.ch
        x0 = rng.uniform(0, pano.width - crop_w)
        y0 = rng.uniform(0, pano.height - crop_h)
        bg = pano.resize((self.cw, self.ch), Image.Resampling.BILINEAR,
                         box=(x0, y0, x0 + crop_w, y0 + crop_h))
        d = ImageDraw.Draw(bg)
        for _ in range(int(rng.poisson(1.5))):  # bins, signs, far-away objects
            x, y = rng.uniform(0, self.cw), rng.uniform(0.1 * self.ch, self.ch)
            s = self.cw * rng.uniform(0.08, 0.35)
            col = choice(rng, TOP_COLORS) if rng.random() < 0.6 else choice(rng, BAG_COLORS)
            if rng.random() < 0.5:
                d.rectangle([x, y, x + s, y + s * rng.uniform(0.4, 2.0)], fill=col)
            else:
                d.ellipse([x, y, x + s, y + s], fill=col)
        return bg.convert("RGBA")

    def add_person(self, canvas: Image.Image, a: PersonAttributes, pose: Pose,
                   framing: Framing) -> None:
        ph = framing.height * self.ch
        layer = person_layer(canvas.size, a, pose, framing.center * self.cw, framing.top * self.ch,
                             ph)
        canvas.alpha_composite(layer)

    def add_bystander(self, rng: np.random.Generator, canvas: Image.Image, front: bool) -> None:
        """Another (random, unnamed) person partly in the box: behind or in front."""
        a = sample_attributes(rng)
        pose = random_pose(rng, FACINGS[int(rng.integers(0, 4))])
        side = 1 if rng.random() < 0.5 else -1
        if front:  # occluder: overlaps the main person's side, at most ~40%
            framing = Framing(float(rng.uniform(0.85, 1.1)), float(rng.uniform(-0.05, 0.15)),
                               0.5 + side * float(rng.uniform(0.5, 0.65)))
        else:
            framing = Framing(float(rng.uniform(0.5, 0.9)), float(rng.uniform(-0.05, 0.25)),
                               0.5 + side * float(rng.uniform(0.35, 0.7)))
        self.add_person(canvas, a, pose, framing)

    def add_occluder(self, rng: np.random.Generator, canvas: Image.Image, framing: Framing) -> None:
        """Pole, car, sign or person in front of the main person (~10-40% covered)."""
        d = ImageDraw.Draw(canvas)
        kind = choice(rng, (("pole", 0.3), ("car", 0.3), ("sign", 0.2), ("person", 0.2)))
        body_top, body_h = framing.top * self.ch, framing.height * self.ch
        if kind == "pole":
            w = self.cw * rng.uniform(0.08, 0.17)
            x = framing.center * self.cw + rng.uniform(-0.25, 0.25) * self.cw - w / 2
            col = rand_color(rng, (120, 120, 125), 40)
            d.rectangle([x, 0, x + w, self.ch], fill=col + (255,))
            d.rectangle([x + w * 0.15, 0, x + w * 0.35, self.ch], fill=shaded(col, 1.3) + (255,))
        elif kind == "car":
            cover = rng.uniform(0.15, 0.38)
            y = body_top + body_h * (1 - cover)
            col = choice(rng, TOP_COLORS)
            d.rounded_rectangle([-self.cw * 0.2, y, self.cw * 1.2, self.ch + 10],
                                radius=self.cw * 0.15, fill=col + (255,))
            d.rectangle([-10, y + (self.ch - y) * 0.3, self.cw + 10, y + (self.ch - y) * 0.45],
                        fill=shaded(col, 0.6) + (255,))
        elif kind == "sign":
            w = self.cw * rng.uniform(0.3, 0.45)
            left = rng.random() < 0.5
            x = -5 if left else self.cw - w + 5
            y = body_top + body_h * rng.uniform(0.15, 0.5)
            h = body_h * rng.uniform(0.2, 0.35)
            d.rectangle([x, y, x + w, y + h], fill=choice(rng, BAG_COLORS) + (255,))
            d.rectangle([x + w * 0.15, y + h * 0.3, x + w * 0.85, y + h * 0.45],
                        fill=(240, 240, 240, 255))
        else:
            self.add_bystander(rng, canvas, front=True)

    def finish(self, rng: np.random.Generator, canvas: Image.Image, cam: int) -> Image.Image:
        """Camera optics and colour: downsample, cast, lighting, blur, noise (only the
        downsampling in the sanity mode)."""
        style = self.camera(cam)
        img = canvas.convert("RGB").resize((self.width, self.height), Image.Resampling.BOX)
        if "camera" in self.plain:
            return img
        if style.resolution < 1.0:
            small = (max(8, int(self.width * style.resolution)),
                     max(16, int(self.height * style.resolution)))
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
        noisy = np.asarray(img, dtype=np.float32) + rng.normal(0, style.noise,
                                                              (self.height, self.width, 3))
        return Image.fromarray(np.clip(noisy + 0.5, 0, 255).astype(np.uint8))

    def render_person(self, rng: np.random.Generator, cam: int, a: PersonAttributes, facing: str,
                      framing: Framing | None = None, occlusion: float = 0.22) -> Image.Image:
        """A normal detection of person ``a`` seen by camera ``cam``."""
        framing = framing or normal_framing(rng, a)
        canvas = self.background(rng, cam, zoom=framing.height)
        if rng.random() < 0.25 and "extras" not in self.plain:
            self.add_bystander(rng, canvas, front=False)
        self.add_person(canvas, a, random_pose(rng, facing), framing)
        if rng.random() < occlusion and "extras" not in self.plain:
            self.add_occluder(rng, canvas, framing)
        return self.finish(rng, canvas, cam)

    def render_empty(self, rng: np.random.Generator, cam: int) -> Image.Image:
        """A false detection: background and clutter, maybe a sliver of someone."""
        canvas = self.background(rng, cam, zoom=float(rng.uniform(0.6, 1.0)))
        if rng.random() < 0.5 and "extras" not in self.plain:
            self.add_bystander(rng, canvas, front=False)
        return self.finish(rng, canvas, cam)


def render_spec(renderer: Renderer, spec: ImageSpec, num_ids: int) -> Image.Image:
    """Draw one planned image from its own random stream. ``num_ids``: the labelled set's
    identities (junk boxes may show any of them)."""
    seed = renderer.seed
    rng = stream(seed, *spec.key)
    if spec.kind == "person":
        # People tend to cross a camera in one direction (a Market tracklet).
        track = stream(seed, TAG_TRACK, spec.pid, spec.cam)
        bias = renderer.camera(spec.cam).facing_bias
        dominant = FACINGS[int((track.integers(0, 4) + bias) % 4)]
        facing = dominant if rng.random() < 0.7 else FACINGS[int(rng.integers(0, 4))]
        return renderer.render_person(rng, spec.cam, renderer.person(spec.pid), facing)
    if spec.kind == "distractor":
        mode = choice(rng, (("person", 0.55), ("empty", 0.25), ("partial", 0.2)))
        if mode == "empty":
            return renderer.render_empty(rng, spec.cam)
        a = renderer.person(DISTRACTOR_PERSON_BASE + spec.key[1])
        facing = FACINGS[int(rng.integers(0, 4))]
        if mode == "person":
            return renderer.render_person(rng, spec.cam, a, facing)
        # Partial: box covers only the upper or lower half of a stranger.
        scale = rng.uniform(1.4, 1.9)
        # lower body only / upper body only
        tops = [rng.uniform(-0.9, -0.6), rng.uniform(0.0, 0.1)]
        framing = Framing(float(scale), float(rng.choice(tops)), float(rng.uniform(0.35, 0.65)))
        return renderer.render_person(rng, spec.cam, a, facing, framing, occlusion=0.0)
    # Junk: badly cropped fragment of anybody (dataset people included, as in
    # Market where junk boxes are failed detections of the same crowd).
    if rng.random() < 0.5 and num_ids:
        pid = int(rng.integers(1, num_ids + 1))
    else:
        pid = JUNK_PERSON_BASE + spec.key[1]
    a = renderer.person(pid)
    mode = choice(rng, (("zoom", 0.4), ("edge", 0.35), ("tiny", 0.25)))
    if mode == "zoom":
        framing = Framing(float(rng.uniform(2.0, 3.2)), float(-rng.uniform(0.2, 1.6)),
                          float(rng.uniform(0.3, 0.7)))
    elif mode == "edge":
        framing = Framing(float(rng.uniform(0.8, 1.0)), float(rng.uniform(0.0, 0.1)),
                          float(rng.choice([-0.15, 1.15])))
    else:
        framing = Framing(float(rng.uniform(0.25, 0.4)), float(rng.uniform(0.2, 0.6)),
                          float(rng.uniform(0.2, 0.8)))
    return renderer.render_person(rng, spec.cam, a, FACINGS[int(rng.integers(0, 4))], framing,
                                  occlusion=0.0)
