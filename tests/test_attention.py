"""CLS attention maps (evaluation/attention.py), on a tiny ViT and on a random PersonViT-format
checkpoint converted without PyTorch (tools/convert.random_personvit_state_dict -> .safetensors)."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

from personvit_jax import inference
from personvit_jax.data.augment import reid_test_transform
from personvit_jax.evaluation.attention import checkpoint_cls_attention, cls_attention
from personvit_jax.models.vit import LN_EPS, ViT, vit_from_config
from personvit_jax.tools import convert
from personvit_jax.training import checkpointing

TINY = dict(width=64, depth=2, num_heads=2, patch_size=8, patch_stride=8, pos_grid=(8, 4))


def _reference_cls_attention(vit, params, images):
    """The last block's softmax(q k^T / sqrt(hd)) row of the CLS token, recomputed from the
    block's input (`pre_last`) and its norm1 / qkv parameters."""
    x = vit.apply({"params": params}, images, return_pre_last=True)["pre_last"]  # [B, 1 + N, D]
    blk = params[f"blocks_{vit.depth - 1}"]
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    y = (x - mu) / jnp.sqrt(var + LN_EPS) * blk["norm1"]["scale"] + blk["norm1"]["bias"]
    qkv = y @ blk["attn"]["qkv"]["kernel"] + blk["attn"]["qkv"]["bias"]
    b, n, _ = x.shape
    hd = vit.width // vit.num_heads
    qkv = qkv.reshape(b, n, 3, vit.num_heads, hd)
    logits = jnp.einsum("bqhd,bkhd->bhqk", qkv[:, :, 0], qkv[:, :, 1]) * hd ** -0.5
    return jax.nn.softmax(logits, -1)[:, :, 0, 1:]  # [B, heads, N]


def test_cls_attention_is_the_last_blocks_cls_row_on_the_patch_grid():
    vit = ViT(**TINY)
    images = jax.random.normal(jax.random.PRNGKey(1), (3, 64, 32, 3))
    params = vit.init(jax.random.PRNGKey(0), images[:1])["params"]
    maps = cls_attention(vit, {"params": params}, images)
    assert maps.shape == (3, 2, 8, 4)  # [B, heads, gh, gw]: 64x32 input, 8x8 patches
    want = _reference_cls_attention(vit, params, images).reshape(3, 2, 8, 4)
    np.testing.assert_allclose(maps, want, atol=1e-6)
    total = np.asarray(maps.sum((2, 3)))  # the rest went to the CLS token itself
    assert np.all(total > 0) and np.all(total < 1)
    # The maps depend on the image: not a constant pattern.
    assert not np.allclose(maps[0], maps[1], atol=1e-4)


def _person_images(n, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (128, 64, 3), dtype=np.uint8)) for _ in range(n)]


@pytest.fixture(scope="module")
def converted_personvit(tmp_path_factory):
    """A random PersonViT ReID state dict saved as .safetensors and converted (no PyTorch)."""
    from safetensors.numpy import save_file

    d = tmp_path_factory.mktemp("personvit")
    sd = convert.random_personvit_state_dict(width=64, depth=2, patch_size=8,
                                             image_size=(64, 32), num_classes=10, seed=3)
    save_file(sd, str(d / "reid.safetensors"))
    summary = convert.convert(str(d / "reid.safetensors"), str(d / "converted"),
                              image_size=(64, 32), num_heads=2, log=lambda *a: None)
    return str(d / "converted"), sd, summary


def test_random_personvit_state_dict_converts_completely(converted_personvit):
    out, sd, summary = converted_personvit
    assert (summary["format"], summary["kind"]) == ("personvit", "reid")
    # Everything is mapped but what the original model never uses at test time.
    assert sorted(k for k, _ in summary["dropped"]) == [
        "base.fc.bias", "base.fc.weight", "bottleneck.bias", "bottleneck.num_batches_tracked"]
    params = checkpointing.load_state_tree(out)["params"]
    np.testing.assert_array_equal(params["neck"]["classifier"]["kernel"],
                                  sd["classifier.weight"].T)
    np.testing.assert_array_equal(params["backbone"]["blocks_1"]["mlp"]["fc1"]["kernel"],
                                  sd["base.blocks.1.mlp.fc1.weight"].T)


