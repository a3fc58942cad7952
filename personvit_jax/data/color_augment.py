"""DINO/iBOT colour augmentation of multi-crop views: drawn on the host, applied on the device.

The host pipeline only decodes, crops, resizes and flips (uint8); each view also carries a small
float32 vector of its colour parameters, drawn from the pipeline's seeded generator. Inside the
jitted pretrain step `apply` turns the uint8 views and their parameters into normalised float32
views, vectorised over every view of the batch. Colour jitter, grayscale, blur and solarisation
were ~70% of the host's multi-crop time (PIL, per view); on an accelerator they cost next to
nothing, and views cross to the device as uint8 (4x less than float32).

Semantics (torchvision's tensor ops on [0, 1] floats, clipped after every operation):
  brightness b: x * b;  contrast c: c * x + (1 - c) * mean(gray(x)) over the view;
  saturation s: s * x + (1 - s) * gray(x);  hue h: HSV hue shifted by h turns;
  gray(x) = 0.2989 R + 0.587 G + 0.114 B;  the four jitter ops in a random order (ColorJitter);
  channel gain (not in DINO; a camera's white balance, off by default): x * g per channel, the
  three gains log-normal with a geometric mean of 1 (a colour cast, not a brightness change),
  applied first, as a camera would;
  grayscale: gray(x) in all three channels;  blur: PIL's GaussianBlur(radius=sigma), as DINO /
  iBOT draw it: three passes of an extended box blur whose fractional radius PIL derives from
  sigma (Gwosdek et al. 2011), edge-replicated borders; solarise: x >= 128/255 -> 1 - x.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

# Layout of one view's parameter vector [NUM_PARAMS].
BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3
ORDER = slice(4, 8)  # the jitter ops (indices 0-3 above) in the order they are applied
GRAYSCALE, BLUR_SIGMA, SOLARIZE = 8, 9, 10
GAIN = slice(11, 14)  # per-channel (R, G, B) gains
NUM_PARAMS = 14
# A view left unchanged: factors 1, no hue shift, any order, no grayscale / blur / solarise,
# gains 1.
IDENTITY = np.array([1, 1, 1, 0, 0, 1, 2, 3, 0, 0, 0, 1, 1, 1], np.float32)

BLUR_SIGMA_RANGE = (0.1, 2.0)  # DINO's GaussianBlur radius range
BLUR_PASSES = 3  # PIL's GaussianBlur: three box-blur passes
BOX_RADIUS = 2  # taps each side of one pass: the box radius at sigma 2.0 is 1.375 (< 2)
_GRAY = (0.2989, 0.587, 0.114)


# ---------------------------------------------------------------------------------------------
# Host: draw one view's parameters.
# ---------------------------------------------------------------------------------------------


def draw_params(rng: np.random.Generator, cfg, blur_prob: float,
                solarize_prob: float) -> np.ndarray:
    """One view's colour parameters [NUM_PARAMS] float32, in DINO's order of decisions: colour
    jitter with probability cfg.color_jitter.prob (factors uniform in [1 - x, 1 + x], hue shift
    in [-hue, hue], random order; channel gains exp(N(0, channel_gain)) over their geometric
    mean, if cfg.color_jitter.channel_gain is set), grayscale (cfg.grayscale_prob), blur
    (`blur_prob`, sigma in BLUR_SIGMA_RANGE), solarisation (`solarize_prob`)."""
    p = IDENTITY.copy()
    cj = cfg.color_jitter
    if rng.random() < cj.prob:
        p[ORDER] = rng.permutation(4)
        for i, x in ((BRIGHTNESS, cj.brightness), (CONTRAST, cj.contrast),
                     (SATURATION, cj.saturation)):
            if x:
                p[i] = rng.uniform(max(0.0, 1 - x), 1 + x)
        if cj.hue:
            p[HUE] = rng.uniform(-cj.hue, cj.hue)
        if cj.get("channel_gain", 0.0):
            log_gain = rng.normal(0.0, cj.channel_gain, 3)
            p[GAIN] = np.exp(log_gain - log_gain.mean())
    if rng.random() < cfg.grayscale_prob:
        p[GRAYSCALE] = 1
    if rng.random() < blur_prob:
        p[BLUR_SIGMA] = rng.uniform(*BLUR_SIGMA_RANGE)
    if rng.random() < solarize_prob:
        p[SOLARIZE] = 1
    return p


# ---------------------------------------------------------------------------------------------
# Device: the operations on views [..., H, W, 3] in [0, 1] with per-view scalars [...].
# ---------------------------------------------------------------------------------------------


def _per_view(v: jax.Array) -> jax.Array:
    """[...] -> [..., 1, 1, 1], to broadcast a per-view scalar over its pixels."""
    return v[..., None, None, None]


def gray(x: jax.Array) -> jax.Array:
    """[..., H, W, 3] -> [..., H, W, 1] luma."""
    return (x[..., 0:1] * _GRAY[0] + x[..., 1:2] * _GRAY[1] + x[..., 2:3] * _GRAY[2])


def hue(x: jax.Array, h: jax.Array) -> jax.Array:
    """RGB -> HSV, hue + h (mod 1), -> RGB."""
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    maxc, minc = jnp.max(x, axis=-1), jnp.min(x, axis=-1)
    delta = maxc - minc
    safe = jnp.where(delta > 0, delta, 1.0)
    sat = jnp.where(maxc > 0, delta / jnp.where(maxc > 0, maxc, 1.0), 0.0)
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    hh = jnp.where(maxc == r, bc - gc, jnp.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    hh = jnp.where(delta > 0, hh / 6.0, 0.0)
    hh = jnp.mod(hh + h[..., None, None], 1.0)
    # HSV -> RGB: sector i of six, fraction f within it.
    i6 = hh * 6.0
    i = jnp.floor(i6)
    f = i6 - i
    i = i.astype(jnp.int32) % 6
    v = maxc
    p, q, t = v * (1.0 - sat), v * (1.0 - sat * f), v * (1.0 - sat * (1.0 - f))
    pick = lambda *c: jnp.select([i == k for k in range(6)], list(c))
    return jnp.stack([pick(v, q, p, p, t, v), pick(t, v, v, q, p, p), pick(p, p, t, v, v, q)],
                     axis=-1)


def pil_box_radius(sigma: jax.Array) -> jax.Array:
    """The fractional box radius l + a of one of PIL's BLUR_PASSES passes for GaussianBlur
    radius `sigma` (PIL's _gaussian_blur_radius: boxes whose summed variance is sigma^2)."""
    var = jnp.square(sigma) / BLUR_PASSES
    l = jnp.floor((jnp.sqrt(12.0 * var + 1.0) - 1.0) / 2.0)
    a = (2 * l + 1) * (l * (l + 1) - 3 * var) / (6 * (var - jnp.square(l + 1)))
    return l + a


def gaussian_blur(x: jax.Array, sigma: jax.Array) -> jax.Array:
    """PIL's GaussianBlur(radius=sigma [...]) of views [..., H, W, 3] (sigma 0 = none): per
    axis, BLUR_PASSES passes of the box [a, 1, ..., 1, a] / (2 r + 1) of radius r = l + a,
    edge-replicated borders, each pass rounded to a uint8 level as PIL stores it. Below sigma
    ~0.35, where a sampled Gaussian is the identity, this still softens edges."""
    taps = jnp.arange(-BOX_RADIUS, BOX_RADIUS + 1, dtype=jnp.float32)
    r = pil_box_radius(jnp.where(sigma > 0, sigma, 1.0))[..., None]
    l = jnp.floor(r)
    box = jnp.where(jnp.abs(taps) <= l, 1.0, jnp.where(jnp.abs(taps) == l + 1, r - l, 0.0))
    w = box / (2 * r + 1)
    w = jnp.where((sigma > 0)[..., None], w, (taps == 0).astype(jnp.float32))  # [..., T]
    lead = x.ndim - 3

    def along(x, axis):  # weighted sum of the 2R+1 shifted copies along `axis` (H or W)
        n = x.shape[axis]
        pad = [(0, 0)] * x.ndim
        pad[axis] = (BOX_RADIUS, BOX_RADIUS)
        xp = jnp.pad(x, pad, mode="edge")
        out = jnp.zeros_like(x)
        for k in range(2 * BOX_RADIUS + 1):
            out = out + _per_view(w[..., k]) * jax.lax.slice_in_dim(xp, k, k + n, axis=axis)
        return out

    blurred = _per_view(sigma > 0)
    level = lambda x: jnp.where(blurred, jnp.floor(x * 255.0 + 0.5) / 255.0, x)
    for axis in (lead + 1, lead):  # PIL: all horizontal passes, then all vertical ones
        for _ in range(BLUR_PASSES):
            x = level(along(x, axis))  # PIL stores every pass as uint8 (rounded half up)
    return x


def apply(views_uint8: jax.Array, params: jax.Array, mean: Sequence[float],
          std: Sequence[float]) -> jax.Array:
    """uint8 views [..., H, W, 3] and their parameters [..., NUM_PARAMS] -> normalised float32
    views [..., H, W, 3]: channel gains -> colour jitter (ops in the drawn order) -> grayscale
    -> blur -> solarise -> (x - mean) / std."""
    x = views_uint8.astype(jnp.float32) / 255.0
    params = params.astype(jnp.float32)
    x = jnp.clip(x * params[..., None, None, GAIN], 0.0, 1.0)
    order = params[..., ORDER].astype(jnp.int32)
    for position in range(4):
        op = order[..., position]
        factor = jnp.take_along_axis(params[..., :4], op[..., None], axis=-1)[..., 0]
        # Brightness, contrast and saturation are each a blend a * x + (1 - a) * ref with ref =
        # black, the mean grey of the view, the pixel's grey; a = 1 (exactly x) on hue views.
        g = gray(x)
        ref = jnp.where(_per_view(op == CONTRAST), jnp.mean(g, axis=(-3, -2, -1), keepdims=True),
                        jnp.where(_per_view(op == SATURATION), g, 0.0))
        a = _per_view(jnp.where(op == HUE, 1.0, factor))
        x = jnp.clip(a * x + (1.0 - a) * ref, 0.0, 1.0)
        shift = jnp.where(op == HUE, factor, 0.0)
        # The HSV round trip only when some view shifts its hue here (never with hue = 0).
        x = jax.lax.cond(jnp.any(shift != 0), lambda x: jnp.where(
            _per_view(shift != 0), hue(x, shift), x), lambda x: x, x)
    x = jnp.where(_per_view(params[..., GRAYSCALE] > 0), jnp.broadcast_to(gray(x), x.shape), x)
    x = gaussian_blur(x, params[..., BLUR_SIGMA])
    x = jnp.where(_per_view(params[..., SOLARIZE] > 0) & (x >= 128.0 / 255.0), 1.0 - x, x)
    mean, std = jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)
    return (x - mean) / std
