"""Golden fixtures (tests/fixtures/weights, written by tests/fixtures/make_weights_fixtures.py):
every PyTorch source format, converted with the command-line tool, gives through the one inference
path (`inference.load_model`) the features the PyTorch originals computed for
the committed images: max |diff| <= 1e-5. Every fixture, `.pth` included, is converted with
`import torch` made to fail; only the check that the fixture script reproduces the files needs
PyTorch."""

import functools
import importlib.util
import os

import jax
import numpy as np
import pytest

from conftest import WEIGHT_FIXTURES, block_torch
from personvit_jax import inference
from personvit_jax.data.augment import load_rgb, normalize
from personvit_jax.models import init_from
from personvit_jax.tools import convert as conv
from personvit_jax.training import checkpointing

# Max |ours - PyTorch| on raw features (|feature| up to ~3). Measured: <= 1e-6. Tighter than the
# 1e-4 asked for, because 1e-4 would let real mismatches through: on these fixtures LayerNorm eps
# 1e-5 instead of 1e-6 moves the features by 2.8e-5 (tanh GELU 5.9e-4, bicubic resizing 0.13).
TOL = 1e-5
TINY = ["--num_heads=2", "--image_size=64,32"]  # width 32 is no standard size: heads are given


@functools.cache
def golden() -> dict:
    with np.load(os.path.join(WEIGHT_FIXTURES, "features.npz")) as f:
        return {k: f[k] for k in f.files}


@functools.cache
def images_u8() -> np.ndarray:
    """The committed test images, uint8 [3, 64, 32, 3]."""
    return np.stack([np.asarray(load_rgb(os.path.join(WEIGHT_FIXTURES, "images", f"{i}.png")))
                     for i in range(3)])


def convert(fixture: str, out, capsys, *flags) -> str:
    """`python -m personvit_jax.tools.convert` on a fixture; returns what it printed."""
    argv = [f"--input={os.path.join(WEIGHT_FIXTURES, fixture)}", f"--output={out}", *TINY, *flags]
    code = conv.main(argv)
    printed = capsys.readouterr()
    assert code == 0, printed.err
    return printed.out


def features(out, neck_feat: str = "before", camids=None) -> np.ndarray:
    """Raw features of the committed images from a converted checkpoint: its saved config's
    model and normalisation, the evaluation embed function."""
    loaded = inference.load_model(str(out))
    embed = loaded.embed_fn(neck_feat, normalize=False)
    p = loaded.preprocessing
    x = normalize(images_u8(), p.mean, p.std)
    c = np.zeros(len(x), np.int32) if camids is None else np.asarray(camids, np.int32)
    return np.asarray(jax.jit(embed)(loaded.variables, x, c))


MEASURED: dict = {}  # features.npz key -> (max |ours - PyTorch|, max |PyTorch feature|)


@pytest.fixture(scope="module", autouse=True)
def report_measured():
    """Prints the measured differences after the module's tests (visible with `pytest -s`)."""
    yield
    for key, (diff, scale) in sorted(MEASURED.items()):
        print(f"{key:22s} max |ours - PyTorch| = {diff:.2e}   (max |feature| {scale:.2f})")


def assert_matches(ours: np.ndarray, key: str) -> None:
    ref = golden()[key]
    assert ours.shape == ref.shape, (key, ours.shape, ref.shape)
    diff = float(np.abs(ours - ref).max())
    MEASURED[key] = (diff, float(np.abs(ref).max()))
    assert diff <= TOL, f"{key}: max |diff| {diff:g} > {TOL:g}"


