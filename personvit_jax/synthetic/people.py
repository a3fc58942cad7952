"""People: who a person is (attributes fixed per identity) and how they are drawn.

*Identity* (fixed per person id, :func:`person_attributes`): body proportions (head size, leg
length, shoulder / hip width, limb thickness, stature), skin tone, hair colour and style, upper
garment colour(s) + pattern (solid, stripes, two-tone, checks, chest logo) + sleeve length, lower
garment type (trousers / shorts / skirt) and colour, shoe colour, bag (backpack / shoulder bag /
tote / none) and its colour, hat, carried object. Every palette is small and shared, so many
people share any single attribute (lots of dark trousers, black and white tops); only the
*combination* identifies a person.

Drawing (:func:`person_layer`): polygons and ellipses with ``PIL.ImageDraw`` on a transparent
layer, in a pose (:class:`Pose`: front, back or side view, walking phase, mirror flip) that varies
from image to image.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from PIL import Image, ImageDraw

from personvit_jax.synthetic.streams import TAG_PERSON, choice, stream

RGB = tuple[int, int, int]

# ---------------------------------------------------------------------------
# Palettes. Small and shared on purpose: a single attribute never identifies a
# person, and dark / neutral clothes dominate as in real street footage.
# ---------------------------------------------------------------------------

TOP_COLORS: tuple[tuple[RGB, float], ...] = (
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
BAG_COLORS: tuple[tuple[RGB, float], ...] = (
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
_HAIR_STYLES = (("short", 0.38), ("medium", 0.18), ("long", 0.24), ("ponytail", 0.12),
                ("buzz", 0.08))
_LOWER_TYPES = (("trousers", 0.68), ("shorts", 0.17), ("skirt", 0.15))
_BAG_TYPES = (("none", 0.42), ("backpack", 0.30), ("shoulder", 0.20), ("tote", 0.08))
_HATS = (("none", 0.80), ("cap", 0.12), ("beanie", 0.08))
_CARRIED = (("none", 0.85), ("umbrella", 0.08), ("paper", 0.07))
FACINGS = ("front", "back", "left", "right")


def _jitter_color(rng: np.random.Generator, color: RGB, sigma: float = 9.0) -> RGB:
    """A person's own shade of a palette colour (consistent across images)."""
    values = np.clip(np.array(color, dtype=np.float64) + rng.normal(0.0, sigma, 3), 0, 255)
    return tuple(int(round(v)) for v in values)  # type: ignore[return-value]


def shaded(color: RGB, factor: float) -> RGB:
    """Darken (factor < 1) or brighten a colour, e.g. for far-side limbs."""
    return tuple(int(max(0, min(255, round(c * factor)))) for c in color)  # type: ignore


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


def sample_attributes(rng: np.random.Generator) -> PersonAttributes:
    """Draw one person. Used for real ids, distractors, pool people and background people."""
    top_color = _jitter_color(rng, choice(rng, TOP_COLORS))
    pattern = choice(rng, _PATTERNS)
    # The second garment colour must differ visibly, or the pattern vanishes.
    top_color2 = top_color
    for _ in range(20):
        candidate = _jitter_color(rng, choice(rng, TOP_COLORS))
        if sum(abs(a - b) for a, b in zip(candidate, top_color)) > 120:
            top_color2 = candidate
            break
    lower_type = choice(rng, _LOWER_TYPES)
    return PersonAttributes(
        head_ratio=float(rng.uniform(0.115, 0.15)),
        leg_ratio=float(rng.uniform(0.43, 0.52)),
        shoulder_ratio=float(rng.uniform(0.25, 0.34)),
        hip_ratio=float(rng.uniform(0.76, 1.02)),
        limb_ratio=float(rng.uniform(0.85, 1.2)),
        stature=float(rng.uniform(0.93, 1.03)),
        skin=_jitter_color(rng, choice(rng, _SKIN_COLORS), 6.0),
        hair_color=_jitter_color(rng, choice(rng, _HAIR_COLORS), 6.0),
        hair_style=choice(rng, _HAIR_STYLES),
        top_color=top_color,
        top_color2=top_color2,
        top_pattern=pattern,
        stripe_count=int(rng.integers(3, 8)),
        long_sleeves=bool(rng.random() < 0.55),
        lower_type=lower_type,
        lower_color=_jitter_color(rng, choice(rng, _LOWER_COLORS)),
        lower_length=float(rng.uniform(0.35, 0.5) if lower_type == "shorts"
                           else rng.uniform(0.4, 0.75)),
        shoe_color=_jitter_color(rng, choice(rng, _SHOE_COLORS), 6.0),
        bag_type=choice(rng, _BAG_TYPES),
        bag_color=_jitter_color(rng, choice(rng, BAG_COLORS)),
        bag_size=float(rng.uniform(0.8, 1.2)),
        bag_side=1 if rng.random() < 0.5 else -1,
        hat=choice(rng, _HATS),
        hat_color=_jitter_color(rng, choice(rng, TOP_COLORS)),
        carried=choice(rng, _CARRIED),
    )


