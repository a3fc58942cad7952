r"""Serialise a checkpoint's feature extractor, weights baked in: `jax.export` or ONNX.

  python -m personvit_jax.tools.export --checkpoint=DIR --output=extractor.jax [--flip]
  python -m personvit_jax.tools.export --checkpoint=DIR --format=onnx --output=reid.onnx \
      [--input_layout=uint8_nhwc|float32_nchw] [--flip] [--nonormalize]

DIR is any checkpoint with its config.json: a fine-tune or pretrain workdir, or a folder written
by `personvit_jax.tools.convert`. The exported function, with B symbolic (any batch size):

  --input_layout=uint8_nhwc (default)  images uint8 [B, H, W, 3], RGB, already resized to the
        model's H x W; the function normalises them itself (x / 255, then the checkpoint's
        mean / std), so callers need no preprocessing code beyond resizing.
  --input_layout=float32_nchw          images float32 [B, 3, H, W], RGB, already normalised with
        the checkpoint's mean / std (the torchreid / tracker convention). A caller that
        normalises with other statistics (torchreid's default is ImageNet's) says so with
        --input_mean / --input_std and the graph converts them to the model's.
  -> features float32 [B, D]; SIE models take camera ids int32 [B] (0-based) as a second input.

Resizing stays outside because image decoders and resizers differ between callers (PersonViT's
test transform is a bilinear resize to 256x128). The feature is the one evaluation uses: the
ReID model's retrieval feature (before the BNNeck by default, JPM concatenated) or a backbone's
CLS token, L2-normalised unless --nonormalize; `--flip` bakes in flip test-time augmentation
(mean with the mirror, before the normalisation).

--format=jax loads with only `jax` (+ `flatbuffers`), not this package:
  from jax import export
  extractor = export.deserialize(open("extractor.jax", "rb").read())
  features = extractor.call(images_uint8)

--format=onnx (needs `pip install ".[onnx]"` in the checkout: jax2onnx, onnx, onnxruntime)
writes a standard ONNX graph (inputs `images` [+ `camera_ids`], output `features`, batch dimension
`batch`; the settings above in its metadata_props). Before writing, the file is run in ONNX
Runtime on random inputs at batch 1 and 3 and must give the JAX features to 1e-4 (max abs,
L2-normalised), else nothing is written:
  import onnxruntime as ort
  session = ort.InferenceSession("reid.onnx", providers=["CPUExecutionProvider"])
  features = session.run(None, {"images": images_uint8})[0]
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from personvit_jax import cli, files, inference
from personvit_jax.linalg import l2_normalize

DEFAULT_PLATFORMS = ("cpu", "cuda", "tpu")
FORMATS = ("jax", "onnx")
INPUT_LAYOUTS = ("uint8_nhwc", "float32_nchw")
ONNX_OPSET = 23  # jax2onnx's default; ONNX Runtime >= 1.24 runs it
MIN_ONNX_OPSET = 20  # the first with a Gelu op, which jax2onnx emits for jax.nn.gelu
ONNX_TOLERANCE = 1e-4  # max abs difference of L2-normalised features, ONNX Runtime vs JAX
BATCH = "batch"  # name of the symbolic batch dimension in the ONNX graph


# ---------------------------------------------------------------------------- the function
def input_transform(prep: inference.Preprocessing, input_layout: str,
                    input_mean: Optional[Sequence[float]] = None,
                    input_std: Optional[Sequence[float]] = None) -> Callable:
    """The exported input [B, ...] -> the network's normalised float32 [B, H, W, 3].

    uint8_nhwc: (x / 255 - mean) / std. float32_nchw: a transpose, after turning inputs
    normalised with (input_mean, input_std) into the model's normalisation: the pixel is
    x * input_std + input_mean, so x' = x * (input_std / std) + (input_mean - mean) / std (one
    per-channel affine map, skipped when the statistics are the model's)."""
    if input_layout not in INPUT_LAYOUTS:
        raise ValueError(f"--input_layout={input_layout!r}: expected one of {INPUT_LAYOUTS}")
    if input_layout == "uint8_nhwc":
        if input_mean is not None or input_std is not None:
            raise ValueError("--input_mean / --input_std describe float32_nchw inputs; "
                             "uint8_nhwc inputs are raw pixels (normalised inside)")
        return prep.normalize
    mean, std = np.asarray(prep.mean, np.float64), np.asarray(prep.std, np.float64)
    in_mean = mean if input_mean is None else np.asarray(input_mean, np.float64)
    in_std = std if input_std is None else np.asarray(input_std, np.float64)
    if in_mean.shape != (3,) or in_std.shape != (3,) or (in_std <= 0).any():
        raise ValueError(f"--input_mean={in_mean.tolist()} --input_std={in_std.tolist()}: "
                         "expected 3 values each (R,G,B), std > 0")
    scale, shift = in_std / std, (in_mean - mean) / std
    identity = np.allclose(scale, 1.0, rtol=0, atol=1e-12) and np.allclose(shift, 0, atol=1e-12)

    def to_nhwc(images_bchw):
        x = jnp.transpose(images_bchw.astype(jnp.float32), (0, 2, 3, 1))
        if identity:
            return x
        return x * jnp.asarray(scale, jnp.float32) + jnp.asarray(shift, jnp.float32)
    return to_nhwc


