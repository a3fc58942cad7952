r"""Convert published PyTorch ViT weights into a checkpoint folder every stage reads.

  python -m personvit_jax.tools.convert --input=FILE.pth --output=DIR \
      [--format=auto|personvit|transreid|ibot|dino|timm] [--which=teacher|student] [--heads] \
      [--mean=R,G,B --std=R,G,B]  # required for timm state dicts (see Normalisation)

Formats (the key names of the state dicts, optional `module.` prefix everywhere):
  personvit / transreid  fine-tuned ReID model: `base.*` ViT, `bottleneck.*` BatchNorm with running
                         stats, `classifier.weight`; TransReID's JPM (`b1.*`, `b2.*`,
                         `bottleneck_{i}`, `classifier_{i}`) and SIE (`base.sie_embed`) too.
  ibot / dino            training checkpoint {'teacher', 'student', 'args', ...}: the `backbone.*`
                         keys of `--which` (default teacher, as PersonViT fine-tunes from);
                         `--heads` also converts the projection head (pretraining layout).
  timm                   a plain ViT state dict (`blocks.{i}.*`, `pos_embed`, ...; `head.*` dropped).

Normalisation (written into config.json, used by every stage and tool): --mean / --std when
given; else the format's own, fixed by its training code and printed with the reason
(personvit / transreid: mean = std = 0.5; ibot / dino: ImageNet's). A timm state dict does not
say (augreg ViTs use 0.5, DeiT ImageNet's): --mean / --std are required for it.

DIR receives `config.json` (configs/finetune.py with the `model` block, image size and
normalisation of the converted weights) and `checkpoints/0/state`, with the same tree keys as our
own runs: {'params': {'backbone', 'neck', ...}, 'batch_stats': ...} for ReID models,
{'params': {'backbone'}} for backbones, {'teacher': {'backbone', 'head'}} with `--heads`. So
`--config.init_from=DIR` and `inference.load_model(DIR)` accept it.

Layout changes (PyTorch -> Flax): Linear weight [out, in] -> kernel [in, out]; conv OIHW -> HWIO;
LayerNorm / BatchNorm weight -> scale; BatchNorm running_mean/var -> batch_stats mean/var; the
fused qkv keeps its (3, heads, head_dim) output order; weight-norm g [out, 1] / v [out, in] ->
[1, out] / [in, out]; position embedding resized bilinearly when the target grid differs.
Model size comes from the shapes (width, depth, patch, MLP ratio, stride from the position
embedding and image size); flags that disagree with the shapes are errors.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags

from personvit_jax import cli, files, trees
from personvit_jax.config_args import load_config_module
from personvit_jax.data import layouts
from personvit_jax.models import init_from
from personvit_jax.models.pretrain import pretrain_model_from_config
from personvit_jax.models.reid import reid_model_from_config
from personvit_jax.models.vit import VIT_SIZES, grid_size, vit_from_config
from personvit_jax.tools.weights_io import read_weights
from personvit_jax.training import checkpointing

FORMATS = ("auto", "personvit", "transreid", "ibot", "dino", "timm")
REID_FORMATS = ("personvit", "transreid")
PRETRAIN_FORMATS = ("ibot", "dino")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
REID_MEAN = REID_STD = (0.5, 0.5, 0.5)  # PersonViT / TransReID fine-tuning normalisation
# Number of ids -> data set of the published ReID checkpoints (Occluded-Duke also has 702).
CLASSES_TO_DATASET = {751: "market1501", 702: "dukemtmc", 1041: "msmt17"}
# Arrays a converted tree may lack, filled with their (zero) initial value: iBOT's teacher has no
# mask token, but our pretraining model gives the teacher one (it never masks the teacher).
FILLABLE = ("mask_token",)

Flat = dict[str, np.ndarray]  # 'params/backbone/blocks_0/...' (trees.path_name) -> array


# ---------------------------------------------------------------------------- reading
def unwrap(obj: Any, fmt: str, which: str, source: str) -> tuple[str, dict[str, np.ndarray], dict]:
    """File contents -> (resolved format, flat state dict without `module.` prefixes, training
    args or {}). Training checkpoints give their `which` network ('teacher' / 'student')."""
    if fmt not in FORMATS:
        raise ValueError(f"--format={fmt!r}: expected one of {FORMATS}")
    if not isinstance(obj, dict):
        raise ValueError(f"{source}: expected a state dict or a checkpoint dict, got "
                         f"{type(obj).__name__}")
    args = obj.get("args") if isinstance(obj.get("args"), dict) else {}
    if any(isinstance(obj.get(k), dict) for k in ("teacher", "student")):
        if not isinstance(obj.get(which), dict):
            raise ValueError(f"{source}: --which={which!r} but the checkpoint has no "
                             f"{which!r} entry (top-level keys: {sorted(obj)})")
        obj = obj[which]
    else:
        for wrapper in ("model", "state_dict", "module"):  # {'model': sd, 'optimizer': ...}
            if isinstance(obj.get(wrapper), dict):
                obj = obj[wrapper]
                break
    not_arrays = sorted(k for k, v in obj.items() if not isinstance(v, np.ndarray))
    if not_arrays:
        raise ValueError(f"{source}: not a state dict of arrays; non-array entries: "
                         f"{not_arrays[:8]}")
    sd = {re.sub(r"^(module\.)+", "", k): v for k, v in obj.items()}
    detected = _detect_format(sd, args)
    if fmt == "auto":
        fmt = detected
    elif (fmt in REID_FORMATS) != (detected in REID_FORMATS) or (
            fmt in PRETRAIN_FORMATS) != (detected in PRETRAIN_FORMATS):
        raise ValueError(f"{source}: --format={fmt} but the keys look like {detected} "
                         f"(e.g. {sorted(sd)[:4]})")
    return fmt, sd, args


def _detect_format(sd: dict, args: dict) -> str:
    if any(k.startswith("base.") for k in sd):
        return "personvit"
    if any(k.startswith("backbone.") for k in sd):
        ibot = "pred_ratio" in args or any(k.startswith(("head.last_layer2.",
                                                          "backbone.masked_embed")) for k in sd)
        return "ibot" if ibot else "dino"
    return "timm"


def split_prefix(sd: dict, prefix: str) -> tuple[dict, dict]:
    """(keys under `prefix` with it removed, the other keys)."""
    inside = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    return inside, {k: v for k, v in sd.items() if not k.startswith(prefix)}


# ---------------------------------------------------------------------------- model size
def infer_vit(vit_sd: dict, image_size, source: str, patch_stride: int = 0,
              num_heads: int = 0, args: Optional[dict] = None, overlapping: bool = True) -> dict:
    """ViT hyper-parameters from the shapes of a timm-named state dict:
    {width, depth, num_heads, patch_size, patch_stride, stored_grid, num_cameras}.

    The stride is the one for which `image_size` gives the stored position-embedding grid:
    the patch size first, then, if `overlapping` (TransReID's fine-tuned models; pretrained
    iBOT/DINO/timm ViTs never overlap), smaller strides (e.g. 21x10 tokens at 256x128 -> stride
    12). A grid that no stride explains (a checkpoint trained at another resolution) is
    inferred from its token count and resized later. Without the `overlapping` restriction a
    6x6 grid stored at 48x48 would pass for stride 7 at 64x32 (9x4 = 36 tokens too)."""
    need = ("cls_token", "pos_embed", "patch_embed.proj.weight")
    lacking = [k for k in need if k not in vit_sd]
    if lacking:
        raise ValueError(f"{source}: not a ViT state dict: lacks {lacking} "
                         f"(found e.g. {sorted(vit_sd)[:6]})")
    width = vit_sd["cls_token"].shape[-1]
    kernel = vit_sd["patch_embed.proj.weight"]  # [D, C, p, p]
    if kernel.ndim != 4 or kernel.shape[2] != kernel.shape[3] or kernel.shape[1] != 3:
        raise ValueError(f"{source}: patch_embed.proj.weight has shape {kernel.shape}; expected "
                         "[D, 3, p, p]")
    patch = int(kernel.shape[-1])
    depth = len({int(m.group(1)) for k in vit_sd for m in [re.match(r"blocks\.(\d+)\.", k)] if m})
    if depth == 0:
        raise ValueError(f"{source}: no transformer blocks (blocks.<i>.*) found")
    hidden = vit_sd["blocks.0.mlp.fc1.weight"].shape[0]
    if hidden != 4 * width:
        raise ValueError(f"{source}: blocks.0.mlp.fc1.weight {vit_sd['blocks.0.mlp.fc1.weight'].shape}"
                         f" gives MLP ratio {hidden / width:g}; only 4 is supported")
    if not num_heads:
        num_heads = _heads_for(width, args or {}, source)
    if width % num_heads:
        raise ValueError(f"{source}: width {width} is not divisible by num_heads={num_heads}")

    n = vit_sd["pos_embed"].shape[1] - 1
    if patch_stride:
        strides = [patch_stride]
    else:  # non-overlapping first
        strides = range(patch, 0, -1) if overlapping else [patch]
    for s in strides:
        g = grid_size(image_size, patch, s)
        if g[0] * g[1] == n:
            stride, grid = s, g
            break
    else:  # trained at another resolution (e.g. 224x224): the grid from its token count alone
        stride = patch_stride or patch
        try:
            grid = init_from.stored_grid(n)
        except ValueError as e:
            raise ValueError(f"{source}: pos_embed {tuple(vit_sd['pos_embed'].shape)} fits no "
                             f"stride at --image_size={tuple(image_size)} and {e}") from e
    cams = vit_sd["sie_embed"].shape[0] if "sie_embed" in vit_sd else 0
    return dict(width=width, depth=depth, num_heads=num_heads, patch_size=patch,
                patch_stride=stride, stored_grid=tuple(grid), num_cameras=cams)


def _heads_for(width: int, args: dict, source: str) -> int:
    """Heads cannot be read from shapes (qkv is [3D, D] for any count): the training args'
    architecture, else the standard size of that width, else an error asking for the flag."""
    arch = args.get("arch")
    if arch in VIT_SIZES and VIT_SIZES[arch]["width"] == width:
        return VIT_SIZES[arch]["num_heads"]
    for size in VIT_SIZES.values():
        if size["width"] == width:
            return size["num_heads"]
    raise ValueError(f"{source}: width {width} is not a standard ViT size and the number of "
                     "attention heads cannot be read from the weights: pass --num_heads")


def check_flags(inferred: dict, flags: dict, source: str) -> None:
    """Flags the user gave must agree with the shapes (0 / None = not given)."""
    for key, value in flags.items():
        if value and value != inferred[key]:
            raise ValueError(f"{source}: --{key}={value} disagrees with the checkpoint, whose "
                             f"shapes give {key}={inferred[key]}")


# ---------------------------------------------------------------------------- name mapping
def flax_path(name: str, array: np.ndarray) -> tuple[tuple, np.ndarray]:
    """One timm/TransReID-style PyTorch name -> (Flax path below its module, converted array)."""
    parts = name.split(".")
    if parts[:2] == ["patch_embed", "proj"]:
        parts = ["patch_embed"] + parts[2:]
    if name == "masked_embed":  # iBOT's mask token, [1, D] or [D]
        return ("mask_token",), array.reshape(1, 1, -1)
    path: list = []
    for p in parts[:-1]:
        if p.isdigit():  # blocks.3 -> blocks_3
            path[-1] = f"{path[-1]}_{p}"
        else:
            path.append(p)
    leaf = parts[-1]
    if leaf == "weight":
        if array.ndim == 4:  # conv OIHW -> HWIO
            return tuple(path) + ("kernel",), array.transpose(2, 3, 1, 0)
        if array.ndim == 2:  # Linear [out, in] -> [in, out]
            return tuple(path) + ("kernel",), array.T
        return tuple(path) + ("scale",), array  # LayerNorm / BatchNorm
    renamed = {"running_mean": "mean", "running_var": "var"}.get(leaf, leaf)
    return tuple(path) + (renamed,), array


# Why a source array has no place in the converted tree (first matching pattern).
DROP_REASONS = (
    (r"(base\.)?fc\.", "unused classifier of the backbone"),
    (r"bottleneck(_\d+)?\.bias$", "BNNeck bias: zero, and fixed at 0 here"),
    (r".*num_batches_tracked$", "BatchNorm step counter"),
    (r"(backbone\.)?masked_embed$", "iBOT mask token, pretraining only"),
    (r"head\.last_layer2?\.weight_g$", "weight-norm g: with the head, or fixed at 1 (norm_last_layer)"),
    (r"head\.last_layer2\.", "same module as head.last_layer (shared head)"),
    (r"(backbone\.)?head\.", "classifier / projection head (--heads keeps an iBOT/DINO head)"),
    (r"base\.(norm|blocks)\.", "unused by TransReID's JPM model: its global branch runs b1"),
)


def drop_reason(name: str) -> str:
    for pattern, why in DROP_REASONS:
        if re.match(pattern, name):
            return why
    return "not part of the model"


def map_module(sd: dict, src_prefix: str, dst: tuple, flat: Flat, log_map: list) -> None:
    """Maps every key of `sd` (already stripped of `src_prefix`) under the Flax path `dst`."""
    for name in sorted(sd):
        path, arr = flax_path(name, sd[name])
        flat["/".join(dst + path)] = np.asarray(arr, np.float32)
        log_map.append((src_prefix + name, "/".join(dst + path), sd[name].shape))


def map_head(head_sd: dict, dst: tuple, flat: Flat, log_map: list,
             args: Optional[dict] = None) -> dict:
    """iBOT / DINO projection head -> IBOTHead params; returns its hyper-parameters.

    `mlp.{0,2,4}` (Linear, GELU between) -> mlp_{0,1,2}; weight-normed `last_layer` (g [out, 1],
    v [out, in]) -> weight_g [1, out], weight_v [in, out]; iBOT's `last_layer2` is the patch
    head's last layer, the same module (shared head) when its values equal last_layer's.
    Whether g is learned comes from the training args (`norm_last_layer`) when they say it: a
    learned g is still exactly 1 after iBOT's frozen first epoch, so its values cannot tell;
    without args, g = 1 everywhere is taken for a fixed g."""
    linear_ids = sorted({int(m.group(1)) for k in head_sd
                         for m in [re.match(r"mlp\.(\d+)\.weight", k)] if m})
    if not linear_ids or "last_layer.weight_v" not in head_sd:
        raise ValueError(f"head keys {sorted(head_sd)} are not an iBOT/DINO head (mlp.<i>.*, "
                         "last_layer.weight_v)")
    for j, i in enumerate(linear_ids):
        for leaf in ("weight", "bias"):
            key = f"mlp.{i}.{leaf}"  # mlp.{0,2,4} (GELUs in between) -> mlp_{0,1,2}
            path, arr = flax_path(f"mlp_{j}.{leaf}", head_sd[key])
            flat["/".join(dst + path)] = np.asarray(arr, np.float32)
            log_map.append((f"head.{key}", "/".join(dst + path), head_sd[key].shape))
    shared = "last_layer2.weight_v" not in head_sd or all(
        np.array_equal(head_sd[f"last_layer2.{x}"], head_sd[f"last_layer.{x}"])
        for x in ("weight_v", "weight_g") if f"last_layer.{x}" in head_sd)
    g = head_sd.get("last_layer.weight_g")
    if "norm_last_layer" in (args or {}):
        learn_norm = not bool(args["norm_last_layer"])
        if learn_norm and g is None:
            raise ValueError("args.norm_last_layer=False but the head has no "
                             "last_layer.weight_g to learn")
    else:
        learn_norm = g is not None and not np.allclose(g, 1.0)  # g fixed at 1 = norm_last_layer
    for src, dst_name in (("last_layer", "last_layer"), ("last_layer2", "last_layer_patch")):
        if src == "last_layer2" and shared:
            continue
        v = head_sd[f"{src}.weight_v"]
        flat["/".join(dst + (dst_name, "weight_v"))] = np.asarray(v.T, np.float32)
        log_map.append((f"head.{src}.weight_v", "/".join(dst + (dst_name, "weight_v")), v.shape))
        if learn_norm:
            gs = head_sd[f"{src}.weight_g"]
            flat["/".join(dst + (dst_name, "weight_g"))] = np.asarray(gs.reshape(1, -1),
                                                                       np.float32)
            log_map.append((f"head.{src}.weight_g", "/".join(dst + (dst_name, "weight_g")),
                            gs.shape))
    v_patch = head_sd["last_layer.weight_v" if shared else "last_layer2.weight_v"]
    return dict(out_dim=int(head_sd["last_layer.weight_v"].shape[0]),
                patch_out_dim=int(v_patch.shape[0]),
                hidden_dim=int(head_sd[f"mlp.{linear_ids[0]}.weight"].shape[0]),
                bottleneck_dim=int(head_sd[f"mlp.{linear_ids[-1]}.weight"].shape[0]),
                num_layers=len(linear_ids), shared_head=bool(shared),
                norm_last_layer=not learn_norm)


def map_reid(base_sd: dict, rest: dict, depth: int, flat: Flat, log_map: list,
             source: str) -> dict:
    """TransReID / PersonViT ReID model -> ReIDModel variables; returns {num_classes, jpm_groups}.

    With JPM, TransReID's global branch is `b1` = a copy of the last block + norm run on the
    output of blocks[:-1] (base's own last block and norm are unused); our ReIDModel runs the
    backbone's last block + norm for the global feature, so b1 goes there, b2 to the JPM."""
    if "classifier.weight" not in rest or "bottleneck.running_mean" not in rest:
        raise ValueError(f"{source}: ReID checkpoint lacks classifier.weight or bottleneck.* "
                         f"(non-backbone keys: {sorted(rest)[:10]})")
    jpm = "b1.0.attn.qkv.weight" in rest
    last = f"blocks.{depth - 1}."
    unused = ("fc.",) + ((last, "norm.") if jpm else ())  # reported as dropped by the caller
    map_module({k: v for k, v in base_sd.items() if not k.startswith(unused)},
               "base.", ("params", "backbone"), flat, log_map)
    groups = 0
    if jpm:
        for src, dst in (("b1.0.", ("params", "backbone", f"blocks_{depth - 1}")),
                         ("b1.1.", ("params", "backbone", "norm")),
                         ("b2.0.", ("params", "jpm", "block")), ("b2.1.", ("params", "jpm", "norm"))):
            part, _ = split_prefix(rest, src)
            map_module(part, src, dst, flat, log_map)
        groups = len([k for k in rest if re.fullmatch(r"bottleneck_\d+\.running_mean", k)])
    for i in range(groups + 1):
        sfx = "" if i == 0 else f"_{i}"
        bn, neck = f"bottleneck{sfx}", "neck" if i == 0 else f"neck_{i}"
        bias = rest.get(f"{bn}.bias")
        if bias is not None and np.abs(bias).max() > 0:
            raise ValueError(f"{source}: {bn}.bias is non-zero (max |b| = {np.abs(bias).max():g}); "
                             "the BNNeck here has its bias fixed at 0 as in PersonViT/TransReID")
        for leaf, coll, dst_leaf in (("weight", "params", "scale"), ("running_mean", "batch_stats",
                                     "mean"), ("running_var", "batch_stats", "var")):
            arr = rest[f"{bn}.{leaf}"]
            flat[f"{coll}/{neck}/bottleneck/{dst_leaf}"] = np.asarray(arr, np.float32)
            log_map.append((f"{bn}.{leaf}", f"{coll}/{neck}/bottleneck/{dst_leaf}", arr.shape))
        w = rest[f"classifier{sfx}.weight"]
        flat[f"params/{neck}/classifier/kernel"] = np.asarray(w.T, np.float32)
        log_map.append((f"classifier{sfx}.weight", f"params/{neck}/classifier/kernel", w.shape))
    return dict(num_classes=int(rest["classifier.weight"].shape[0]), jpm_groups=groups)


# ---------------------------------------------------------------------------- target trees
def target_tree(config, kind: str, num_classes: int = 0, num_cameras: int = 0) -> Flat:
    """Shapes of the tree our own runs produce for this config (from `model.init`, via
    eval_shape: nothing is computed), flattened to path tuples."""
    h, w = config.data.image_size
    images = jnp.zeros((1, h, w, 3), jnp.float32)
    rng = jax.random.key(0)
    if kind == "reid":
        model = reid_model_from_config(config, num_classes, num_cameras)
        cams = jnp.zeros((1,), jnp.int32) if config.model.sie else None
        tree = jax.eval_shape(lambda: model.init(rng, images, cams))
    elif kind == "backbone":
        vit = vit_from_config(config.model, use_mask_token=config.model.get("mask_token", False))
        tree = {"params": {"backbone": jax.eval_shape(lambda: vit.init(rng, images))["params"]}}
    else:  # "pretrain": the teacher of configs/pretrain.py's model
        teacher = pretrain_model_from_config(config, student=False)
        tree = {"teacher": jax.eval_shape(lambda: teacher.init(rng, images))["params"]}
    return trees.flatten(tree)


def fit_to_target(flat: Flat, target: Flat, stored_grid, pos_grid, source: str,
                  log: Callable, origin: Optional[dict] = None) -> Flat:
    """Checks the converted arrays against the model's own tree: resizes the position
    embedding from `stored_grid` to `pos_grid`, fills FILLABLE leaves, and names anything else
    that differs (with its PyTorch name and shape from `origin`: Flax path -> (name, shape))."""
    missing = sorted(set(target) - set(flat))
    unexpected = sorted(set(flat) - set(target))
    bad = [p for p in missing if p.rsplit("/", 1)[-1] not in FILLABLE]
    if bad or unexpected:
        raise ValueError(f"{source}: converted tree does not match the model: missing {bad}, "
                         f"unexpected {unexpected}")
    out = {}
    for path, t in target.items():
        if path not in flat:
            out[path] = np.zeros(t.shape, np.float32)
            log(f"  filled {path} {tuple(t.shape)} with zeros (not in the checkpoint)")
            continue
        v = flat[path]
        if path.endswith("/pos_embed") and v.shape != t.shape:
            old = v.shape
            v = init_from.resize_pos_embed_tokens(v, tuple(pos_grid), tuple(stored_grid))
            log(f"  resized {path} {old} (grid {tuple(stored_grid)}) -> {v.shape} "
                f"(grid {tuple(pos_grid)}), bilinear")
        if v.shape != t.shape:
            name, shape = (origin or {}).get(path, ("", ()))
            src = f"{name} {tuple(shape)} -> " if name else ""
            raise ValueError(f"{source}: {src}{path} has shape {v.shape} after "
                             f"conversion, the model expects {tuple(t.shape)} (the other arrays "
                             "give this model size; is the file damaged or mixed?)")
        out[path] = np.asarray(v, np.float32)
    return out


# ---------------------------------------------------------------------------- config
def normalization(fmt: str, mean, std, source: str) -> tuple[tuple, tuple, str]:
    """(mean, std, why) the converted model's inputs are normalised with: the given ones, else
    the format's, which its training code fixes (ReID fine-tuning: 0.5; iBOT / DINO pretraining:
    ImageNet's). A timm state dict has none: its statistics depend on the pretrained tag (augreg
    ViTs 0.5, DeiT ImageNet's), which the weights do not carry, so they must be given."""
    if (mean is None) != (std is None):
        given = "--mean" if std is None else "--std"
        raise ValueError(f"{given} without {'--std' if std is None else '--mean'}: the "
                         "normalisation needs both (R,G,B each)")
    for name, v in (("mean", mean), ("std", std)):
        if v is not None and (len(v) != 3 or (name == "std" and min(v) <= 0)):
            raise ValueError(f"--{name}={','.join(map(str, v))}: expected 3 values (R,G,B)"
                             + (", all > 0" if name == "std" else ""))
    if mean is not None:
        return tuple(mean), tuple(std), "given by --mean / --std"
    if fmt in REID_FORMATS:
        return REID_MEAN, REID_STD, f"{fmt}: PersonViT / TransReID fine-tune and test with 0.5"
    if fmt in PRETRAIN_FORMATS:
        return IMAGENET_MEAN, IMAGENET_STD, f"{fmt}: iBOT / DINO pretrain with ImageNet's"
    raise ValueError(
        f"{source}: a timm state dict does not record the normalisation it was trained with; it "
        "depends on the pretrained tag (augreg ViTs: mean = std = 0.5; DeiT: ImageNet's "
        f"{IMAGENET_MEAN} / {IMAGENET_STD}): pass --mean=R,G,B --std=R,G,B from the model card")


def make_config(vit: dict, image_size, mean, std, name: str, dataset: Optional[str],
                jpm_groups: int = 0, head: Optional[dict] = None) -> ml_collections.ConfigDict:
    """configs/finetune.py's config describing the converted weights (+ a `head` block, as in
    configs/pretrain.py, when the projection head was converted)."""
    c = load_config_module("finetune").get_config(f"model={name}")
    if dataset:
        c.data.name = dataset
    c.data.image_size = tuple(image_size)
    c.data.mean, c.data.std = tuple(mean), tuple(std)
    m = c.model
    m.width, m.depth, m.num_heads = vit["width"], vit["depth"], vit["num_heads"]
    m.patch_size, m.patch_stride = vit["patch_size"], vit["patch_stride"]
    m.pos_grid = grid_size(image_size, vit["patch_size"], vit["patch_stride"])
    m.sie = vit["num_cameras"] > 0
    m.jpm = jpm_groups > 0
    m.jpm_groups = jpm_groups or m.jpm_groups
    if vit.get("mask_token"):
        m.mask_token = True  # keep iBOT's student mask token in a backbone-only checkpoint
    if head is not None:
        p = load_config_module("pretrain").get_config(f"model={name}")
        p.head.update({k: v for k, v in head.items() if k in p.head})
        c.head = p.head
    return c


def _model_name(width: int, given: str) -> str:
    if given:
        if given not in VIT_SIZES:
            raise ValueError(f"--model={given!r}: expected one of {sorted(VIT_SIZES)}")
        return given
    return min(VIT_SIZES, key=lambda n: abs(VIT_SIZES[n]["width"] - width))


# ---------------------------------------------------------------------------- convert
def convert(input_path: str, output_dir: str, *, fmt: str = "auto", which: str = "teacher",
            heads: bool = False, image_size=(256, 128), model: str = "", width: int = 0,
            depth: int = 0, num_heads: int = 0, patch_size: int = 0, patch_stride: int = 0,
            dataset: str = "", mean=None, std=None, log: Callable = print) -> dict:
    """Converts `input_path` into the checkpoint folder `output_dir`; returns a summary
    {format, kind, config, mapped, dropped}. Refuses an existing non-empty `output_dir`."""
    output_dir = os.path.abspath(os.path.expanduser(output_dir))
    if os.path.isdir(output_dir) and os.listdir(output_dir) or os.path.isfile(output_dir):
        raise FileExistsError(f"--output={output_dir} exists and is not empty; choose a new "
                              "folder (nothing is overwritten)")
    image_size = tuple(int(x) for x in image_size)
    source = os.path.abspath(input_path)
    fmt, sd, args = unwrap(read_weights(input_path), fmt, which, source)
    log(f"{source}: format {fmt}" + (f" ({which})" if fmt in PRETRAIN_FORMATS else "")
        + f", {len(sd)} arrays")
    mean, std, why = normalization(fmt, mean, std, source)  # before the work: timm needs flags
    log(f"  normalisation: mean {tuple(mean)}, std {tuple(std)} ({why})")
    if heads and fmt not in PRETRAIN_FORMATS:
        raise ValueError(f"{source}: --heads needs an iBOT / DINO training checkpoint, got {fmt}")

    prefix = {"timm": ""}.get(fmt, "base." if fmt in REID_FORMATS else "backbone.")
    vit_sd, rest = split_prefix(sd, prefix)
    vit = infer_vit(vit_sd, image_size, source, patch_stride, num_heads, args,
                    overlapping=fmt in REID_FORMATS)
    check_flags(vit, {"width": width, "depth": depth, "num_heads": num_heads,
                      "patch_size": patch_size, "patch_stride": patch_stride}, source)
    name = _model_name(vit["width"], model)
    if model and not width and VIT_SIZES[model]["width"] != vit["width"]:
        raise ValueError(f"{source}: --model={model} has width {VIT_SIZES[model]['width']}, the "
                         f"checkpoint's cls_token gives width {vit['width']}")
    log(f"  ViT: width {vit['width']}, depth {vit['depth']}, heads {vit['num_heads']}, patch "
        f"{vit['patch_size']}, stride {vit['patch_stride']}, stored grid {vit['stored_grid']}"
        + (f", SIE with {vit['num_cameras']} cameras" if vit["num_cameras"] else ""))

    flat: Flat = {}
    mapped: list = []
    head_cfg = None
    groups = 0
    if fmt in REID_FORMATS:
        kind = "reid"
        reid = map_reid(vit_sd, rest, vit["depth"], flat, mapped, source)
        groups, num_classes = reid["jpm_groups"], reid["num_classes"]
        dataset = dataset or CLASSES_TO_DATASET.get(num_classes, "")
        log(f"  ReID: {num_classes} classes" + (f", JPM with {groups} groups" if groups else ""))
    else:
        num_classes = 0
        kind = "pretrain" if heads else "backbone"
        vit["mask_token"] = "masked_embed" in vit_sd and not heads
        owner = ("teacher", "backbone") if heads else ("params", "backbone")
        keep = {k: v for k, v in vit_sd.items() if not k.startswith(("head.", "fc."))}
        if not vit["mask_token"] and not heads:
            keep.pop("masked_embed", None)
        map_module(keep, prefix, owner, flat, mapped)
        if heads:
            head_cfg = map_head(split_prefix(rest, "head.")[0], ("teacher", "head"), flat, mapped,
                                args)
            log(f"  head: {head_cfg}")
    if vit["num_cameras"]:
        if not dataset or layouts.num_cameras(dataset) != vit["num_cameras"]:
            raise ValueError(
                f"{source}: base.sie_embed has {vit['num_cameras']} camera rows; pass "
                f"--dataset= one of "
                f"{sorted(n for n in layouts.DATASETS if layouts.num_cameras(n) == vit['num_cameras'])}"
                f" (got {dataset or 'none'})")

    config = make_config(vit, image_size, mean, std, name, dataset, groups, head_cfg)
    target = target_tree(config, kind, num_classes, vit["num_cameras"])
    flat = fit_to_target(flat, target, vit["stored_grid"], config.model.pos_grid, source, log,
                         {dst: (src, shape) for src, dst, shape in mapped})
    for src, dst, shape in mapped:
        log(f"  mapped {src} {tuple(shape)} -> {dst}")
    used = {src for src, _, _ in mapped}
    dropped = [(k, drop_reason(k)) for k in sorted(sd) if k not in used]
    for k, why in dropped:
        log(f"  dropped {k} ({why})")
    write_checkpoint(output_dir, trees.unflatten(flat), config)
    log(f"wrote {output_dir} ({kind}; {len(flat)} arrays, {len(dropped)} dropped)")
    return {"format": fmt, "kind": kind, "config": config, "mapped": mapped, "dropped": dropped}


def write_checkpoint(output_dir: str, tree: dict, config) -> None:
    """config.json + checkpoints/0/state, written into a temporary sibling folder that is
    renamed to `output_dir` at the end (an interrupted conversion leaves no half folder)."""
    parent = os.path.dirname(output_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(output_dir)}.tmp-", dir=parent)
    try:
        ckpt = checkpointing.Checkpointer(os.path.join(tmp, "checkpoints"), max_to_keep=1,
                                          async_save=False)
        ckpt.save(0, tree, force=True)
        ckpt.close()
        files.write_text(os.path.join(tmp, "config.json"), config.to_json_best_effort(indent=2))
        if os.path.isdir(output_dir):
            os.rmdir(output_dir)  # empty (checked above); a non-empty one raises here
        os.rename(tmp, output_dir)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, files.WriteError) and isinstance(e.__cause__, OSError):
            raise files.write_failed(output_dir, e.__cause__, "nothing was left behind") from e
        raise


