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
unless --no-normalize; `--flip` bakes in flip test-time augmentation (mean with the mirror).

Loading needs only `jax` (+ `flatbuffers`), not this package:
  from jax import export
  extractor = export.deserialize(open("extractor.jax", "rb").read())
  features = extractor.call(images_uint8)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections

from personvit_jax.data import layouts
from personvit_jax.evaluation.features import checkpoint_embed_fn
from personvit_jax.training import checkpointing

DEFAULT_PLATFORMS = ("cpu", "cuda", "tpu")


def extractor_fn(checkpoint: str, *, flip: bool = False, normalize: bool = True,
                 neck_feat: str = "") -> tuple[Callable, dict]:
    """(fn, info): fn(images uint8 [B, H, W, 3][, camids int32 [B]]) -> features [B, D] with the
    checkpoint's variables closed over, and info {image_size, mean, std, kind, sie, flip,
    normalize, neck_feat}. The model and its settings come from the checkpoint's config.json."""
    cfg = checkpointing.saved_config(checkpoint)
    if cfg is None:
        raise FileNotFoundError(f"{checkpointing.resolve_checkpoint(checkpoint)}: no config.json "
                                "in its workdir; export needs the run's (or conversion's) config "
                                "to rebuild the model")
    data = cfg.data
    image_size = tuple(data.get("image_size") or data.get("global_size"))  # finetune | pretrain
    saved_eval = cfg.get("eval") or {}
    eval_cfg = ml_collections.ConfigDict({
        "neck_feat": neck_feat or saved_eval.get("neck_feat", "before"),
        "normalize": normalize, "flip": flip})
    sie = bool(cfg.model.get("sie", False))
    num_cameras = layouts.num_cameras(data.name) if sie else 0
    embed, variables, kind = checkpoint_embed_fn(checkpoint, cfg.model, eval_cfg, num_cameras)
    variables = jax.tree.map(jnp.asarray, variables)
    mean = jnp.asarray(data.mean, jnp.float32)
    std = jnp.asarray(data.std, jnp.float32)

    def to_input(images_bhwc_u8):
        return (images_bhwc_u8.astype(jnp.float32) / 255.0 - mean) / std

    if sie:
        def fn(images_bhwc_u8, camids_b):
            return embed(variables, to_input(images_bhwc_u8), camids_b)
    else:
        def fn(images_bhwc_u8):
            return embed(variables, to_input(images_bhwc_u8), None)
    info = dict(image_size=image_size, mean=tuple(data.mean), std=tuple(data.std), kind=kind,
                sie=sie, flip=flip, normalize=normalize, neck_feat=eval_cfg.neck_feat)
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


def write_bytes(path: str, data: bytes, overwrite: bool = False) -> None:
    """Writes via a temporary file renamed into place; refuses an existing `path` unless
    `overwrite`."""
    path = os.path.abspath(os.path.expanduser(path))
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"--output={path} exists; pass --overwrite to replace it")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.tmp-",
                               dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide the file from other users
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m personvit_jax.tools.export",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="workdir / converted folder / step folder")
    p.add_argument("--output", required=True, help="file for the serialised function")
    p.add_argument("--flip", action="store_true", help="bake in flip test-time augmentation")
    p.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=True,
                   help="L2-normalise the features (default on)")
    p.add_argument("--neck_feat", default="", choices=("", "before", "after"),
                   help="ReID models: feature before / after the BNNeck (default: the config's)")
    p.add_argument("--platforms", default=",".join(DEFAULT_PLATFORMS),
                   help="comma-separated platforms to lower for (cpu, cuda, rocm, tpu)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        exported, info = export_extractor(a.checkpoint, flip=a.flip, normalize=a.normalize,
                                          neck_feat=a.neck_feat,
                                          platforms=a.platforms.split(","))
        write_bytes(a.output, exported.serialize(), a.overwrite)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    h, w = info["image_size"]
    inputs = f"uint8[B, {h}, {w}, 3]" + (" + camids int32[B]" if info["sie"] else "")
    print(f"wrote {os.path.abspath(a.output)}: {inputs} -> float32{exported.out_avals[0].shape} "
          f"({info['kind']}, feature {info['neck_feat']} the neck, flip={info['flip']}, "
          f"L2={info['normalize']}, mean={info['mean']}, std={info['std']}, "
          f"platforms={list(exported.platforms)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