def extractor_fn(checkpoint: str, *, flip: bool = False, normalize: bool = True,
                 neck_feat: str = "", input_layout: str = "uint8_nhwc",
                 input_mean=None, input_std=None) -> tuple[Callable, dict]:
    """(fn, info): fn(images [B, ...] in `input_layout`[, camids int32 [B]]) -> features
    [B, D] with the checkpoint's variables closed over, and info {image_size, mean, std, kind,
    sie, num_cameras, flip, normalize, neck_feat, input_layout, input_mean, input_std,
    feature_dim}. The
    model comes from `inference.load_model` (architecture from the checkpoint's config.json,
    checked against its arrays)."""
    if inference.saved_config(checkpoint) is None:
        raise FileNotFoundError(f"{checkpoint}: no config.json in its workdir; export needs the "
                                "run's (or conversion's) config to rebuild the model")
    loaded = inference.load_model(checkpoint)
    saved_eval = inference.saved_config(checkpoint).get("eval") or {}
    neck_feat = neck_feat or saved_eval.get("neck_feat", "before")
    embed = loaded.bound_embed(neck_feat, normalize, flip)
    prep = loaded.preprocessing
    to_network = input_transform(prep, input_layout, input_mean, input_std)
    if loaded.uses_cameras:
        def fn(images, camids_b):
            return embed(to_network(images), camids_b)
    else:
        def fn(images):
            return embed(to_network(images))
    plain = input_layout == "uint8_nhwc"
    info = dict(image_size=tuple(prep.image_size), mean=tuple(prep.mean), std=tuple(prep.std),
                kind=loaded.kind, sie=loaded.uses_cameras, num_cameras=loaded.num_cameras,
                flip=flip, normalize=normalize, neck_feat=neck_feat, input_layout=input_layout,
                input_mean=None if plain else tuple(input_mean or prep.mean),
                input_std=None if plain else tuple(input_std or prep.std))
    info["feature_dim"] = int(jax.eval_shape(fn, *input_specs(info, 1)).shape[-1])
    return fn, info


def input_specs(info: dict, batch) -> list[jax.ShapeDtypeStruct]:
    """Shapes and dtypes of the exported inputs, batch dimension `batch` (an int or a
    symbolic dimension)."""
    h, w = info["image_size"]
    if info["input_layout"] == "uint8_nhwc":
        specs = [jax.ShapeDtypeStruct((batch, h, w, 3), jnp.uint8)]
    else:
        specs = [jax.ShapeDtypeStruct((batch, 3, h, w), jnp.float32)]
    if info["sie"]:
        specs.append(jax.ShapeDtypeStruct((batch,), jnp.int32))
    return specs


def describe_inputs(info: dict) -> str:
    h, w = info["image_size"]
    images = (f"images uint8[B, {h}, {w}, 3] (RGB pixels)" if info["input_layout"] == "uint8_nhwc"
              else f"images float32[B, 3, {h}, {w}] (RGB, normalised with mean "
                   f"{list(info['input_mean'])}, std {list(info['input_std'])})")
    return images + (f" + camera_ids int32[B] (0-{info['num_cameras'] - 1})" if info["sie"]
                     else "")


# ---------------------------------------------------------------------------- jax.export
def export_extractor(checkpoint: str, *, flip: bool = False, normalize: bool = True,
                     neck_feat: str = "", platforms=DEFAULT_PLATFORMS,
                     input_layout: str = "uint8_nhwc", input_mean=None, input_std=None):
    """(jax.export.Exported with a symbolic batch dimension 'b', info of `extractor_fn`)."""
    fn, info = extractor_fn(checkpoint, flip=flip, normalize=normalize, neck_feat=neck_feat,
                            input_layout=input_layout, input_mean=input_mean,
                            input_std=input_std)
    b, = jax.export.symbolic_shape("b")
    exported = jax.export.export(jax.jit(fn), platforms=tuple(platforms))(
        *input_specs(info, b))
    return exported, info