def person_attributes(pid: int, seed: int) -> PersonAttributes:
    """The fixed appearance of person ``pid`` (>= 0) in the set built with ``seed``."""
    return sample_attributes(stream(seed, TAG_PERSON, pid))


def garments_only(a: PersonAttributes, body: PersonAttributes) -> PersonAttributes:
    """`a`'s garments (top, its pattern and sleeves, lower garment, shoes) on `body`'s body,
    skin and hair, with no bag, hat or carried object: people that differ only by what they
    wear (the synthetic sets' sanity mode)."""
    return dataclasses.replace(
        body, top_color=a.top_color, top_color2=a.top_color2, top_pattern=a.top_pattern,
        stripe_count=a.stripe_count, long_sleeves=a.long_sleeves, lower_type=a.lower_type,
        lower_color=a.lower_color, lower_length=a.lower_length, shoe_color=a.shoe_color,
        bag_type="none", hat="none", carried="none")


# ---------------------------------------------------------------------------
# Drawing a person
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Pose:
    """How a person stands in one image (varies from image to image, unlike the attributes)."""

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
    d.ellipse([center[0] - radius, center[1] - radius, center[0] + radius, center[1] + radius],
              fill=fill)


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
    pixels = np.where(second[..., None], np.array(a.top_color2, np.uint8),
                      np.array(a.top_color, np.uint8))
    mask = Image.new("L", (w, h), 0)
    ImageDraw.Draw(mask).polygon([(x - x0, y - y0) for x, y in poly], fill=255)
    layer.paste(Image.fromarray(pixels.astype(np.uint8), "RGB"), (x0, y0), mask)


