r"""A converted full-size ViT against its PyTorch original, and what the difference is made of.

  python benchmarks/convert_parity.py                    # ViT-S/16 ReID model, 4 images 256x128
  python benchmarks/convert_parity.py --model=vit_base --images=8 --seed=1

Builds a random PersonViT ReID model with the PyTorch modules of
tests/fixtures/make_weights_fixtures.py (the fixtures' weight scales: larger than trained weights,
so the residual stream grows large), saves it as .pth, converts it with
`personvit_jax.tools.convert` and runs it through `inference.load_model`
(float32). The feature is the test feature before the BNNeck. One JSON line each:

  compare   max |a - b| on the raw feature and after L2 normalisation, for ours vs PyTorch
            float32, ours vs PyTorch float64 (the exact value), PyTorch float32 vs float64.
  variant   the PyTorch float64 model with one deliberate change of the kind a conversion could
            get wrong (LayerNorm eps, tanh GELU, attention scale, qkv layout): `effect` = how far
            it moves the feature; `share_ours` = least-squares coefficient of that change in our
            error (ours - float64): ~1 if ours made that mistake, ~0 if not; `share_torch32` =
            the same for PyTorch float32's error, which has no mistake: the noise level of the
            coefficient.

Float32 rounding noise shows as: ours and PyTorch float32 about equally far from float64 (a few
float32 spacings of the largest residual-stream value, `fp32_spacing_at_that`), and share_ours
as close to 0 as share_torch32 for every variant.
"""

import argparse
import copy
import json
import os
import sys
import tempfile

import jax
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tests", "fixtures"))

import make_weights_fixtures as ref  # noqa: E402  (needs PyTorch: requirements-convert.txt)
import torch  # noqa: E402

from personvit_jax import inference  # noqa: E402
from personvit_jax.models.vit import VIT_SIZES  # noqa: E402
from personvit_jax.tools import convert  # noqa: E402

IMAGE_HW, PATCH, NUM_CLASSES = (256, 128), 16, 751


def torch_model(name: str, seed: int, image_hw=IMAGE_HW) -> torch.nn.Module:
    size = VIT_SIZES[name]
    base = ref.VisionTransformer(grid=(image_hw[0] // PATCH, image_hw[1] // PATCH),
                                 width=size["width"], depth=size["depth"],
                                 heads=size["num_heads"], patch=PATCH, stride=PATCH,
                                 fc_classes=NUM_CLASSES)
    return ref.randomize(ref.ReIDModel(base, NUM_CLASSES), np.random.default_rng(seed)).eval()


def forward64(model: torch.nn.Module, x64: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return copy.deepcopy(model).double()(x64).numpy()


def ours(model: torch.nn.Module, images: np.ndarray, workdir: str) -> np.ndarray:
    """Save as .pth -> convert -> our float32 features of `images` (normalised NHWC)."""
    path, out = os.path.join(workdir, "model.pth"), os.path.join(workdir, "converted")
    torch.save(model.state_dict(), path)
    convert.convert(path, out, image_size=IMAGE_HW, log=lambda *_: None)
    embed = inference.load_model(out).bound_embed(normalize=False)
    return np.asarray(jax.jit(embed)(images))


def l2n(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def share(err: np.ndarray, effect: np.ndarray) -> float:
    """Least-squares coefficient a of err ~ a * effect."""
    return float((err * effect).sum() / (effect * effect).sum())


def variants(model: torch.nn.Module) -> dict:
    """name -> a changed copy of `model` (float32 weights, changed the way a conversion might)."""
    def changed(fn):
        m = copy.deepcopy(model)
        for module in m.modules():
            fn(module)
        return m

    def qkv_heads_major(module):  # read the fused output as (heads, 3, head_dim)
        if isinstance(module, ref.Attention):
            d, h = module.proj.in_features, module.heads
            for p in (module.qkv.weight, module.qkv.bias):
                p.data = p.data.reshape(h, 3, d // h, -1).transpose(0, 1).reshape(p.shape)

    return {
        "layernorm eps 1e-5 (not 1e-6)": changed(
            lambda m: setattr(m, "eps", 1e-5) if isinstance(m, torch.nn.LayerNorm) else None),
        "tanh GELU (not erf)": changed(
            lambda m: setattr(m, "approximate", "tanh") if isinstance(m, torch.nn.GELU) else None),
        "attention scale 1/sqrt(width) (not 1/sqrt(head_dim))": changed(
            lambda m: setattr(m, "scale", m.proj.in_features ** -0.5)
            if isinstance(m, ref.Attention) else None),
        "qkv read as (heads, 3, head_dim)": changed(qkv_heads_major),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="vit_small", choices=sorted(VIT_SIZES))
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)

    model = torch_model(a.model, a.seed)
    pixels = np.random.default_rng(a.seed + 1).integers(0, 256, (a.images, *IMAGE_HW, 3))
    x64 = ref.normalized(pixels.astype(np.uint8), ref.REID_MEAN, ref.REID_STD)  # [B, 3, H, W]
    with torch.no_grad():
        t32 = model(x64.float()).numpy()
        residual = model.base.tokens(x64.float()).abs().max().item()
    t64 = forward64(model, x64)
    with tempfile.TemporaryDirectory() as workdir:
        o32 = ours(model, x64.permute(0, 2, 3, 1).float().numpy(), workdir)

    print(json.dumps({"model": a.model, "images": a.images, "seed": a.seed,
                      "max_abs_feature": float(np.abs(t64).max()),
                      "max_abs_residual_stream": residual,
                      "fp32_spacing_at_that": float(np.spacing(np.float32(residual)))}))
    for name, x, y in (("ours_fp32 vs torch_fp32", o32, t32), ("ours_fp32 vs torch_fp64", o32, t64),
                       ("torch_fp32 vs torch_fp64", t32, t64)):
        print(json.dumps({"compare": name, "raw_max_abs": float(np.abs(x - y).max()),
                          "l2n_max_abs": float(np.abs(l2n(x) - l2n(y)).max())}))
    err_ours, err_t32 = o32 - t64, t32 - t64
    for name, changed in variants(model).items():
        effect = forward64(changed, x64) - t64
        print(json.dumps({"variant": name, "effect_max_abs": float(np.abs(effect).max()),
                          "share_ours": round(share(err_ours, effect), 4),
                          "share_torch32": round(share(err_t32, effect), 4)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