# ---------------------------------------------------------------------------- example weights
def random_personvit_state_dict(*, width: int = 384, depth: int = 12, patch_size: int = 16,
                                image_size=(256, 128), num_classes: int = 751,
                                seed: int = 0) -> dict[str, np.ndarray]:
    """A randomly initialised fine-tuned PersonViT ReID model as the PyTorch state dict the
    released `.pth` files hold (float32 numpy arrays, the original key names and layouts), to
    try the conversion path without a download; save it with `safetensors.numpy.save_file` or
    `np.savez`. Initialised like the originals: weights N(0, 0.02) (classifier 0.001), norms
    1 / 0, BNNeck running mean 0 / var 1. Features of a random model rank nothing meaningfully."""
    rng = np.random.default_rng(seed)
    normal = lambda *shape, std=0.02: (rng.standard_normal(shape) * std).astype(np.float32)
    ones, zeros = (lambda *s: np.ones(s, np.float32)), (lambda *s: np.zeros(s, np.float32))
    gh, gw = grid_size(image_size, patch_size, patch_size)
    sd = {"base.cls_token": normal(1, 1, width), "base.pos_embed": normal(1, 1 + gh * gw, width),
          "base.patch_embed.proj.weight": normal(width, 3, patch_size, patch_size),
          "base.patch_embed.proj.bias": zeros(width)}
    linears = {"attn.qkv": (3 * width, width), "attn.proj": (width, width),
               "mlp.fc1": (4 * width, width), "mlp.fc2": (width, 4 * width)}
    for i in range(depth):
        p = f"base.blocks.{i}."
        for norm in ("norm1", "norm2"):
            sd[f"{p}{norm}.weight"], sd[f"{p}{norm}.bias"] = ones(width), zeros(width)
        for name, (out_dim, in_dim) in linears.items():
            sd[f"{p}{name}.weight"], sd[f"{p}{name}.bias"] = normal(out_dim, in_dim), zeros(out_dim)
    sd["base.norm.weight"], sd["base.norm.bias"] = ones(width), zeros(width)
    sd["base.fc.weight"], sd["base.fc.bias"] = normal(1000, width), zeros(1000)  # unused in ReID
    sd.update({"bottleneck.weight": ones(width), "bottleneck.bias": zeros(width),
               "bottleneck.running_mean": zeros(width), "bottleneck.running_var": ones(width),
               "bottleneck.num_batches_tracked": np.asarray(0, np.int64),
               "classifier.weight": normal(num_classes, width, std=0.001)})
    return sd