def _draw_person(layer: Image.Image, a: PersonAttributes, pose: Pose, cx: float, top: float,
                 ph: float) -> None:
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
    bag_dark = shaded(a.bag_color, 0.7) + (255,)

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
            lift = max(0.0, math.sin(pose.phase + (0 if hip[0] < cx else math.pi)))
            foot = (foot[0], foot[1] - ph * 0.02 * lift)
        w_top, w_bot = (hw * 0.48, limb_w * 0.9) if not side else (hw * 0.8, limb_w * 0.9)
        d.polygon(_limb(hip, foot, w_top, w_bot), fill=shaded(a.skin, shade) + (255,))
        if a.lower_type == "trousers":
            d.polygon(_limb(hip, foot, w_top * 1.05, w_bot * 1.15),
                      fill=shaded(a.lower_color, shade) + (255,))
        elif a.lower_type == "shorts":
            knee = _lerp(hip, foot, a.lower_length)
            d.polygon(_limb(hip, knee, w_top * 1.1, w_top * 0.95),
                      fill=shaded(a.lower_color, shade) + (255,))
        # Shoe: elongated forward in the side view.
        shoe_col = shaded(a.shoe_color, shade) + (255,)
        if side:
            d.ellipse([foot[0] - ph * 0.03, foot[1] - shoe_h, foot[0] + ph * 0.07,
                       foot[1] + shoe_h * 0.3], fill=shoe_col)
        else:
            d.ellipse([foot[0] - w_bot * 0.75, foot[1] - shoe_h, foot[0] + w_bot * 0.75,
                       foot[1] + shoe_h * 0.3], fill=shoe_col)

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
        col = shaded(a.skin, shade) + (255,)
        d.polygon(_limb(shoulder, elbow, aw, aw * 0.85), fill=col)
        d.polygon(_limb(elbow, hand, aw * 0.85, aw * 0.7), fill=col)
        sl = shaded(sleeve[:3], shade) + (255,)
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
        d.rectangle([hx0 - head_w * 0.08, hy0 + head_h * 0.4, hx1 + head_w * 0.08,
                     y_sh + ph * 0.06], fill=hair)
    if side and a.bag_type == "backpack":
        depth = sw * 0.55 * a.bag_size
        d.rounded_rectangle([cx_t - sw / 2 - depth, y_sh + ph * 0.02, cx_t - sw / 2 + sw * 0.2,
                             y_sh + (y_hip - y_sh) * 0.75 * a.bag_size], radius=depth * 0.3,
                            fill=bag)
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
    torso = [(cx_t - sw / 2 + r, y_sh - ph * 0.01), (cx_t + sw / 2 - r, y_sh - ph * 0.01),
             (cx_t + sw / 2, y_sh + r), (cx + hw / 2, y_waist), (cx - hw / 2, y_waist),
             (cx_t - sw / 2, y_sh + r)]
    d.rectangle([cx_t - head_w * 0.18, hy1 - head_h * 0.1, cx_t + head_w * 0.18, y_sh + 2],
                fill=skin)  # neck
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
        d.rounded_rectangle([cx_t - bw / 2, y_sh + ph * 0.015, cx_t + bw / 2,
                             y_sh + ph * 0.015 + bh], radius=bw * 0.15, fill=bag)
        d.rectangle([cx_t - bw * 0.35, y_sh + bh * 0.55, cx_t + bw * 0.35, y_sh + bh * 0.95],
                    fill=bag_dark)
    elif a.bag_type == "backpack" and pose.facing == "front":  # only the straps show
        for s in (-1, 1):
            d.polygon(_limb((cx_t + s * sw * 0.28, y_sh),
                            (cx_t + s * sw * 0.3, y_sh + torso_len * 0.7), sw * 0.09, sw * 0.08),
                      fill=bag_dark)
    elif a.bag_type == "backpack":  # side: strap over the shoulder
        d.polygon(_limb((cx_t - sw * 0.1, y_sh), (cx_t + sw * 0.2, y_sh + torso_len * 0.6),
                        sw * 0.12, sw * 0.1), fill=bag_dark)
    elif a.bag_type == "shoulder":
        s = a.bag_side if not side else 0
        bag_w, bag_h = ph * 0.11 * a.bag_size, ph * 0.08 * a.bag_size
        bx = cx + s * (hw / 2 + bag_w * 0.2)
        by = y_hip - ph * 0.02
        # the strap runs over the opposite shoulder
        strap_top = (cx_t - s * sw * 0.35 if s else cx_t - sw * 0.1, y_sh)
        d.line([strap_top, (bx, by)], fill=bag_dark, width=max(2, int(sw * 0.06)))
        d.rounded_rectangle([bx - bag_w / 2, by, bx + bag_w / 2, by + bag_h], radius=bag_w * 0.15,
                            fill=bag)
    elif a.bag_type == "tote":
        hand = hands[1] if (side or a.bag_side > 0) else hands[0]
        tw, th = ph * 0.1 * a.bag_size, ph * 0.11 * a.bag_size
        d.rectangle([hand[0] - tw / 2, hand[1] + ph * 0.005, hand[0] + tw / 2, hand[1] + th],
                    fill=bag)

    if a.carried == "umbrella":
        hand = hands[0] if a.bag_side > 0 else hands[1]
        d.line([hand, (hand[0] + ph * 0.05, y_foot - ph * 0.03)], fill=(30, 30, 35, 255),
               width=max(2, int(ph * 0.018)))
    elif a.carried == "paper":
        hand = hands[0] if a.bag_side > 0 else hands[1]
        d.rectangle([hand[0] - ph * 0.03, hand[1] - ph * 0.07, hand[0] + ph * 0.03,
                     hand[1] + ph * 0.01], fill=(240, 240, 235, 255))

    # -- head and hair ----------------------------------------------------------------
    _draw_head(d, a, pose, (hx0, hy0, hx1, hy1), y_sh, torso_len, ph)