# ---------------------------------------------------------------------------- ReID models
@pytest.mark.parametrize("fixture", ["personvit_module.pth", "personvit.npz"])
def test_personvit_reid(fixture, tmp_path, capsys, monkeypatch):
    """BNNeck running stats, classifier, `module.` prefix (the .pth) or none (the .npz)."""
    block_torch(monkeypatch)
    out = tmp_path / "out"
    log = convert(fixture, out, capsys)
    assert "format personvit" in log
    assert "dropped base.fc.weight" in log and "dropped bottleneck.num_batches_tracked" in log
    cfg = inference.saved_config(str(out))
    assert (cfg.model.width, cfg.model.depth, cfg.model.num_heads) == (32, 2, 2)
    assert (cfg.model.patch_size, tuple(cfg.model.pos_grid)) == (8, (8, 4))
    assert tuple(cfg.data.mean) == tuple(cfg.data.std) == (0.5, 0.5, 0.5)
    loaded = inference.load_model(str(out))
    assert loaded.kind == "reid" and loaded.num_classes == 10
    assert loaded.variables["params"]["neck"]["classifier"]["kernel"].shape == (32, 10)
    for neck in ("before", "after"):
        assert_matches(features(out, neck), f"personvit_{neck}")


def test_transreid_jpm_sie_overlapping(tmp_path, capsys, monkeypatch):
    """JPM (b1 -> global branch, b2 -> 4 local branches on shifted + shuffled patches), SIE with
    6 cameras, stride 5 < patch 8: a 12x5 grid (neither h = 2w nor square), which the stride
    search finds from the image size."""
    block_torch(monkeypatch)
    fixture = os.path.join(WEIGHT_FIXTURES, "transreid_jpm_sie.pth")
    assert conv.main([f"--input={fixture}", f"--output={tmp_path / 'bad'}", *TINY]) == 2
    assert "sie_embed has 6 camera rows" in capsys.readouterr().err
    out = tmp_path / "out"
    log = convert("transreid_jpm_sie.pth", out, capsys, "--dataset=market1501")
    assert "JPM with 4 groups" in log and "SIE with 6 cameras" in log
    cfg = inference.saved_config(str(out))
    assert cfg.model.patch_stride == 5 and tuple(cfg.model.pos_grid) == (12, 5)
    assert cfg.model.jpm and cfg.model.jpm_groups == 4 and cfg.model.sie
    for neck in ("before", "after"):
        assert_matches(features(out, neck, camids=golden()["camids"]), f"transreid_{neck}")

    # init_from into a model of the same grid keeps pos_embed; into an 8x4 model it is resized
    # from the 12x5 grid read from the saved config (a token count of 60 does not tell it).
    init = inference.init_source(str(out))
    assert init.pos_grid == (12, 5)
    source = init.backbone
    target = {"backbone": jax.tree.map(np.zeros_like, source)}
    merged = init_from.merge_backbone(target, source, (12, 5), str(out), init.pos_grid, log=print)
    np.testing.assert_array_equal(merged["backbone"]["pos_embed"], source["pos_embed"])
    target["backbone"]["pos_embed"] = np.zeros((1, 33, 32), np.float32)
    merged = init_from.merge_backbone(target, source, (8, 4), str(out), init.pos_grid, log=print)
    expected = init_from.resize_pos_embed_tokens(source["pos_embed"], (8, 4), (12, 5))
    np.testing.assert_array_equal(merged["backbone"]["pos_embed"], expected)


