r"""Serialise a checkpoint's feature extractor with `jax.export` (weights baked in).

  python -m personvit_jax.tools.export --checkpoint=DIR --output=extractor.jax [--flip]

DIR is any checkpoint with its config.json: a fine-tune or pretrain workdir, or a folder written
by `personvit_jax.tools.convert`. The exported function is

  images uint8 [B, H, W, 3] (RGB, already resized to the model's H x W) -> features float32 [B, D]
  (+ camera ids int32 [B] as a second argument for SIE models)

with B symbolic (any batch size). It normalises the pixels itself (x / 255, then the config's
mean / std), so callers need no preprocessing code beyond resizing; resizing stays outside
because image decoders and resizers differ between callers (PersonViT's test transform is a
bilinear resize to 256x128). The feature is the one evaluation uses: the ReID model's retrieval
feature (before the BNNeck by default, JPM concatenated) or a backbone's CLS token, L2-normalised
unless --nonormalize; `--flip` bakes in flip test-time augmentation (mean with the mirror).

Loading needs only `jax` (+ `flatbuffers`), not this package:
  from jax import export
  extractor = export.deserialize(open("extractor.jax", "rb").read())
  features = extractor.call(images_uint8)
"""

from __future__ import annotations

import os
import sys
from typing import Callable

import jax
import jax.numpy as jnp
from absl import flags

from personvit_jax import cli, files, inference

DEFAULT_PLATFORMS = ("cpu", "cuda", "tpu")


def extractor_fn(checkpoint: str, *, flip: bool = False, normalize: bool = True,
                 neck_feat: str = "") -> tuple[Callable, dict]:
    """(fn, info): fn(images uint8 [B, H, W, 3][, camids int32 [B]]) -> features [B, D] with the
    checkpoint's variables closed over, and info {image_size, mean, std, kind, sie, flip,
    normalize, neck_feat}. The model comes from `inference.load_model` (architecture from the
    checkpoint's config.json, checked against its arrays)."""
    if inference.saved_config(checkpoint) is None:
        raise FileNotFoundError(f"{checkpoint}: no config.json in its workdir; export needs the "
                                "run's (or conversion's) config to rebuild the model")
    loaded = inference.load_model(checkpoint)
    saved_eval = inference.saved_config(checkpoint).get("eval") or {}
    neck_feat = neck_feat or saved_eval.get("neck_feat", "before")
    embed = loaded.bound_embed(neck_feat, normalize, flip)
    prep = loaded.preprocessing
    if loaded.uses_cameras:
        def fn(images_bhwc_u8, camids_b):
            return embed(prep.normalize(images_bhwc_u8), camids_b)
    else:
        def fn(images_bhwc_u8):
            return embed(prep.normalize(images_bhwc_u8))
    info = dict(image_size=tuple(prep.image_size), mean=tuple(prep.mean), std=tuple(prep.std),
                kind=loaded.kind, sie=loaded.uses_cameras, num_cameras=loaded.num_cameras,
                flip=flip, normalize=normalize, neck_feat=neck_feat)
    return fn, info


def export_extractor(checkpoint: str, *, flip: bool = False, normalize: bool = True,
                     neck_feat: str = "", platforms=DEFAULT_PLATFORMS):
    """(jax.export.Exported with a symbolic batch dimension 'b', info of `extractor_fn`)."""
    fn, info = extractor_fn(checkpoint, flip=flip, normalize=normalize, neck_feat=neck_feat)
    b, = jax.export.symbolic_shape("b")
    h, w = info["image_size"]
    args = [jax.ShapeDtypeStruct((b, h, w, 3), jnp.uint8)]
    if info["sie"]:
        args.append(jax.ShapeDtypeStruct((b,), jnp.int32))
    exported = jax.export.export(jax.jit(fn), platforms=tuple(platforms))(*args)
    return exported, info


def define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_string("checkpoint", None, "workdir / converted folder / step folder",
                        flag_values=fv)
    flags.DEFINE_string("output", None, "file for the serialised function", flag_values=fv)
    flags.DEFINE_boolean("flip", False, "bake in flip test-time augmentation", flag_values=fv)
    flags.DEFINE_boolean("normalize", True, "L2-normalise the features", flag_values=fv)
    flags.DEFINE_enum("neck_feat", "", ("", "before", "after"), "ReID models: feature before / "
                      "after the BNNeck (default: the config's)", flag_values=fv)
    flags.DEFINE_list("platforms", list(DEFAULT_PLATFORMS), "platforms to lower for (cpu, cuda, "
                      "rocm, tpu)", flag_values=fv)
    flags.DEFINE_boolean("overwrite", False, "replace an existing --output", flag_values=fv)
    flags.mark_flags_as_required(["checkpoint", "output"], flag_values=fv)


def run(fv: flags.FlagValues) -> int:
    if os.path.exists(fv.output) and not fv.overwrite:  # before the work, not after it
        raise FileExistsError(f"--output={os.path.abspath(fv.output)} exists; pass --overwrite "
                              "to replace it")
    exported, info = export_extractor(fv.checkpoint, flip=fv.flip, normalize=fv.normalize,
                                      neck_feat=fv.neck_feat, platforms=fv.platforms)
    files.write_bytes(fv.output, exported.serialize(), overwrite=fv.overwrite)
    h, w = info["image_size"]
    inputs = f"uint8[B, {h}, {w}, 3]" + (" + camids int32[B]" if info["sie"] else "")
    print(f"wrote {os.path.abspath(fv.output)}: {inputs} -> float32"
          f"{exported.out_avals[0].shape} ({info['kind']}, feature {info['neck_feat']} the neck, "
          f"flip={info['flip']}, L2={info['normalize']}, mean={info['mean']}, std={info['std']}, "
          f"platforms={list(exported.platforms)})")
    return 0


def main(argv=None) -> int:
    return cli.run_tool("python -m personvit_jax.tools.export", __doc__, define_flags, run, argv)


if __name__ == "__main__":
    sys.exit(main())