def _draw_head(d: ImageDraw.ImageDraw, a: PersonAttributes, pose: Pose, box, y_sh: float,
               torso_len: float, ph: float) -> None:
    """Head, face, hair and hat: the back view is mostly hair, the front mostly face."""
    hx0, hy0, hx1, hy1 = box
    hw, hh = hx1 - hx0, hy1 - hy0
    skin, hair = a.skin + (255,), a.hair_color + (255,)
    style = a.hair_style
    hairline = {"buzz": 0.18, "short": 0.3, "ponytail": 0.3, "medium": 0.32, "long": 0.32}[style]
    grow = 0.02 if style == "buzz" else 0.07

    if pose.facing == "back":
        if style == "long":
            d.rounded_rectangle([hx0 - hw * 0.08, hy0 + hh * 0.4, hx1 + hw * 0.08,
                                 y_sh + torso_len * 0.45], radius=hw * 0.3, fill=hair)
        d.ellipse([hx0, hy0, hx1, hy1], fill=skin)
        nape = 0.25 if style in ("short", "buzz") else 0.0  # short hair shows the neck
        d.ellipse([hx0 - hw * grow, hy0 - hh * grow, hx1 + hw * grow, hy1 - hh * nape], fill=hair)
        if style == "ponytail":
            d.rounded_rectangle([hx0 + hw * 0.38, hy1 - hh * 0.3, hx1 - hw * 0.38,
                                 y_sh + torso_len * 0.15], radius=hw * 0.1, fill=hair)
    elif pose.facing == "side":
        if style == "long":
            d.rounded_rectangle([hx0 - hw * 0.05, hy0 + hh * 0.3, hx0 + hw * 0.45,
                                 y_sh + torso_len * 0.3], radius=hw * 0.2, fill=hair)
        elif style == "ponytail":
            d.ellipse([hx0 - hw * 0.35, hy0 + hh * 0.25, hx0 + hw * 0.15, hy0 + hh * 0.9],
                      fill=hair)
        d.ellipse([hx0, hy0, hx1, hy1], fill=skin)
        back = 0.6 if style in ("medium", "long") else 0.45
        d.chord([hx0 - hw * grow, hy0 - hh * grow, hx1 + hw * grow, hy1 + hh * grow], 120, 360,
                fill=hair)
        d.ellipse([hx0 - hw * grow, hy0 - hh * grow, hx0 + hw * back, hy1 - hh * 0.15], fill=hair)
    else:  # front
        sides = 0.3 if style in ("short", "buzz") else 0.0  # longer hair frames the face
        d.ellipse([hx0 - hw * grow, hy0 - hh * grow, hx1 + hw * grow, hy1 - hh * sides], fill=hair)
        d.ellipse([hx0 + hw * 0.1, hy0 + hh * hairline, hx1 - hw * 0.1, hy1], fill=skin)
        eye_y = hy0 + hh * 0.58
        for ex in (0.35, 0.65):  # tiny dark eyes: the front view has a face
            _disc(d, (hx0 + hw * ex, eye_y), max(1.0, hw * 0.05), (40, 30, 30, 255))

    if a.hat == "cap":
        col, brim = a.hat_color + (255,), shaded(a.hat_color, 0.8) + (255,)
        d.chord([hx0 - hw * 0.06, hy0 - hh * 0.08, hx1 + hw * 0.06, hy0 + hh * 0.75], 180, 360,
                fill=col)
        if pose.facing == "side":
            d.rectangle([hx1 - hw * 0.2, hy0 + hh * 0.28, hx1 + hw * 0.35, hy0 + hh * 0.36],
                        fill=brim)
        elif pose.facing == "front":
            d.ellipse([hx0 - hw * 0.05, hy0 + hh * 0.26, hx1 + hw * 0.05, hy0 + hh * 0.42],
                      fill=brim)
    elif a.hat == "beanie":
        d.chord([hx0 - hw * 0.08, hy0 - hh * 0.15, hx1 + hw * 0.08, hy0 + hh * 0.95], 180, 360,
                fill=a.hat_color + (255,))


def person_layer(size: tuple[int, int], a: PersonAttributes, pose: Pose, cx: float, top: float,
                 ph: float) -> Image.Image:
    """Transparent canvas-sized layer with the person; mirrored if requested."""
    layer = Image.new("RGBA", size, (0, 0, 0, 0))
    width = size[0]
    _draw_person(layer, a, pose, width - cx if pose.mirror else cx, top, ph)
    if pose.mirror:
        layer = layer.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return layer


def random_pose(rng: np.random.Generator, facing_name: str) -> Pose:
    """Map a facing direction to a drawable pose with a random walking phase."""
    if facing_name in ("left", "right"):
        return Pose("side", facing_name == "left", float(rng.uniform(0, 2 * math.pi)),
                    float(rng.uniform(0.15, 0.4)))
    return Pose(facing_name, bool(rng.random() < 0.5), float(rng.uniform(0, 2 * math.pi)), 0.0)


