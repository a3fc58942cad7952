"""Weight conversion: PyTorch state dicts (PersonViT / TransReID / iBOT / DINO / timm names) saved
as real .pth / .safetensors / .npz files -> our checkpoint folder -> the same features as a
PyTorch reference forward pass written here (tiny ViTs: depth 2, width 64, 64x32 inputs)."""

import argparse
import json
import os
import pickle
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from conftest import REPO

torch = pytest.importorskip("torch", reason="conversion tests need requirements-convert.txt")
F = torch.nn.functional

from personvit_jax.evaluation.features import checkpoint_embed_fn  # noqa: E402
from personvit_jax.tools import convert as conv  # noqa: E402
from personvit_jax.training import checkpointing  # noqa: E402

D, DEPTH, HEADS, PATCH = 64, 2, 2, 8
IMAGE = (64, 32)
TINY = dict(image_size=IMAGE, num_heads=HEADS)


# ---------------------------------------------------------------------------- random weights
def _vit_state(seed: int, grid=(8, 4), cams: int = 0, mask_token: bool = False) -> dict:
    """A random ViT state dict with timm / TransReID names (torch tensors)."""
    g = torch.Generator().manual_seed(seed)
    n = lambda *s, scale=0.1: torch.randn(*s, generator=g) * scale
    sd = {"cls_token": n(1, 1, D, scale=0.5), "pos_embed": n(1, 1 + grid[0] * grid[1], D, scale=0.5),
          "patch_embed.proj.weight": n(D, 3, PATCH, PATCH, scale=0.05),
          "patch_embed.proj.bias": n(D)}
    for i in range(DEPTH):
        p = f"blocks.{i}."
        for ln in ("norm1", "norm2"):
            sd[p + ln + ".weight"], sd[p + ln + ".bias"] = 1 + n(D), n(D)
        for name, (o, i_) in {"attn.qkv": (3 * D, D), "attn.proj": (D, D),
                              "mlp.fc1": (4 * D, D), "mlp.fc2": (D, 4 * D)}.items():
            sd[p + name + ".weight"], sd[p + name + ".bias"] = n(o, i_, scale=0.15), n(o)
    sd["norm.weight"], sd["norm.bias"] = 1 + n(D), n(D)
    if cams:
        sd["sie_embed"] = n(cams, 1, D)
    if mask_token:
        sd["masked_embed"] = n(1, D)
    return sd


def _block_state(sd: dict, i: int, seed: int) -> dict:
    """A perturbed copy of block i + norm as an nn.Sequential(block, norm) (TransReID b1 / b2)."""
    g = torch.Generator().manual_seed(seed)
    out = {f"0.{k[len(f'blocks.{i}.'):]}": v + 0.05 * torch.randn(v.shape, generator=g)
           for k, v in sd.items() if k.startswith(f"blocks.{i}.")}
    out.update({f"1.{k[5:]}": v + 0.05 * torch.randn(v.shape, generator=g)
                for k, v in sd.items() if k.startswith("norm.")})
    return out


def _bn_state(seed: int, classes: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"weight": 1 + 0.2 * torch.randn(D, generator=g), "bias": torch.zeros(D),
            "running_mean": 0.3 * torch.randn(D, generator=g),
            "running_var": 0.5 + torch.rand(D, generator=g),
            "num_batches_tracked": torch.tensor(1000)}, torch.randn(classes, D, generator=g) * 0.01


def reid_state(seed=0, classes=751, grid=(8, 4), cams=0, jpm_groups=0) -> dict:
    """A PersonViT / TransReID ReID model state dict (`base.` ViT, BNNeck(s), classifier(s))."""
    vit = _vit_state(seed, grid, cams)
    sd = {f"base.{k}": v for k, v in vit.items()}
    sd["base.fc.weight"], sd["base.fc.bias"] = torch.zeros(1000, D), torch.zeros(1000)  # unused
    for i in range(jpm_groups + 1):
        sfx = "" if i == 0 else f"_{i}"
        bn, cls = _bn_state(seed + 10 + i, classes)
        sd.update({f"bottleneck{sfx}.{k}": v for k, v in bn.items()})
        sd[f"classifier{sfx}.weight"] = cls
    if jpm_groups:
        for b, s in (("b1", 1), ("b2", 2)):
            sd.update({f"{b}.{k}": v for k, v in _block_state(vit, DEPTH - 1, seed + s).items()})
    return sd