def test_checkpoint_cls_attention_uses_the_checkpoints_backbone_and_preprocessing(
        converted_personvit):
    out = converted_personvit[0]
    images = _person_images(2)
    maps = checkpoint_cls_attention(out, images)
    cfg = inference.saved_config(out)
    vit = vit_from_config(cfg.model)
    x = np.stack([reid_test_transform(im, cfg.data) for im in images])  # 64x32, mean/std 0.5
    params = checkpointing.load_state_tree(out)["params"]["backbone"]
    np.testing.assert_allclose(maps, cls_attention(vit, {"params": params}, x), atol=1e-6)
    assert maps.shape == (2, 2, 8, 4)


def test_checkpoint_cls_attention_needs_camera_ids_for_sie(tmp_path):
    from safetensors.numpy import save_file

    sd = convert.random_personvit_state_dict(width=64, depth=2, patch_size=8,
                                             image_size=(64, 32), num_classes=10)
    sd["base.sie_embed"] = np.random.default_rng(0).normal(size=(6, 1, 64)).astype(np.float32)
    save_file(sd, str(tmp_path / "sie.safetensors"))
    out = str(tmp_path / "converted")
    convert.convert(str(tmp_path / "sie.safetensors"), out, image_size=(64, 32), num_heads=2,
                    dataset="market1501", log=lambda *a: None)
    images = _person_images(2)
    with pytest.raises(ValueError, match="SIE camera embeddings .6 cameras.*camids="):
        checkpoint_cls_attention(out, images)
    by_camera = [checkpoint_cls_attention(out, images, camids=[c, c]) for c in (0, 5)]
    assert by_camera[0].shape == (2, 2, 8, 4)
    assert not np.allclose(by_camera[0], by_camera[1])  # the camera embedding is used


def test_checkpoint_cls_attention_overrides_are_applied(converted_personvit):
    """A set model field wins over the saved config (here: a wrong depth is refused by the
    parameter tree, which proves it was used)."""
    out = converted_personvit[0]
    with pytest.raises(Exception, match="blocks_2"):
        checkpoint_cls_attention(out, _person_images(1),
                                 model_cfg=ml_collections.ConfigDict({"depth": 3}))


def test_attention_image_puts_the_heat_where_the_map_is_high():
    from personvit_jax.evaluation import visualize

    grey = Image.new("RGB", (32, 64), (90, 90, 90))  # any size: drawn at size_hw
    maps = np.zeros((1, 2, 8, 4), np.float32)
    maps[0, 0, 1, 0] = 1.0  # head 0: top-left patch; head 1: bottom-right
    maps[0, 1, 7, 3] = 1.0
    h, w = 96, 48
    picture = np.asarray(visualize.attention_image([grey], maps, size_hw=(h, w)),
                         np.float32).sum(-1)
    assert picture.shape == (h + visualize.CAPTION, 3 * (w + visualize.BORDER))
    tile = lambda i: picture[visualize.CAPTION:, i * (w + visualize.BORDER):][:, :w]
    top_left, bottom_right = (h * 3 // 16, w // 8), (h * 15 // 16, w * 7 // 8)
    assert tile(1)[top_left] > tile(1)[bottom_right] + 100
    assert tile(2)[bottom_right] > tile(2)[top_left] + 100
    np.testing.assert_allclose(tile(0), 270.0)  # the image itself, untouched
    with pytest.raises(ValueError, match="1 images but maps for 2"):
        visualize.attention_image([grey], np.zeros((2, 2, 8, 4)))
