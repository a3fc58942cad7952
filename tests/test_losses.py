"""Losses against values computed by hand."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

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


# ------------------------------------------------------------------ pretraining losses
from personvit_jax.losses import (cls_distillation, masked_patch_distillation,  # noqa: E402
                                  teacher_probs, update_center)


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_teacher_probs_centre_and_sharpen():
    t = jnp.array([[1.0, 2.0, 3.0]])
    c = jnp.array([[1.0, 1.0, 0.0]])
    np.testing.assert_allclose(teacher_probs(t, c, 0.5), _softmax(np.array([[0.0, 2.0, 6.0]])),
                               rtol=1e-6)


def test_cls_distillation_pairs_by_hand():
    rng = np.random.default_rng(0)
    v, g, b, k = 4, 2, 3, 5  # 2 global + 2 local student crops
    s = rng.normal(size=(v, b, k)).astype(np.float32)
    t = rng.normal(size=(g, b, k)).astype(np.float32)
    c = rng.normal(size=(1, k)).astype(np.float32)
    st, tt = 0.1, 0.04
    terms = []
    for q in range(g):
        tq = _softmax((t[q] - c) / tt)
        for vi in range(v):
            if vi == q:
                continue
            log_s = np.log(_softmax(s[vi] / st))
            terms.append(np.mean(np.sum(-tq * log_s, -1)))
    assert len(terms) == g * v - g
    np.testing.assert_allclose(cls_distillation(s, t, c, st, tt), np.mean(terms), rtol=1e-5)


def test_masked_patch_distillation_by_hand():
    rng = np.random.default_rng(1)
    g, b, n, k = 2, 2, 4, 3
    s = rng.normal(size=(g, b, n, k)).astype(np.float32)
    t = rng.normal(size=(g, b, n, k)).astype(np.float32)
    c = np.zeros((1, k), np.float32)
    masks = np.zeros((g, b, n), bool)
    masks[0, 0, [1, 3]] = True
    masks[1, 1, [0]] = True  # images (0, 1) and (1, 0) are unmasked: they contribute 0
    ce = -np.sum(_softmax(t / 0.07) * np.log(_softmax(s / 0.1)), -1)
    per_image = np.array([[ce[0, 0, [1, 3]].mean(), 0.0], [0.0, ce[1, 1, 0]]])
    got = masked_patch_distillation(s, t, masks, c, 0.1, 0.07)
    np.testing.assert_allclose(got, per_image.mean(), rtol=1e-5)
    # the student's unmasked positions get no gradient
    import jax
    grad = jax.grad(lambda x: masked_patch_distillation(x, t, masks, c, 0.1, 0.07))(jnp.asarray(s))
    assert np.all(np.asarray(grad)[~masks] == 0) and np.any(np.asarray(grad)[masks] != 0)


def test_update_center():
    c = jnp.zeros((1, 2))
    t = jnp.array([[[1.0, 3.0], [3.0, 5.0]]])  # [crops=1, B=2, K=2]: mean (2, 4)
    np.testing.assert_allclose(update_center(c, t, 0.9), [[0.2, 0.4]], rtol=1e-6)


def test_collapse_signals():
    """DINO's two collapse modes: every image to one prototype (entropy of the mean -> 0) and
    uniform outputs (mean entropy -> ln K); the effective rank of features (RankMe)."""
    import math

    from personvit_jax.evaluation.features import effective_rank
    from personvit_jax.losses import teacher_entropies

    k = 16
    zero = jnp.zeros((1, k))
    one_hot = jnp.tile(jax.nn.one_hot(3, k) * 100.0, (2, 5, 1))  # [crops, batch, K]
    e = teacher_entropies(one_hot, zero, 1.0)
    assert float(e["entropy_of_mean"]) < 1e-3 and float(e["mean_entropy"]) < 1e-3
    e = teacher_entropies(jnp.zeros((2, 5, k)), zero, 0.04)
    assert float(e["mean_entropy"]) == pytest.approx(math.log(k), rel=1e-5)
    spread = jnp.tile(jnp.eye(k) * 100.0, (2, 1, 1))  # each image its own prototype
    e = teacher_entropies(spread, zero, 1.0)
    assert float(e["entropy_of_mean"]) == pytest.approx(math.log(k), rel=1e-4)
    assert float(e["mean_entropy"]) < 1e-3
    rng = np.random.default_rng(0)
    line = np.outer(rng.normal(size=50), rng.normal(size=8)) + rng.normal(size=8)  # + a mean
    assert effective_rank(line) == pytest.approx(1.0, abs=1e-3)
    assert effective_rank(np.concatenate([np.eye(8), -np.eye(8)])) == pytest.approx(8.0, rel=1e-6)


def test_collapse_signals_prototypes_used_and_feature_std():
    from personvit_jax.losses import feature_std, prototypes_used
    k = 16
    center = jnp.zeros((1, k))
    spread = jnp.eye(k)[:8] * 5.0  # 8 rows, 8 distinct argmax
    assert float(prototypes_used(spread, center)) == 1.0
    one = jnp.tile(jnp.eye(k)[:1], (8, 1))  # every row the same prototype
    assert float(prototypes_used(one, center)) == pytest.approx(1 / 8)
    # centring decides: a centre that removes prototype 0's lead moves every argmax
    assert float(prototypes_used(one + jnp.eye(k)[3] * 0.5, jnp.eye(k)[:1] * 2.0)) == 1 / 8
    # [2, 4, K] rows over every leading axis
    assert float(prototypes_used(spread.reshape(2, 4, k), center)) == 1.0
    d = 64
    rng = np.random.default_rng(0)
    iso = jnp.asarray(rng.normal(size=(4096, d)))
    assert float(feature_std(iso)) == pytest.approx(1 / np.sqrt(d), rel=0.05)
    collapsed = jnp.ones((32, d)) * 3.0 + 1e-4 * jnp.asarray(rng.normal(size=(32, d)))
    assert float(feature_std(collapsed)) < 1e-3


def test_camera_centres_follow_each_cameras_mean_and_one_camera_is_dinos_centre():
    from personvit_jax.losses import camera_sums, update_camera_centres, update_center

    rng = np.random.default_rng(0)
    offsets = rng.normal(size=(3, 8)) * 5  # what each camera adds to every image's output
    cams = np.array([0, 0, 1, 1, 1, 2, 0, 1])
    out = rng.normal(size=(8, 8)) + offsets[cams]
    centres = jnp.zeros((4, 8))  # camera 3 is absent from the batch
    for _ in range(200):
        sums, counts = camera_sums(jnp.asarray(out), jnp.asarray(cams), 4)
        centres = update_camera_centres(centres, sums, counts, 0.9)
    for c in range(3):  # each centre converges to its camera's batch mean
        np.testing.assert_allclose(centres[c], out[cams == c].mean(0), atol=1e-4)
    assert not np.asarray(centres[3]).any()
    # the centred outputs carry no camera offset: per-camera means are 0
    centred = out - np.asarray(centres)[cams]
    for c in range(3):
        np.testing.assert_allclose(centred[cams == c].mean(0), 0.0, atol=1e-4)
    # one camera for all: DINO's centre, update for update
    c1, c0 = jnp.full((1, 8), 0.3), jnp.full((1, 8), 0.3)
    sums, counts = camera_sums(jnp.asarray(out), jnp.zeros(8, jnp.int32), 1)
    np.testing.assert_allclose(update_camera_centres(c1, sums, counts, 0.9),
                               update_center(c0, jnp.asarray(out), 0.9), rtol=1e-6, atol=1e-6)