# ---------------------------------------------------------------------------- command line
def _pair(text: str, cast=int) -> tuple:
    try:
        return tuple(cast(x) for x in text.replace("x", ",").split(","))
    except ValueError as e:
        raise ValueError(f"{text!r}: expected comma-separated numbers, e.g. 256,128") from e


def define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_string("input", None, ".pth / .pt / .safetensors / .npz file", flag_values=fv)
    flags.DEFINE_string("output", None, "new checkpoint folder (must not exist)", flag_values=fv)
    flags.DEFINE_enum("format", "auto", FORMATS, "source format (auto: from the keys)",
                      flag_values=fv)
    flags.DEFINE_enum("which", "teacher", ("teacher", "student"),
                      "network of an iBOT / DINO training checkpoint", flag_values=fv)
    flags.DEFINE_boolean("heads", False, "iBOT / DINO: also convert the projection head "
                         "(pretraining layout)", flag_values=fv)
    flags.DEFINE_string("image_size", "256,128", "H,W the converted model runs at (position "
                        "embedding resized to it)", flag_values=fv)
    flags.DEFINE_string("model", "", f"one of {sorted(VIT_SIZES)} (checked)", flag_values=fv)
    for key in ("width", "depth", "num_heads", "patch_size", "patch_stride"):
        flags.DEFINE_integer(key, 0, "checked against the shapes; num_heads is needed for "
                             "non-standard widths", flag_values=fv)
    flags.DEFINE_string("dataset", "", "data.name of the written config (inferred from the "
                        "class count of ReID checkpoints; needed for SIE)", flag_values=fv)
    flags.DEFINE_string("mean", None, "normalisation mean R,G,B (default: 0.5 for ReID models, "
                        "ImageNet's for iBOT / DINO; required for timm)", flag_values=fv)
    flags.DEFINE_string("std", None, "normalisation std R,G,B (with --mean)", flag_values=fv)
    flags.mark_flags_as_required(["input", "output"], flag_values=fv)


def run(fv: flags.FlagValues) -> int:
    convert(fv.input, fv.output, fmt=fv.format, which=fv.which, heads=fv.heads,
            image_size=_pair(fv.image_size), model=fv.model, width=fv.width, depth=fv.depth,
            num_heads=fv.num_heads, patch_size=fv.patch_size, patch_stride=fv.patch_stride,
            dataset=fv.dataset, mean=_pair(fv.mean, float) if fv.mean else None,
            std=_pair(fv.std, float) if fv.std else None)
    return 0


def main(argv=None) -> int:
    return cli.run_tool("python -m personvit_jax.tools.convert", __doc__, define_flags, run,
                        argv)


if __name__ == "__main__":
    sys.exit(main())