def head_state(seed: int, out_dim=48, hidden=32, bottleneck=16, learn_norm=True) -> dict:
    """iBOT / DINO head: mlp.{0,2,4} Linear (GELU between), weight-normed last layer (shared)."""
    g = torch.Generator().manual_seed(seed)
    n = lambda *s: torch.randn(*s, generator=g) * 0.1
    sd = {"mlp.0.weight": n(hidden, D), "mlp.0.bias": n(hidden), "mlp.2.weight": n(hidden, hidden),
          "mlp.2.bias": n(hidden), "mlp.4.weight": n(bottleneck, hidden), "mlp.4.bias": n(bottleneck),
          "last_layer.weight_v": n(out_dim, bottleneck),
          "last_layer.weight_g": (1 + n(out_dim, 1)) if learn_norm else torch.ones(out_dim, 1)}
    sd["last_layer2.weight_v"], sd["last_layer2.weight_g"] = (sd["last_layer.weight_v"],
                                                              sd["last_layer.weight_g"])
    return sd


# ---------------------------------------------------------------------------- torch reference
def t_block(sd, p, x):
    b, n, d = x.shape
    hd = d // HEADS
    y = F.layer_norm(x, (d,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], eps=1e-6)
    qkv = F.linear(y, sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"])
    q, k, v = qkv.reshape(b, n, 3, HEADS, hd).permute(2, 0, 3, 1, 4)  # 3 x [B, H, N, hd]
    att = torch.softmax(q @ k.transpose(-2, -1) * hd ** -0.5, dim=-1)
    y = (att @ v).transpose(1, 2).reshape(b, n, d)
    x = x + F.linear(y, sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
    y = F.layer_norm(x, (d,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], eps=1e-6)
    y = F.linear(F.gelu(F.linear(y, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"])),
                 sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])
    return x + y


def t_tokens(sd, p, images_bhwc, stride=PATCH, grid=None, camids=None, blocks=DEPTH):
    """Tokens after `blocks` blocks; the position embedding is resized (bilinear, no corner
    alignment) from the stored `grid` when the input's grid differs."""
    x = F.conv2d(torch.from_numpy(images_bhwc).permute(0, 3, 1, 2),
                 sd[p + "patch_embed.proj.weight"], sd[p + "patch_embed.proj.bias"], stride=stride)
    b, d, gh, gw = x.shape
    x = torch.cat([sd[p + "cls_token"].expand(b, -1, -1), x.flatten(2).transpose(1, 2)], 1)
    pos = sd[p + "pos_embed"]
    if grid is not None and tuple(grid) != (gh, gw):
        pg = pos[:, 1:].reshape(1, grid[0], grid[1], d).permute(0, 3, 1, 2)
        pg = F.interpolate(pg, size=(gh, gw), mode="bilinear", align_corners=False)
        pos = torch.cat([pos[:, :1], pg.permute(0, 2, 3, 1).reshape(1, gh * gw, d)], 1)
    x = x + pos
    if camids is not None:
        x = x + 3.0 * sd[p + "sie_embed"][torch.as_tensor(camids)]
    for i in range(blocks):
        x = t_block(sd, f"{p}blocks.{i}.", x)
    return x


def t_ln(sd, p, x):
    return F.layer_norm(x, (x.shape[-1],), sd[p + "weight"], sd[p + "bias"], eps=1e-6)


def t_cls(sd, p, images, **kw):
    return t_ln(sd, p + "norm.", t_tokens(sd, p, images, **kw))[:, 0]


def t_bn(sd, p, f):
    return ((f - sd[p + "running_mean"]) / torch.sqrt(sd[p + "running_var"] + 1e-5)
            * sd[p + "weight"] + sd[p + "bias"])


def t_reid(sd, images, neck_feat="before", stride=PATCH, camids=None, groups=0, shift=5,
           shuffle=2):
    """Test feature of a PersonViT / TransReID ReID model (JPM: global from b1 on the output of
    blocks[:-1], locals from b2 on shifted + shuffled patch groups, divided by the group count)."""
    if not groups:
        f = t_cls(sd, "base.", images, stride=stride, camids=camids)
        return f if neck_feat == "before" else t_bn(sd, "bottleneck.", f)
    x = t_tokens(sd, "base.", images, stride=stride, camids=camids, blocks=DEPTH - 1)
    run = lambda b, t: t_ln(sd, f"{b}.1.", t_block(sd, f"{b}.0.", t))[:, 0]
    feats = [run("b1", x)]
    cls, patches = x[:, :1], x[:, 1:]
    patches = torch.cat([patches[:, shift - 1:], patches[:, :shift - 1]], 1)
    bsz, n, d = patches.shape
    patches = patches.reshape(bsz, shuffle, n // shuffle, d).transpose(1, 2).reshape(bsz, n, d)
    per = n // groups
    feats += [run("b2", torch.cat([cls, patches[:, i * per:(i + 1) * per]], 1))
              for i in range(groups)]
    if neck_feat == "after":
        feats = [t_bn(sd, "bottleneck." if i == 0 else f"bottleneck_{i}.", f)
                 for i, f in enumerate(feats)]
    return torch.cat([feats[0]] + [f / groups for f in feats[1:]], 1)


def t_head_logits(sd, p, cls_bd):
    x = F.gelu(F.linear(cls_bd, sd[p + "mlp.0.weight"], sd[p + "mlp.0.bias"]))
    x = F.gelu(F.linear(x, sd[p + "mlp.2.weight"], sd[p + "mlp.2.bias"]))
    x = F.normalize(F.linear(x, sd[p + "mlp.4.weight"], sd[p + "mlp.4.bias"]), dim=-1)
    v = sd[p + "last_layer.weight_v"]
    w = sd[p + "last_layer.weight_g"] * v / v.norm(dim=1, keepdim=True)
    return x @ w.T


# ---------------------------------------------------------------------------- helpers
def images(n=3, size=IMAGE, seed=0):
    return np.random.default_rng(seed).normal(size=(n, *size, 3)).astype(np.float32)


def features(out_dir, neck_feat="before", camids=None, imgs=None):
    """Features of a converted checkpoint through the evaluation path (saved config's model)."""
    cfg = checkpointing.saved_config(out_dir)
    eval_cfg = ml_collections.ConfigDict({"neck_feat": neck_feat, "normalize": False,
                                          "flip": False})
    cams = 6 if cfg.model.sie else 0  # the SIE tests use Market-1501's 6 cameras
    embed, variables, kind = checkpoint_embed_fn(out_dir, cfg.model, eval_cfg, cams)
    x = images() if imgs is None else imgs
    c = np.zeros(len(x), np.int32) if camids is None else np.asarray(camids, np.int32)
    return np.asarray(jax.jit(embed)(variables, x, c)), kind


def assert_close(ours, ref):
    ref = ref.detach().numpy() if hasattr(ref, "detach") else ref
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)


def quiet(*_):
    pass


# ---------------------------------------------------------------------------- ReID models
@pytest.mark.parametrize("prefix", ["", "module."])
def test_personvit_reid_features_match_torch(tmp_path, prefix):
    sd = reid_state(seed=1)
    path = tmp_path / "reid.pth"
    torch.save({prefix + k: v for k, v in sd.items()}, path)
    log = []
    out = tmp_path / "out"
    summary = conv.convert(str(path), str(out), num_heads=HEADS, image_size=IMAGE, log=log.append)
    assert summary["kind"] == "reid" and summary["format"] == "personvit"
    assert any("dropped base.fc.weight" in line for line in log)
    assert any("dropped bottleneck.num_batches_tracked" in line for line in log)
    cfg = json.load(open(out / "config.json"))
    assert cfg["data"]["name"] == "market1501"  # 751 classes
    assert (cfg["model"]["width"], cfg["model"]["depth"], cfg["model"]["patch_size"]) == (D, DEPTH, PATCH)
    assert tuple(cfg["model"]["pos_grid"]) == (8, 4) and tuple(cfg["data"]["mean"]) == (0.5,) * 3

    kind, variables = checkpointing.inference_variables(str(out))
    assert kind == "reid"
    assert variables["params"]["neck"]["classifier"]["kernel"].shape == (D, 751)
    x = images()
    before, _ = features(str(out), "before", imgs=x)
    after, _ = features(str(out), "after", imgs=x)
    with torch.no_grad():
        assert_close(before, t_reid(sd, x, "before"))
        assert_close(after, t_reid(sd, x, "after"))


def test_transreid_jpm_sie_overlapping_patches(tmp_path):
    """Stride 5 < patch 8 gives a 12x5 grid (60 tokens: neither h = 2w nor square, like
    TransReID's 21x10 at stride 12): the grid comes from the image size and stride. JPM's b1/b2
    and SIE's camera embedding are mapped."""
    sd = reid_state(seed=2, classes=20, grid=(12, 5), cams=6, jpm_groups=4)
    path = tmp_path / "transreid.pth"
    torch.save(sd, path)
    with pytest.raises(ValueError, match="sie_embed has 6 camera rows.*--dataset"):
        conv.convert(str(path), str(tmp_path / "bad"), log=quiet, **TINY)
    out = str(tmp_path / "out")
    conv.convert(str(path), out, fmt="transreid", dataset="market1501", log=quiet, **TINY)
    cfg = checkpointing.saved_config(out)
    assert cfg.model.patch_stride == 5 and tuple(cfg.model.pos_grid) == (12, 5)
    assert cfg.model.jpm and cfg.model.jpm_groups == 4 and cfg.model.sie
    x, cams = images(), [0, 3, 5]
    for neck in ("before", "after"):
        ours, _ = features(out, neck, camids=cams, imgs=x)
        with torch.no_grad():
            assert_close(ours, t_reid(sd, x, neck, stride=5, camids=cams, groups=4))
    # init_from into a stride-8 model reads the 12x5 grid from the saved config (no guessing).
    target = {"backbone": conv.unflatten({k[2:]: v for k, v in conv.target_tree(
        cfg, "backbone").items()})}
    merged = checkpointing.merge_backbone(target, checkpointing.pretrained_backbone(out), out,
                                          (12, 5), log=quiet)
    np.testing.assert_array_equal(merged["backbone"]["pos_embed"], sd["base.pos_embed"].numpy())
    target_8x4 = jax.tree.map(lambda a: a, target)
    target_8x4["backbone"]["pos_embed"] = jax.ShapeDtypeStruct((1, 33, D), np.float32)
    merged = checkpointing.merge_backbone(target_8x4, checkpointing.pretrained_backbone(out), out,
                                          (8, 4), log=quiet)
    assert merged["backbone"]["pos_embed"].shape == (1, 33, D)


def test_resized_grid_matches_torch_interpolation(tmp_path):
    """A ReID model stored for 8x4 run at 96x48 (12x6 grid): pos_embed resized at conversion
    exactly as torch's bilinear interpolate (TransReID / PersonViT resize_pos_embed)."""
    sd = reid_state(seed=3)
    path = tmp_path / "reid.pth"
    torch.save(sd, path)
    out = str(tmp_path / "out")
    conv.convert(str(path), out, num_heads=HEADS, image_size=(96, 48), patch_stride=PATCH,
                 log=quiet)
    assert tuple(checkpointing.saved_config(out).model.pos_grid) == (12, 6)
    x = images(size=(96, 48))
    ours, _ = features(out, imgs=x)
    with torch.no_grad():
        assert_close(ours, t_cls(sd, "base.", x, grid=(8, 4)))


# ---------------------------------------------------------------------------- iBOT / DINO
def ibot_checkpoint(seed=4, grid=(8, 8)):
    """An iBOT-style training checkpoint: student/teacher with backbone.* and head.*, args as
    an argparse.Namespace, optimizer state, epoch, loss centres."""
    teacher = {f"backbone.{k}": v for k, v in _vit_state(seed, grid).items()}
    teacher.update({f"head.{k}": v for k, v in head_state(seed).items()})
    student = {f"module.backbone.{k}": v for k, v in _vit_state(seed + 1, grid, mask_token=True).items()}
    student.update({f"module.head.{k}": v for k, v in head_state(seed + 1).items()})
    args = argparse.Namespace(arch="vit_small", patch_size=PATCH, out_dim=48, pred_ratio=0.3,
                              norm_last_layer=False, output_dir="/tmp/ibot")
    return {"student": student, "teacher": teacher, "epoch": 3, "args": args,
            "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]},
            "ibot_loss": {"center": torch.zeros(1, 48), "center2": torch.zeros(1, 1, 48)}}


def test_ibot_teacher_backbone_resized_from_square_grid(tmp_path):
    """iBOT teacher stored for an 8x8 grid (64x64 pretraining) -> backbone at 64x32 (8x4)."""
    ck = ibot_checkpoint()
    path = tmp_path / "ibot.pth"
    torch.save(ck, path)
    out = str(tmp_path / "out")
    log = []
    summary = conv.convert(str(path), out, num_heads=HEADS, image_size=IMAGE, log=log.append)
    assert summary["format"] == "ibot" and summary["kind"] == "backbone"
    assert any("resized" in line and "(8, 8)" in line for line in log)
    assert any("dropped head.last_layer.weight_v" in line for line in log)
    tree = checkpointing.load_state_tree(out)
    assert list(tree) == ["params"] and list(tree["params"]) == ["backbone"]
    cfg = checkpointing.saved_config(out)
    assert tuple(cfg.data.mean) == conv.IMAGENET_MEAN and tuple(cfg.model.pos_grid) == (8, 4)
    x = images()
    ours, kind = features(out, imgs=x)
    assert kind == "backbone"
    with torch.no_grad():
        assert_close(ours, t_cls(ck["teacher"], "backbone.", x, grid=(8, 8)))

    # Student on request: `module.` stripped, iBOT's mask token kept.
    out_s = str(tmp_path / "student")
    conv.convert(str(path), out_s, which="student", num_heads=HEADS, image_size=IMAGE, log=quiet)
    student = {k[len("module."):]: v for k, v in ck["student"].items()}
    backbone = checkpointing.pretrained_backbone(out_s)
    np.testing.assert_array_equal(backbone["mask_token"].reshape(-1),
                                  student["backbone.masked_embed"].numpy().reshape(-1))
    ours, _ = features(out_s, imgs=x)
    with torch.no_grad():
        assert_close(ours, t_cls(student, "backbone.", x, grid=(8, 8)))


def test_ibot_heads_pretrain_layout_and_logits(tmp_path):
    """--heads: {'teacher': {'backbone', 'head'}} with exactly our pretraining model's keys and
    the same head logits as the weight-normalised PyTorch head."""
    from personvit_jax.models.pretrain import pretrain_model_from_config

    ck = ibot_checkpoint(grid=(8, 4))
    path = tmp_path / "ibot.pth"
    torch.save(ck, path)
    out = str(tmp_path / "out")
    conv.convert(str(path), out, heads=True, num_heads=HEADS, image_size=IMAGE, log=quiet)
    cfg = checkpointing.saved_config(out)
    assert (cfg.head.out_dim, cfg.head.hidden_dim, cfg.head.bottleneck_dim) == (48, 32, 16)
    assert cfg.head.shared_head and not cfg.head.norm_last_layer
    tree = checkpointing.load_state_tree(out)
    model = pretrain_model_from_config(cfg, student=False)
    x = images()
    init = jax.eval_shape(lambda: model.init(jax.random.key(0), x))["params"]
    assert jax.tree.map(np.shape, tree["teacher"]) == jax.tree.map(lambda a: a.shape, init)
    logits = model.apply({"params": tree["teacher"]}, x, with_patches=False)["cls_logits"]
    with torch.no_grad():
        ref = t_head_logits(ck["teacher"], "head.", t_cls(ck["teacher"], "backbone.", x))
    assert_close(np.asarray(logits), ref)


def test_dino_timm_safetensors_npz(tmp_path):
    """A DINO checkpoint (`module.`-prefixed teacher) and a timm state dict as .safetensors and
    .npz (classifier head dropped) give the PyTorch CLS features."""
    from safetensors.numpy import save_file

    sd = _vit_state(5)
    dino = {"teacher": {f"module.backbone.{k}": v for k, v in sd.items()}, "epoch": 1,
            "args": argparse.Namespace(arch="vit_small")}
    torch.save(dino, tmp_path / "dino.pth")
    timm_np = {k: v.numpy() for k, v in sd.items()}
    timm_np["head.weight"], timm_np["head.bias"] = np.zeros((10, D), np.float32), np.zeros(10, np.float32)
    save_file(timm_np, str(tmp_path / "timm.safetensors"))
    np.savez(tmp_path / "timm.npz", **timm_np)
    x = images()
    with torch.no_grad():
        ref = t_cls(sd, "", x)
    for name, fmt in (("dino.pth", "dino"), ("timm.safetensors", "timm"), ("timm.npz", "timm")):
        out = str(tmp_path / f"out_{name}")
        log = []
        summary = conv.convert(str(tmp_path / name), out, num_heads=HEADS, image_size=IMAGE,
                               log=log.append)
        assert summary["format"] == fmt
        if fmt == "timm":
            assert any("dropped head.weight" in line for line in log)
        assert_close(features(out, imgs=x)[0], ref)


def test_safetensors_and_npz_readers_need_no_torch(tmp_path):
    from safetensors.numpy import save_file

    arrays = {"cls_token": np.ones((1, 1, 4), np.float32), "pos_embed": np.arange(8.0).reshape(1, 2, 4)}
    save_file(arrays, str(tmp_path / "w.safetensors"))
    np.savez(tmp_path / "w.npz", **arrays)
    script = ("import sys; sys.modules['torch'] = None\n"  # any torch import now fails
              "from personvit_jax.tools.weights_io import read_weights\n"
              f"for f in ('w.safetensors', 'w.npz'):\n"
              f"    w = read_weights({str(tmp_path)!r} + '/' + f)\n"
              "    assert sorted(w) == ['cls_token', 'pos_embed'] and w['pos_embed'][0, 1, 3] == 7\n"
              "print('ok')\n")
    torch.save({}, tmp_path / "w.pth")
    script += (f"try:\n    read_weights({str(tmp_path)!r} + '/w.pth')\n"
               "except ImportError as e:\n    assert 'requirements-convert.txt' in str(e); print('hint')\n")
    r = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["ok", "hint"]


# ---------------------------------------------------------------------------- errors and safety
class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"cls_token": torch.zeros(1), "payload": _Exploit(marker)}, path)
    with pytest.raises(ValueError, match="refused by the weights-only unpickler"):
        conv.convert(str(path), str(tmp_path / "out"), log=quiet)
    assert not marker.exists()
    assert not (tmp_path / "out").exists()
    # A plain pickle disguised as .npz is refused too (no allow_pickle).
    with open(tmp_path / "evil.npz", "wb") as f:
        pickle.dump(_Exploit(marker), f)
    with pytest.raises(ValueError, match="evil.npz"):
        conv.convert(str(tmp_path / "evil.npz"), str(tmp_path / "out"), log=quiet)
    assert not marker.exists()


def test_model_size_inference_and_disagreeing_flags(tmp_path):
    sd = reid_state(seed=6)
    path = tmp_path / "reid.pth"
    torch.save(sd, path)
    vit, _ = conv.split_prefix({k: v.numpy() for k, v in sd.items()}, "base.")
    inferred = conv.infer_vit(vit, IMAGE, "x", num_heads=HEADS)
    assert inferred == dict(width=D, depth=DEPTH, num_heads=HEADS, patch_size=PATCH,
                            patch_stride=PATCH, stored_grid=(8, 4), num_cameras=0)
    # A standard width needs no --num_heads (ViT-S: 6 heads).
    assert conv._heads_for(384, {}, "x") == 6
    with pytest.raises(ValueError, match="not a standard ViT size.*--num_heads"):
        conv.convert(str(path), str(tmp_path / "a"), image_size=IMAGE, log=quiet)
    with pytest.raises(ValueError, match="--depth=12 disagrees.*depth=2"):
        conv.convert(str(path), str(tmp_path / "b"), depth=12, log=quiet, **TINY)
    with pytest.raises(ValueError, match="--model=vit_small has width 384.*width 64"):
        conv.convert(str(path), str(tmp_path / "c"), model="vit_small", log=quiet, **TINY)
    with pytest.raises(ValueError, match="--format=ibot but the keys look like personvit"):
        conv.convert(str(path), str(tmp_path / "d"), fmt="ibot", log=quiet, **TINY)
    broken = {k: v for k, v in sd.items() if k != "classifier.weight"}
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match="lacks classifier.weight"):
        conv.convert(str(tmp_path / "broken.pth"), str(tmp_path / "e"), log=quiet, **TINY)
    biased = dict(sd, **{"bottleneck.bias": torch.ones(D)})
    torch.save(biased, tmp_path / "biased.pth")
    with pytest.raises(ValueError, match="bottleneck.bias is non-zero"):
        conv.convert(str(tmp_path / "biased.pth"), str(tmp_path / "f"), log=quiet, **TINY)
    assert not any((tmp_path / n).exists() for n in "abcdef")


