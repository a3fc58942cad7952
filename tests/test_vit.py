"""ViT: shapes, patch embedding = convolution, pos-embed resizing, mask token, SIE, JPM."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from personvit_jax.models.heads import shift_and_shuffle
from personvit_jax.models.reid import ReIDModel, retrieval_embedding
from personvit_jax.models.vit import PatchEmbed, ViT, grid_size, resize_pos_embed

TINY = dict(width=64, depth=2, num_heads=2, patch_size=8, patch_stride=8, pos_grid=(8, 4))


def _init(model, x, **kw):
    return model.init(jax.random.PRNGKey(0), x, **kw)


def test_shapes_and_param_layout():
    vit = ViT(**TINY)
    x = jnp.ones((3, 64, 32, 3))
    v = _init(vit, x)
    out = vit.apply(v, x)
    assert out["cls"].shape == (3, 64) and out["patch"].shape == (3, 32, 64)
    p = v["params"]
    assert p["pos_embed"].shape == (1, 33, 64)
    assert p["patch_embed"]["kernel"].shape == (8, 8, 3, 64)
    assert p["blocks_0"]["attn"]["qkv"]["kernel"].shape == (64, 192)
    assert p["blocks_1"]["mlp"]["fc1"]["kernel"].shape == (64, 256)
    assert "mask_token" not in p and "sie_embed" not in p


def test_grid_size_overlapping():
    assert grid_size((256, 128), 16, 16) == (16, 8)
    assert grid_size((256, 128), 16, 12) == (21, 10)  # TransReID's overlapping patches
    with pytest.raises(ValueError, match="smaller than the patch"):
        grid_size((8, 8), 16, 16)


def test_patch_embed_matmul_equals_convolution():
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 32, 16, 3))
    pe = PatchEmbed(width=12, patch_size=8, stride=8)
    v = pe.init(jax.random.PRNGKey(0), x)
    fast = pe.apply(v, x)
    k, b = v["params"]["kernel"], v["params"]["bias"]
    conv = jax.lax.conv_general_dilated(x, k, (8, 8), "VALID",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC")) + b
    np.testing.assert_allclose(fast, conv, atol=1e-5)
    assert fast.shape == (2, 4, 2, 12)


def test_resize_pos_embed_identity_and_bilinear():
    g = jnp.arange(2 * 2 * 1, dtype=jnp.float32).reshape(2, 2, 1)
    assert resize_pos_embed(g, (2, 2)) is g
    up = np.asarray(resize_pos_embed(g, (4, 4)))[..., 0]
    # PyTorch F.interpolate(bilinear, align_corners=False) of [[0, 1], [2, 3]] to 4x4:
    expected = np.array([[0.0, 0.25, 0.75, 1.0], [0.5, 0.75, 1.25, 1.5],
                         [1.5, 1.75, 2.25, 2.5], [2.0, 2.25, 2.75, 3.0]])
    np.testing.assert_allclose(up, expected, atol=1e-6)


def test_other_resolution_uses_resized_pos_embed():
    vit = ViT(**TINY)
    v = _init(vit, jnp.ones((1, 64, 32, 3)))
    small = jax.random.normal(jax.random.PRNGKey(2), (2, 32, 16, 3))
    out = vit.apply(v, small)
    assert out["patch"].shape == (2, 8, 64)
    # Same result as a model whose stored grid already is the resized one.
    p = dict(v["params"])
    grid = resize_pos_embed(p["pos_embed"][0, 1:].reshape(8, 4, 64), (4, 2)).reshape(1, 8, 64)
    p["pos_embed"] = jnp.concatenate([p["pos_embed"][:, :1], grid], 1)
    out2 = ViT(**{**TINY, "pos_grid": (4, 2)}).apply({"params": p}, small)
    np.testing.assert_allclose(out["cls"], out2["cls"], atol=1e-5)


def test_mask_token_replaces_masked_patches_only():
    vit = ViT(**TINY, use_mask_token=True)
    x = jax.random.normal(jax.random.PRNGKey(3), (2, 64, 32, 3))
    v = _init(vit, x)
    v["params"]["mask_token"] = jnp.full((1, 1, 64), 7.0)
    none = np.zeros((2, 32), bool)
    np.testing.assert_allclose(vit.apply(v, x)["cls"], vit.apply(v, x, mask_bn=none)["cls"],
                               atol=1e-6)
    mask = none.copy()
    mask[0, :5] = True
    a, b = vit.apply(v, x)["cls"], vit.apply(v, x, mask_bn=mask)["cls"]
    assert not np.allclose(a[0], b[0]) and np.allclose(a[1], b[1], atol=1e-6)
    # Masked content is invisible: changing the pixels of masked patch 0 changes nothing.
    x2 = x.at[0, :8, :8].set(100.0)
    np.testing.assert_allclose(vit.apply(v, x2, mask_bn=mask)["cls"], b, atol=1e-5)
    with pytest.raises(ValueError, match="use_mask_token"):
        ViT(**TINY).apply(_init(ViT(**TINY), x), x, mask_bn=mask)


def test_drop_path_only_in_training_and_deterministic_per_key():
    vit = ViT(**TINY, drop_path_rate=0.5)
    x = jax.random.normal(jax.random.PRNGKey(4), (8, 64, 32, 3))
    v = _init(vit, x)
    ev = vit.apply(v, x)["cls"]
    np.testing.assert_allclose(ev, vit.apply(v, x)["cls"])
    k = {"dropout": jax.random.PRNGKey(5)}
    t1, t2 = vit.apply(v, x, train=True, rngs=k)["cls"], vit.apply(v, x, train=True, rngs=k)["cls"]
    np.testing.assert_array_equal(t1, t2)
    assert not np.allclose(t1, ev)


def test_sie_needs_camera_ids_and_changes_features():
    vit = ViT(**TINY, num_cameras=3)
    x = jax.random.normal(jax.random.PRNGKey(6), (2, 64, 32, 3))
    v = _init(vit, x, camera_ids_b=jnp.zeros(2, jnp.int32))
    assert v["params"]["sie_embed"].shape == (3, 1, 64)
    a = vit.apply(v, x, camera_ids_b=jnp.array([0, 0]))["cls"]
    b = vit.apply(v, x, camera_ids_b=jnp.array([1, 0]))["cls"]
    assert not np.allclose(a[0], b[0]) and np.allclose(a[1], b[1], atol=1e-6)
    with pytest.raises(ValueError, match="camera_ids"):
        vit.apply(v, x)


def test_remat_gives_same_values():
    x = jax.random.normal(jax.random.PRNGKey(7), (2, 64, 32, 3))
    v = _init(ViT(**TINY), x)
    loss = lambda m: lambda p: jnp.sum(m.apply({"params": p}, x)["cls"] ** 2)
    g1 = jax.grad(loss(ViT(**TINY)))(v["params"])
    g2 = jax.grad(loss(ViT(**TINY, remat=True)))(v["params"])
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_reid_model_outputs_and_bnneck():
    model = ReIDModel(ViT(**TINY), num_classes=5)
    x = jax.random.normal(jax.random.PRNGKey(8), (4, 64, 32, 3))
    v = model.init(jax.random.PRNGKey(0), x)
    neck = v["params"]["neck"]
    assert "bias" not in neck["bottleneck"]  # BN bias fixed at 0
    assert "bias" not in neck["classifier"] and neck["classifier"]["kernel"].shape == (64, 5)
    assert float(jnp.std(neck["classifier"]["kernel"])) < 0.003  # init std 0.001
    out = model.apply(v, x)
    assert out["feats"].shape == (4, 1, 64) and out["logits"].shape == (4, 1, 5)
    np.testing.assert_allclose(retrieval_embedding(out), out["feats"][:, 0])
    np.testing.assert_allclose(retrieval_embedding(out, "after"), out["feats_bn"][:, 0])
    _, upd = model.apply(v, x, train=True, mutable=["batch_stats"])
    assert not np.allclose(upd["batch_stats"]["neck"]["bottleneck"]["mean"], 0.0)


def test_shift_and_shuffle_worked_example():
    x = jnp.arange(1, 9, dtype=jnp.float32).reshape(1, 8, 1)
    got = np.asarray(shift_and_shuffle(x, shift=3, groups=2))[0, :, 0]
    np.testing.assert_array_equal(got, [3, 7, 4, 8, 5, 1, 6, 2])


def test_jpm_branches():
    model = ReIDModel(ViT(**TINY), num_classes=5, jpm=True)
    x = jax.random.normal(jax.random.PRNGKey(9), (2, 64, 32, 3))
    v = model.init(jax.random.PRNGKey(0), x)
    out = model.apply(v, x)
    assert out["feats"].shape == (2, 5, 64) and out["logits"].shape == (2, 5, 5)
    emb = retrieval_embedding(out)
    assert emb.shape == (2, 5 * 64)
    np.testing.assert_allclose(emb[:, 64:128], out["feats"][:, 1] / 4, rtol=1e-6)
