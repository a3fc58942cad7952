"""Blockwise masking statistics over many draws."""

import numpy as np

import math

from personvit_jax.data.masking import (_add_block, block_mask, draw_mask_ratio, ibot_min_block,
                                        image_mask)


def test_block_mask_count_and_blocks():
    rng = np.random.default_rng(0)
    for target in (4, 16, 32, 51, 64):
        for _ in range(50):
            m = block_mask((16, 8), target, rng)
            assert m.shape == (16, 8) and m.dtype == bool
            # never more than asked; close to it (a block may not fit the last few patches)
            assert target - 8 <= m.sum() <= target
    assert block_mask((16, 8), 0, rng).sum() == 0


def test_blocks_are_rectangles_with_bounded_size_and_aspect():
    rng = np.random.default_rng(1)
    log_aspect = (math.log(0.3), math.log(1 / 0.3))
    aspects, sizes = [], []
    for _ in range(500):
        m = np.zeros((16, 8), bool)
        added = _add_block(m, rng, max_new=40, min_block=4, log_aspect=log_aspect)
        ys, xs = np.nonzero(m)
        h, w = np.ptp(ys) + 1, np.ptp(xs) + 1
        assert added == m.sum() == h * w, "one block is a filled rectangle"
        assert 1 <= added <= 40  # target area >= 4; rounding h and w can give less (as iBOT)
        aspects.append(h / w)
        sizes.append(added)
    assert np.mean(np.array(sizes) >= 4) > 0.9
    # h = round(sqrt(area * a)), w = round(sqrt(area / a)): rounding widens (0.3, 3.3) a bit
    assert 0.3 / 2 <= min(aspects) and max(aspects) <= 2 / 0.3
    assert min(aspects) < 0.5 and max(aspects) > 2  # both orientations occur


def test_ratio_distribution():
    rng = np.random.default_rng(2)
    ratios = np.array([draw_mask_ratio(rng, 0.3, 0.2, 0.5) for _ in range(4000)])
    assert abs((ratios == 0).mean() - 0.5) < 0.03
    nz = ratios[ratios > 0]
    assert nz.min() >= 0.1 and nz.max() <= 0.5
    assert abs(nz.mean() - 0.3) < 0.01
    assert draw_mask_ratio(rng, 0.3, 0.0, 1.0) == 0.3
    fractions = np.array([image_mask((16, 8), rng).mean() for _ in range(2000)])
    assert abs((fractions == 0).mean() - 0.5) < 0.04
    assert 0.2 < fractions[fractions > 0].mean() < 0.32


def test_deterministic_given_rng():
    a = image_mask((16, 8), np.random.default_rng(7), masked_fraction=1.0)
    b = image_mask((16, 8), np.random.default_rng(7), masked_fraction=1.0)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (128,)


def test_ibot_rules_float_target_and_min_block():
    """iBOT masks until at least ratio x N patches (a float target, never more), and its
    smallest target block area is (min(gh, gw) // 3) ** 2."""
    assert ibot_min_block((16, 8)) == 4 and ibot_min_block((8, 4)) == 1
    assert ibot_min_block((14, 14)) == 16
    rng = np.random.default_rng(3)
    counts = [block_mask((16, 8), 38.4, rng).sum() for _ in range(200)]
    assert max(counts) <= 38  # never above the target ...
    assert np.mean(np.array(counts) >= 36) > 0.5  # ... and mostly close to it
    # a tiny target on the 8x4 grid (min block 1) is reachable exactly
    assert all(block_mask((8, 4), 1.0, rng).sum() == 1 for _ in range(20))