# ---------------------------------------------------------------------------- ONNX
@contextlib.contextmanager
def _quiet_onnx_logs():
    """jax2onnx logs a traceback for each optional plugin it cannot import (dm_pix's, against
    this JAX) and onnx_ir a warning per shape value it leaves untyped: noise for our graphs,
    whose correctness is checked in ONNX Runtime instead."""
    loggers = [logging.getLogger(n) for n in ("jax2onnx", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _import_onnx_tools():
    try:
        import jax2onnx  # noqa: F401
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401  (the check before writing)
    except ImportError as e:
        raise ValueError(f"--format=onnx needs jax2onnx, onnx and onnxruntime ({e}); install "
                         "them with `pip install \".[onnx]\"` in the checkout (or -r "
                         "requirements-onnx.txt)") from e


def onnx_metadata(info: dict, checkpoint: str) -> dict[str, str]:
    """The settings baked into the graph, as ONNX metadata_props (strings)."""
    import personvit_jax

    csv = lambda v: ",".join(f"{x:g}" if isinstance(x, float) else str(x) for x in v)
    meta = {"producer": f"personvit_jax {personvit_jax.__version__}",
            "checkpoint": os.path.abspath(checkpoint), "kind": info["kind"],
            "input_layout": info["input_layout"], "image_size": csv(info["image_size"]),
            "mean": csv(info["mean"]), "std": csv(info["std"]), "flip": str(info["flip"]),
            "l2_normalized": str(info["normalize"]), "neck_feat": info["neck_feat"],
            "num_cameras": str(info["num_cameras"]), "feature_dim": str(info["feature_dim"])}
    if info["input_layout"] == "float32_nchw":
        meta.update(input_mean=csv(info["input_mean"]), input_std=csv(info["input_std"]))
    return meta


def export_onnx(checkpoint: str, *, flip: bool = False, normalize: bool = True,
                neck_feat: str = "", input_layout: str = "uint8_nhwc", input_mean=None,
                input_std=None, opset: int = ONNX_OPSET):
    """(onnx.ModelProto with a symbolic batch dimension, fn, info of `extractor_fn`), traced
    by jax2onnx from the same function as the jax.export artifact."""
    _import_onnx_tools()
    from jax2onnx import to_onnx
    import onnx

    fn, info = extractor_fn(checkpoint, flip=flip, normalize=normalize, neck_feat=neck_feat,
                            input_layout=input_layout, input_mean=input_mean,
                            input_std=input_std)
    names = ["images", "camera_ids"][:1 + info["sie"]]
    with _quiet_onnx_logs():
        model = to_onnx(fn, input_specs(info, BATCH), model_name="personvit_extractor",
                        opset=opset, input_names=names, output_names=["features"])
    model.doc_string = f"{describe_inputs(info)} -> features float32[B, {info['feature_dim']}]"
    onnx.helper.set_model_props(model, onnx_metadata(info, checkpoint))
    return model, fn, info


def random_inputs(info: dict, batch: int, seed: int = 0) -> list[np.ndarray]:
    """Inputs of the exported function: random pixels (normalised for float32_nchw), random
    camera ids for SIE models."""
    rng = np.random.default_rng(seed)
    h, w = info["image_size"]
    pixels = rng.integers(0, 256, (batch, h, w, 3), dtype=np.uint8)
    if info["input_layout"] == "uint8_nhwc":
        out = [pixels]
    else:
        x = (pixels / 255.0 - np.asarray(info["input_mean"])) / np.asarray(info["input_std"])
        out = [x.transpose(0, 3, 1, 2).astype(np.float32)]
    if info["sie"]:
        out.append(rng.integers(0, info["num_cameras"], batch).astype(np.int32))
    return out


def onnx_gap(model_bytes: bytes, fn: Callable, info: dict, batches=(1, 3)) -> float:
    """Max abs difference between ONNX Runtime's (CPU) and JAX's L2-normalised features of the
    same random inputs, over `batches` (two sizes: the batch dimension must really be free)."""
    import onnxruntime as ort

    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    jitted = jax.jit(fn)
    gap = 0.0
    for b in batches:
        inputs = random_inputs(info, b, seed=b)
        ours = session.run(None, dict(zip(names, inputs)))[0]
        ref = np.asarray(jitted(*inputs))
        gap = max(gap, float(np.abs(l2_normalize(ours) - l2_normalize(ref)).max()))
    return gap


# ---------------------------------------------------------------------------- command line
def _floats(text: Optional[str], flag: str):
    if text is None:
        return None
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError as e:
        raise ValueError(f"--{flag}={text!r}: expected comma-separated numbers, e.g. "
                         "0.485,0.456,0.406") from e


def define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_string("checkpoint", None, "workdir / converted folder / step folder",
                        flag_values=fv)
    flags.DEFINE_string("output", None, "file for the serialised function", flag_values=fv)
    flags.DEFINE_enum("format", "jax", FORMATS, "jax: jax.export artifact; onnx: ONNX graph "
                      "(checked in ONNX Runtime before it is written)", flag_values=fv)
    flags.DEFINE_enum("input_layout", "uint8_nhwc", INPUT_LAYOUTS, "uint8_nhwc: raw RGB pixels "
                      "[B, H, W, 3], normalised inside; float32_nchw: normalised [B, 3, H, W]",
                      flag_values=fv)
    flags.DEFINE_string("input_mean", None, "float32_nchw: the mean R,G,B the caller normalises "
                        "with (default: the checkpoint's)", flag_values=fv)
    flags.DEFINE_string("input_std", None, "float32_nchw: the caller's std R,G,B (default: the "
                        "checkpoint's)", flag_values=fv)
    flags.DEFINE_boolean("flip", False, "bake in flip test-time augmentation", flag_values=fv)
    flags.DEFINE_boolean("normalize", True, "L2-normalise the features", flag_values=fv)
    flags.DEFINE_enum("neck_feat", "", ("", "before", "after"), "ReID models: feature before / "
                      "after the BNNeck (default: the config's)", flag_values=fv)
    flags.DEFINE_list("platforms", list(DEFAULT_PLATFORMS), "--format=jax: platforms to lower "
                      "for (cpu, cuda, rocm, tpu)", flag_values=fv)
    flags.DEFINE_integer("opset", ONNX_OPSET, "--format=onnx: ONNX opset (>= 20: jax2onnx "
                         "writes GELU as opset 20's Gelu op)", lower_bound=MIN_ONNX_OPSET,
                         flag_values=fv)
    flags.DEFINE_boolean("overwrite", False, "replace an existing --output", flag_values=fv)
    flags.mark_flags_as_required(["checkpoint", "output"], flag_values=fv)


def run(fv: flags.FlagValues) -> int:
    if os.path.exists(fv.output) and not fv.overwrite:  # before the work, not after it
        raise FileExistsError(f"--output={os.path.abspath(fv.output)} exists; pass --overwrite "
                              "to replace it")
    layout = dict(input_layout=fv.input_layout, input_mean=_floats(fv.input_mean, "input_mean"),
                  input_std=_floats(fv.input_std, "input_std"))
    common = dict(flip=fv.flip, normalize=fv.normalize, neck_feat=fv.neck_feat, **layout)
    if fv.format == "jax":
        exported, info = export_extractor(fv.checkpoint, platforms=fv.platforms, **common)
        data, where = exported.serialize(), f"platforms={list(exported.platforms)}"
    else:
        model, fn, info = export_onnx(fv.checkpoint, opset=fv.opset, **common)
        data = model.SerializeToString()
        gap = onnx_gap(data, fn, info)
        if not gap <= ONNX_TOLERANCE:  # also catches NaN
            raise ValueError(f"{fv.checkpoint}: the ONNX graph's features differ from JAX's by "
                             f"{gap:.3g} in ONNX Runtime (max abs, L2-normalised; allowed "
                             f"{ONNX_TOLERANCE:g}); {fv.output} was not written")
        where = f"opset {fv.opset}, ONNX Runtime max |diff| vs JAX {gap:.1e}"
    path = files.write_bytes(fv.output, data, overwrite=fv.overwrite)
    print(f"wrote {path}: {describe_inputs(info)} -> features float32[B, {info['feature_dim']}] "
          f"({info['kind']}, "
          f"feature {info['neck_feat']} the neck, flip={info['flip']}, L2={info['normalize']}, "
          f"model mean={list(info['mean'])}, std={list(info['std'])}; {where})")
    return 0


def main(argv=None) -> int:
    return cli.run_tool("python -m personvit_jax.tools.export", __doc__, define_flags, run, argv)


if __name__ == "__main__":
    sys.exit(main())
