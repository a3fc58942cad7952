"""Multi-crop colour augmentation on the device (`data.color_augment`) against independent
references: PIL's own operations (GaussianBlur included) and Python's colorsys."""

import colorsys

import jax
import ml_collections
import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from personvit_jax.data import augment, color_augment as ca

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _image(seed=0, h=24, w=12):
    """Smooth colourful uint8 image [h, w, 3] (gradients + a block), not pure noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    x = np.stack([yy, xx, 1 - yy * xx], -1) * 200 + rng.uniform(0, 55, (h, w, 3))
    x[h // 3: h // 2, w // 4: w // 2] = rng.uniform(0, 255, 3)
    return x.astype(np.uint8)


def _params(**kw):
    p = ca.IDENTITY.copy()
    for name, value in kw.items():
        p[{"brightness": ca.BRIGHTNESS, "contrast": ca.CONTRAST, "saturation": ca.SATURATION,
           "hue": ca.HUE, "grayscale": ca.GRAYSCALE, "blur": ca.BLUR_SIGMA,
           "solarize": ca.SOLARIZE, "gain": ca.GAIN}[name]] = value
    return p


def _apply01(x_uint8, params):
    """Device result mapped back to [0, 1] (undo the normalisation)."""
    y = np.asarray(jax.jit(ca.apply, static_argnums=(2, 3))(x_uint8, params, MEAN, STD))
    return y * np.asarray(STD) + np.asarray(MEAN)


def test_identity_is_plain_normalisation():
    x = _image()
    y = np.asarray(ca.apply(x, ca.IDENTITY, MEAN, STD))
    np.testing.assert_allclose(y, augment.normalize(x, MEAN, STD), atol=2e-6)


@pytest.mark.parametrize("name,factor,enhance", [
    ("brightness", 1.35, ImageEnhance.Brightness), ("brightness", 0.6, ImageEnhance.Brightness),
    ("contrast", 1.4, ImageEnhance.Contrast), ("contrast", 0.6, ImageEnhance.Contrast),
    ("saturation", 1.2, ImageEnhance.Color), ("saturation", 0.3, ImageEnhance.Color)])
def test_jitter_ops_match_pil(name, factor, enhance):
    # PIL works in uint8 (and rounds the contrast mean / the grey to integers): within 1.5 levels
    x = _image(1)
    ref = np.asarray(enhance(Image.fromarray(x)).enhance(factor), np.float64)
    y = _apply01(x, _params(**{name: factor})) * 255
    assert np.abs(y - ref).max() <= 1.5
    assert np.abs(y - x).max() > 10  # the op did something


def test_hue_matches_colorsys():
    x = _image(2)
    for shift in (0.08, -0.1, 0.5):
        ref = np.array([[colorsys.hsv_to_rgb((h + shift) % 1.0, s, v) for h, s, v in
                         (colorsys.rgb_to_hsv(*px) for px in row)] for row in x / 255.0])
        np.testing.assert_allclose(_apply01(x, _params(hue=shift)), ref, atol=2e-5)


def test_grayscale_blur_solarize():
    x = _image(3)
    grey = np.asarray(Image.fromarray(x).convert("L"), np.float64)
    y = _apply01(x, _params(grayscale=1)) * 255
    assert np.abs(y - grey[..., None]).max() <= 1.0 and np.ptp(y, axis=-1).max() < 1e-3
    for sigma in (0.1, 0.25, 0.4, 0.7, 1.3, 2.0):
        # PIL's own GaussianBlur (DINO's), to one uint8 level (PIL's fixed-point weights)
        ref = np.asarray(Image.fromarray(x).filter(ImageFilter.GaussianBlur(sigma)), np.float64)
        err = np.abs(_apply01(x, _params(blur=sigma)) * 255 - ref)
        assert err.max() <= 1.001 and err.mean() < 0.1, sigma
    # below sigma ~0.35 a sampled Gaussian is the identity; PIL (and ours) still soften
    soft = np.asarray(Image.fromarray(x).filter(ImageFilter.GaussianBlur(0.25)), np.float64)
    assert np.abs(soft - x).max() > 3
    assert np.abs(_apply01(x, _params(blur=0.25)) * 255 - x).max() > 3
    sol = np.asarray(ImageOps.solarize(Image.fromarray(x), threshold=128), np.float64)
    np.testing.assert_allclose(_apply01(x, _params(solarize=1)) * 255, sol, atol=1e-3)


def test_jitter_order_and_per_view_parameters():
    x = _image(4)
    b_then_c = _params(brightness=1.6, contrast=0.4)
    c_then_b = b_then_c.copy()
    c_then_b[ca.ORDER] = (1, 0, 2, 3)
    # brightness 1.6 clips, so the order matters; compose the single ops by hand
    bright = np.clip(x / 255.0 * 1.6, 0, 1)
    grey_mean = lambda z: (z @ np.array([0.2989, 0.587, 0.114])).mean()
    ref_bc = np.clip(0.4 * bright + 0.6 * grey_mean(bright), 0, 1)
    con = np.clip(0.4 * x / 255.0 + 0.6 * grey_mean(x / 255.0), 0, 1)
    ref_cb = np.clip(con * 1.6, 0, 1)
    np.testing.assert_allclose(_apply01(x, b_then_c), ref_bc, atol=2e-6)
    np.testing.assert_allclose(_apply01(x, c_then_b), ref_cb, atol=2e-6)
    assert np.abs(ref_bc - ref_cb).max() > 0.05
    # a batch of views [2, 3, H, W, 3] with its own parameters per view = view by view
    rng = np.random.default_rng(0)
    cfg = ml_collections.ConfigDict({"grayscale_prob": 0.3, "color_jitter": {
        "prob": 0.8, "brightness": 0.4, "contrast": 0.4, "saturation": 0.2, "hue": 0.1}})
    views = np.stack([[_image(10 * i + j) for j in range(3)] for i in range(2)])
    params = np.stack([[ca.draw_params(rng, cfg, 0.5, 0.2) for _ in range(3)] for _ in range(2)])
    batched = np.asarray(ca.apply(views, params, MEAN, STD))
    for i in range(2):
        for j in range(3):
            np.testing.assert_allclose(batched[i, j], ca.apply(views[i, j], params[i, j], MEAN,
                                                               STD), atol=1e-6)


def test_draw_params_statistics():
    cfg = ml_collections.ConfigDict({"grayscale_prob": 0.2, "color_jitter": {
        "prob": 0.8, "brightness": 0.4, "contrast": 0.4, "saturation": 0.2, "hue": 0.1}})
    rng = np.random.default_rng(0)
    p = np.stack([ca.draw_params(rng, cfg, 0.5, 0.2) for _ in range(4000)])
    jittered = p[:, ca.BRIGHTNESS] != 1
    assert abs(jittered.mean() - 0.8) < 0.03
    for i, x in ((ca.BRIGHTNESS, 0.4), (ca.CONTRAST, 0.4), (ca.SATURATION, 0.2), (ca.HUE, 0.1)):
        centre = 0.0 if i == ca.HUE else 1.0
        v = p[jittered, i]
        assert centre - x <= v.min() and v.max() <= centre + x and np.ptp(v) > 1.8 * x
    assert all(sorted(o) == [0, 1, 2, 3] for o in p[:, ca.ORDER])
    assert len({tuple(o) for o in p[jittered][:, ca.ORDER]}) == 24  # every order occurs
    np.testing.assert_array_equal(p[~jittered][:, :8], np.tile(ca.IDENTITY[:8], (
        (~jittered).sum(), 1)))
    blur = p[:, ca.BLUR_SIGMA]
    assert abs((blur > 0).mean() - 0.5) < 0.03
    assert ca.BLUR_SIGMA_RANGE[0] <= blur[blur > 0].min() and blur.max() <= ca.BLUR_SIGMA_RANGE[1]
    assert abs(p[:, ca.GRAYSCALE].mean() - 0.2) < 0.03
    assert abs(p[:, ca.SOLARIZE].mean() - 0.2) < 0.03


def test_channel_gain_is_applied_first_and_clipped():
    x = _image(5)
    gains = np.array([1.6, 0.7, 1 / (1.6 * 0.7)])
    cast = np.clip(x / 255.0 * gains, 0, 1)
    assert (x / 255.0 * gains > 1).any()  # the clip matters
    np.testing.assert_allclose(_apply01(x, _params(gain=gains)), cast, atol=2e-6)
    # brightness (whatever its place in the jitter order) acts on the cast, clipped, image
    np.testing.assert_allclose(_apply01(x, _params(gain=gains, brightness=0.5)), cast * 0.5,
                               atol=2e-6)


def test_draw_channel_gain_statistics_and_default_stream():
    jitter = {"prob": 0.8, "brightness": 0.4, "contrast": 0.4, "saturation": 0.2, "hue": 0.1}
    cfg = ml_collections.ConfigDict({"grayscale_prob": 0.2, "color_jitter": dict(
        jitter, channel_gain=0.2)})
    rng = np.random.default_rng(0)
    p = np.stack([ca.draw_params(rng, cfg, 0.5, 0.2) for _ in range(4000)])
    jittered = p[:, ca.BRIGHTNESS] != 1
    log_gain = np.log(p[jittered][:, ca.GAIN])
    np.testing.assert_allclose(log_gain.sum(1), 0, atol=1e-5)  # geometric mean 1: a pure cast
    # N(0, s) minus the mean of the three: std s * sqrt(2 / 3) per channel
    assert abs(log_gain.std() - 0.2 * np.sqrt(2 / 3)) < 0.01
    np.testing.assert_array_equal(p[~jittered][:, ca.GAIN], 1)
    # without the key (DINO's recipe) the gains stay 1 and every other draw is unchanged
    plain = ml_collections.ConfigDict({"grayscale_prob": 0.2, "color_jitter": jitter})
    off = ml_collections.ConfigDict({"grayscale_prob": 0.2, "color_jitter": dict(
        jitter, channel_gain=0.0)})
    a, b = np.random.default_rng(1), np.random.default_rng(1)
    for _ in range(50):
        pa, pb = ca.draw_params(a, plain, 0.5, 0.2), ca.draw_params(b, off, 0.5, 0.2)
        np.testing.assert_array_equal(pa, pb)
        np.testing.assert_array_equal(pa[ca.GAIN], 1)