# ---------------------------------------------------------------------------- backbones
def test_ibot_teacher_and_student_resized_from_square_grid(tmp_path, capsys, monkeypatch):
    """iBOT checkpoint stored for 8x8 (64x64 pretraining) -> backbone at 64x32 (8x4), position
    embedding resized bilinearly as PersonViT's load_param does (not bicubically as iBOT's own
    ViT interpolates at run time: the fixture tells the two apart)."""
    block_torch(monkeypatch)
    out = tmp_path / "teacher"
    log = convert("ibot.pth", out, capsys)
    assert "format ibot (teacher)" in log and "stored grid (8, 8)" in log
    assert "resized params/backbone/pos_embed" in log
    assert "dropped head.last_layer.weight_v" in log
    tree = checkpointing.load_state_tree(str(out))
    assert list(tree) == ["params"] and list(tree["params"]) == ["backbone"]
    cfg = inference.saved_config(str(out))
    assert tuple(cfg.data.mean) == conv.IMAGENET_MEAN and tuple(cfg.model.pos_grid) == (8, 4)
    ours = features(out)
    assert_matches(ours, "ibot_teacher")
    assert np.abs(ours - golden()["ibot_teacher_bicubic"]).max() > 100 * TOL

    out = tmp_path / "student"
    convert("ibot.pth", out, capsys, "--which=student")
    from personvit_jax.tools.weights_io import read_weights

    masked = read_weights(os.path.join(WEIGHT_FIXTURES, "ibot.pth"))["student"][
        "module.backbone.masked_embed"]
    mask_token = inference.init_source(str(out)).backbone["mask_token"]
    np.testing.assert_array_equal(mask_token.reshape(-1), masked.reshape(-1))
    assert_matches(features(out), "ibot_student")


@pytest.mark.parametrize("fixture,key,resized", [("dino.pth", "dino_teacher", False),
                                                 ("timm.safetensors", "timm", True)])
def test_dino_and_timm_backbones(fixture, key, resized, tmp_path, capsys, monkeypatch):
    """DINO teacher stored for the 8x4 grid (no resize); timm ViT stored for 6x6 (48x48, the
    224x224-style square grid): resized up in height and down in width, without PyTorch."""
    block_torch(monkeypatch)
    out = tmp_path / "out"
    log = convert(fixture, out, capsys)
    assert f"format {key.split('_')[0]}" in log
    assert ("resized params/backbone/pos_embed" in log) == resized
    if key == "timm":
        assert "dropped head.weight" in log and "stored grid (6, 6)" in log
    assert_matches(features(out), key)


@pytest.mark.parametrize("fixture,key,shared,learned_norm", [
    ("ibot.pth", "ibot_teacher_head", True, True), ("dino.pth", "dino_teacher_head", True, False)])
def test_heads_logits(fixture, key, shared, learned_norm, tmp_path, capsys, monkeypatch):
    """--heads: {'teacher': {'backbone', 'head'}} with exactly our pretraining model's shapes and
    the logits of the weight-normed PyTorch head (iBOT: learned g, last_layer2 = last_layer;
    DINO: g fixed at 1)."""
    block_torch(monkeypatch)
    from personvit_jax.models.pretrain import pretrain_model_from_config

    out = tmp_path / "out"
    convert(fixture, out, capsys, "--heads")
    cfg = inference.saved_config(str(out))
    assert (cfg.head.out_dim, cfg.head.hidden_dim, cfg.head.bottleneck_dim) == (48, 32, 16)
    assert cfg.head.shared_head == shared and cfg.head.norm_last_layer == (not learned_norm)
    tree = checkpointing.load_state_tree(str(out))
    model = pretrain_model_from_config(cfg, student=False)
    x = normalize(images_u8(), cfg.data.mean, cfg.data.std)
    init = jax.eval_shape(lambda: model.init(jax.random.key(0), x))["params"]
    assert jax.tree.map(np.shape, tree["teacher"]) == jax.tree.map(lambda a: a.shape, init)
    logits = model.apply({"params": tree["teacher"]}, x, with_patches=False)["cls_logits"]
    assert_matches(np.asarray(logits), key)


# ---------------------------------------------------------------------------- the fixtures
def test_fixtures_are_what_the_script_writes():
    """Rerunning the (seeded) script reproduces the content of every committed file."""
    pytest.importorskip("torch", reason="the fixture script needs requirements-convert.txt")
    path = os.path.join(WEIGHT_FIXTURES, os.pardir, "make_weights_fixtures.py")
    spec = importlib.util.spec_from_file_location("make_weights_fixtures", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--output", WEIGHT_FIXTURES, "--check"]) == 0