def test_refuses_non_empty_output_and_cli(tmp_path):
    sd = reid_state(seed=7)
    torch.save(sd, tmp_path / "reid.pth")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    argv = [f"--input={tmp_path / 'reid.pth'}", f"--output={out}", "--num_heads=2",
            "--image_size=64,32"]
    assert conv.main(argv) == 1
    assert (out / "keep.txt").read_text() == "user data" and len(os.listdir(out)) == 1
    empty = tmp_path / "empty"
    empty.mkdir()  # an existing empty folder is fine
    argv[1] = f"--output={empty}"
    assert conv.main(argv) == 0
    assert sorted(os.listdir(empty)) == ["checkpoints", "config.json"]
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]  # no temp folder left


def test_finetune_init_from_converted(tmp_path, tiny_config):
    """--config.init_from=OUT starts fine-tuning from the converted backbone (LR 0: the trained
    backbone equals the converted one, while the heads are the new run's)."""
    from personvit_jax.stages import finetune

    sd = reid_state(seed=8)
    torch.save(sd, tmp_path / "reid.pth")
    out = str(tmp_path / "out")
    conv.convert(str(tmp_path / "reid.pth"), out, log=quiet, **TINY)
    config = tiny_config(**{"init_from": out, "optim.epochs": 1, "optim.base_lr": 0.0,
                            "optim.weight_decay": 0.0, "model.drop_path_rate": 0.0})
    workdir = str(tmp_path / "ft")
    finetune.train(config, workdir)
    trained = checkpointing.load_state_tree(workdir)["params"]["backbone"]
    jax.tree.map(np.testing.assert_array_equal, trained, checkpointing.pretrained_backbone(out))
