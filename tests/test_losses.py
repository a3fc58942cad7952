"""Losses against values computed by hand."""

import math

import jax.numpy as jnp
import numpy as np

from personvit_jax.losses import batch_hard_triplet, euclidean_distances, id_cross_entropy, reid_loss


def test_cross_entropy_hand_computed():
    logits = jnp.array([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    labels = jnp.array([0, 2])
    z = math.log(math.exp(2) + 2)
    expected = ((z - 2.0) + math.log(3.0)) / 2
    np.testing.assert_allclose(id_cross_entropy(logits, labels), expected, rtol=1e-6)
    # smoothing 0.3 over 3 classes: target (0.8, 0.1, 0.1) for sample 0
    eps = 0.3
    ls0 = 0.8 * (z - 2.0) + 0.1 * z + 0.1 * z
    np.testing.assert_allclose(id_cross_entropy(logits, labels, eps), (ls0 + math.log(3.0)) / 2,
                               rtol=1e-6)


def test_euclidean_distances():
    x = jnp.array([[0.0, 0.0], [3.0, 4.0]])
    np.testing.assert_allclose(euclidean_distances(x, x), [[1e-6, 5.0], [5.0, 1e-6]], atol=1e-5)


def test_batch_hard_triplet_soft_and_margin():
    # 1-D features: ids A = {0, 1}, B = {3, 7}
    f = jnp.array([[0.0], [1.0], [3.0], [7.0]])
    y = jnp.array([0, 0, 1, 1])
    # hardest positive / nearest negative per anchor:
    d_ap = np.array([1.0, 1.0, 4.0, 4.0])
    d_an = np.array([3.0, 2.0, 2.0, 6.0])
    soft = np.mean(np.log1p(np.exp(d_ap - d_an)))
    np.testing.assert_allclose(batch_hard_triplet(f, y), soft, rtol=1e-5)
    hinge = np.mean(np.maximum(0.0, d_ap - d_an + 0.3))
    np.testing.assert_allclose(batch_hard_triplet(f, y, margin=0.3), hinge, rtol=1e-5)


def test_reid_loss_jpm_weighting():
    b, c, d = 4, 3, 2
    y = jnp.array([0, 0, 1, 1])
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(b, 3, c)), jnp.float32)
    feats = jnp.asarray(rng.normal(size=(b, 3, d)), jnp.float32)
    total, m = reid_loss({"logits": logits, "feats": feats}, y)
    ids = [float(id_cross_entropy(logits[:, i], y)) for i in range(3)]
    tri = [float(batch_hard_triplet(feats[:, i], y)) for i in range(3)]
    exp_id = 0.5 * ids[0] + 0.5 * (ids[1] + ids[2]) / 2
    exp_tri = 0.5 * tri[0] + 0.5 * (tri[1] + tri[2]) / 2
    np.testing.assert_allclose(m["id_loss"], exp_id, rtol=1e-5)
    np.testing.assert_allclose(total, exp_id + exp_tri, rtol=1e-5)
    total1, _ = reid_loss({"logits": logits[:, :1], "feats": feats[:, :1]}, y, id_weight=2.0)
    np.testing.assert_allclose(total1, 2 * ids[0] + tri[0], rtol=1e-5)
