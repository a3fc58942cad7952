"""THE model loader: a checkpoint -> the module, its variables, its test preprocessing and the
retrieval feature it computes. The evaluate stage, `tools/extract`, `tools/export`, the
attention maps and the notebooks all go through `load_model`; the training stages read their
`init_from` weights through `init_source`.

A checkpoint is a fine-tune or pretrain workdir (its latest checkpoint), its `checkpoints/`
folder, one step folder, or a folder written by `tools/convert`. The architecture comes from
the run's saved config.json (fields it lacks: configs/finetune.py's), with any field set in the
caller's overrides winning, and is then CHECKED against the parameters themselves: the SIE
camera count is the row count of `sie_embed`, JPM and its branch count come from the JPM and
BNNeck parameters, the number of classes from the classifier. A config that disagrees with
the arrays is an error naming both, never a silently different model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from personvit_jax import trees
from personvit_jax.config_args import load_config
from personvit_jax.linalg import l2_normalize
from personvit_jax.models.reid import reid_model_from_config, retrieval_embedding
from personvit_jax.models.vit import vit_from_config
from personvit_jax.training.checkpointing import load_state_tree, resolve_checkpoint

EmbedFn = Callable[[dict, jax.Array, Optional[jax.Array]], jax.Array]


# ---------------------------------------------------------------------------- saved configs
def saved_config(path: str) -> Optional[ml_collections.ConfigDict]:
    """The config.json of the run (or conversion) that wrote the checkpoint at `path`: the
    workdir holding `checkpoints/<step>/`. None when there is none (e.g. a bare step folder)."""
    workdir = os.path.dirname(os.path.dirname(resolve_checkpoint(path)))
    cfg_path = os.path.join(workdir, "config.json")
    if not os.path.isfile(cfg_path):
        return None
    try:
        with open(cfg_path) as f:
            return ml_collections.ConfigDict(json.load(f))
    except (OSError, ValueError) as e:
        raise ValueError(f"{cfg_path}: unreadable saved config ({e})") from e


def _set_fields(cfg) -> dict:
    """The fields of a config block the caller set (None = not set: take the checkpoint's)."""
    return {k: v for k, v in (cfg.items() if cfg is not None else []) if v is not None}


def resolve_model_config(checkpoint: str, overrides=None) -> ml_collections.ConfigDict:
    """The architecture to build for `checkpoint`: configs/finetune.py's `model` block, updated
    with the run's saved one, then with the fields set in `overrides` (non-None). Without a saved
    config the overrides must at least name the model."""
    saved = saved_config(checkpoint)
    given = _set_fields(overrides)
    if (saved is None or "model" not in saved) and "name" not in given:
        workdir = os.path.dirname(os.path.dirname(resolve_checkpoint(checkpoint)))
        raise ValueError(
            f"{checkpoint}: no saved config ({os.path.join(workdir, 'config.json')} is missing) "
            "and no model given: pass the architecture, e.g. --config.model.name=vit_small (and "
            "any field that differs from configs/finetune.py, e.g. --config.model.patch_stride=12)")
    out = load_config("finetune", f"model={given.get('name') or saved.model.name}").model
    if saved is not None and "model" in saved:
        out.update({k: v for k, v in saved.model.items() if k in out})
    out.update(given)
    out.remat = False  # inference: nothing to recompute
    return out


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """Test preprocessing: bilinear resize to `image_size` (height, width), then
    (x / 255 - mean) / std."""

    image_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def normalize(self, images_bhwc_u8: jax.Array) -> jax.Array:
        """uint8 [..., 3] (already resized) -> float32 network input."""
        mean, std = jnp.asarray(self.mean, jnp.float32), jnp.asarray(self.std, jnp.float32)
        return (images_bhwc_u8.astype(jnp.float32) / 255.0 - mean) / std


def resolve_preprocessing(checkpoint: str, overrides=None) -> Preprocessing:
    """Fields set in `overrides` (image_size / mean / std) win, then the run's saved config
    (fine-tune `data.image_size`, pretrain `data.global_size`, `data.mean` / `data.std`), then
    configs/finetune.py's (PersonViT: 256x128, mean = std = 0.5)."""
    saved = saved_config(checkpoint)
    sd = saved.get("data", {}) if saved is not None else {}
    given = _set_fields(overrides)
    default = load_config("finetune").data
    size = given.get("image_size") or sd.get("image_size") or sd.get("global_size")
    return Preprocessing(image_size=tuple(size or default.image_size),
                         mean=tuple(given.get("mean") or sd.get("mean") or default.mean),
                         std=tuple(given.get("std") or sd.get("std") or default.std))


# ---------------------------------------------------------------------------- features
def with_flip(embed_bd: Callable[[jax.Array], jax.Array], flip: bool) -> Callable:
    """Flip test-time augmentation: the mean of the features of the images and their mirrors
    (mirror = reversed width axis of [B, H, W, 3]); identity when `flip` is False."""
    if not flip:
        return embed_bd
    return lambda images_bhwc: 0.5 * (embed_bd(images_bhwc) + embed_bd(images_bhwc[:, :, ::-1]))


def reid_embed_fn(model: nn.Module, neck_feat: str = "before", normalize: bool = True,
                  flip: bool = False, use_cams: bool = False) -> EmbedFn:
    """(variables, images [B, H, W, 3], camids [B]) -> features [B, D] of a `ReIDModel`
    (unjitted): its retrieval feature (`neck_feat` side of the BNNeck, JPM concatenated), flip
    TTA averaged before the L2 normalisation (as TransReID / fast-reid); `use_cams` feeds
    camera ids to the SIE embedding."""
    def embed(variables, images, camids):
        def raw(x):
            out = model.apply(variables, x, camids if use_cams else None, train=False)
            return retrieval_embedding(out, neck_feat)
        f = with_flip(raw, flip)(images)
        return l2_normalize(f) if normalize else f
    return embed


def backbone_embed_fn(vit: nn.Module, normalize: bool = True, flip: bool = False,
                      use_cams: bool = False) -> EmbedFn:
    """(variables, images, camids) -> the ViT's final CLS token [B, D] (unjitted)."""
    def embed(variables, images, camids):
        cams = camids if use_cams else None
        f = with_flip(lambda x: vit.apply(variables, x, camera_ids_b=cams, train=False)["cls"],
                      flip)(images)
        return l2_normalize(f) if normalize else f
    return embed


# ---------------------------------------------------------------------------- the loader
@dataclasses.dataclass
class LoadedModel:
    """A checkpoint ready for inference (see `load_model`)."""

    checkpoint: str  # the step folder read
    kind: str  # 'reid' (ViT + BNNeck [+ JPM]) | 'backbone' (a ViT: the CLS token is the feature)
    model_config: ml_collections.ConfigDict  # the architecture built (checked against params)
    module: nn.Module  # ReIDModel or ViT
    variables: dict  # {'params': ..., 'batch_stats': ...} (ReID) or {'params': ...} (ViT)
    preprocessing: Preprocessing
    num_cameras: int  # SIE rows (0 = no SIE): camera ids are then an input
    num_classes: int  # ID classifier outputs (0 for a backbone)
    jpm_groups: int  # JPM local branches (0 = no JPM)

    @property
    def uses_cameras(self) -> bool:
        return self.num_cameras > 0

    def check_camera_ids(self, camids, what: str) -> None:
        """SIE models index their camera embedding with these ids: each must be one of its
        `num_cameras` rows (out-of-range ids would be clamped silently inside jit)."""
        if not self.uses_cameras:
            return
        camids = np.asarray(camids)
        bad = camids[(camids < 0) | (camids >= self.num_cameras)]
        if bad.size:
            raise ValueError(f"{self.checkpoint}: the model has SIE camera embeddings for "
                             f"{self.num_cameras} cameras (ids 0-{self.num_cameras - 1}), but "
                             f"{what} has camera ids {sorted(set(bad.tolist()))[:8]}")

    def feature_space(self, neck_feat: str = "before", normalize: bool = True,
                      flip: bool = False) -> str:
        """A 16-hex id of the function image -> feature this model computes with these
        settings: SHA-256 over every variable (name, dtype, shape, bytes), the architecture,
        the preprocessing and the feature settings. Two feature files are comparable iff
        their ids are equal (the same weights under another name still match)."""
        h = hashlib.sha256()
        for name, leaf in sorted(trees.flatten(self.variables).items()):
            x = np.ascontiguousarray(np.asarray(leaf))
            h.update(f"{name}|{x.dtype.str}|{x.shape}|".encode())
            h.update(x.tobytes())
        p = self.preprocessing
        arch = {k: v for k, v in self.model_config.to_dict().items()
                if k not in ("drop_path_rate", "remat")}  # training-only fields
        h.update(json.dumps({"kind": self.kind, "model": arch, "image_size": list(p.image_size),
                             "mean": [float(v) for v in p.mean],
                             "std": [float(v) for v in p.std], "neck_feat": neck_feat,
                             "normalize": bool(normalize), "flip": bool(flip)},
                            sort_keys=True, default=str).encode())
        return h.hexdigest()[:16]

    def embed_fn(self, neck_feat: str = "before", normalize: bool = True,
                 flip: bool = False) -> EmbedFn:
        """(variables, images, camids) -> retrieval features, unjitted (see reid_embed_fn)."""
        if self.kind == "reid":
            return reid_embed_fn(self.module, neck_feat, normalize, flip, self.uses_cameras)
        if neck_feat != "before":
            raise ValueError(f"{self.checkpoint}: a backbone checkpoint has no BNNeck; "
                             f"neck_feat={neck_feat!r} needs a fine-tuned ReID model")
        return backbone_embed_fn(self.module, normalize, flip, self.uses_cameras)

    def bound_embed(self, neck_feat: str = "before", normalize: bool = True,
                    flip: bool = False) -> Callable:
        """images [B, H, W, 3] (+ camids [B] for SIE models) -> features, with the variables
        closed over (e.g. for jax.export)."""
        embed = self.embed_fn(neck_feat, normalize, flip)
        variables = jax.tree.map(jnp.asarray, self.variables)  # traced indexing needs jax arrays
        return lambda images, camids=None: embed(variables, images, camids)


def _backbone_params(tree: dict, source: str) -> dict:
    """A pretrain run's TEACHER backbone (what PersonViT fine-tunes from), else a fine-tune
    run's (or a converted checkpoint's) backbone."""
    for owner in ("teacher", "params"):
        if isinstance(tree.get(owner), dict) and "backbone" in tree[owner]:
            return tree[owner]["backbone"]
    raise ValueError(f"{source}: no backbone parameters found (expected state['teacher']"
                     f"['backbone'] or state['params']['backbone']; top-level keys: "
                     f"{sorted(tree)})")


def _check_architecture(model_cfg, params: dict, kind: str, source: str) -> dict:
    """{num_cameras, num_classes, jpm_groups} read from the arrays; raises when the config
    says otherwise."""
    backbone = params["backbone"] if kind == "reid" else params
    sie = backbone.get("sie_embed")
    num_cameras = int(sie.shape[0]) if sie is not None else 0
    if bool(model_cfg.sie) != bool(num_cameras):
        raise ValueError(f"{source}: config model.sie={model_cfg.sie} but the checkpoint "
                         + (f"has sie_embed {tuple(sie.shape)}" if num_cameras
                            else "has no sie_embed") + "; fix --config.model.sie")
    if kind != "reid":
        return {"num_cameras": num_cameras, "num_classes": 0, "jpm_groups": 0}
    has_jpm = "jpm" in params
    groups = sum(1 for k in params if k.startswith("neck_"))
    if bool(model_cfg.jpm) != has_jpm:
        raise ValueError(f"{source}: config model.jpm={model_cfg.jpm} but the checkpoint "
                         f"{'has' if has_jpm else 'has no'} JPM parameters; fix "
                         "--config.model.jpm")
    if has_jpm and groups != model_cfg.jpm_groups:
        raise ValueError(f"{source}: config model.jpm_groups={model_cfg.jpm_groups} but the "
                         f"checkpoint has {groups} local BNNecks (neck_1..neck_{groups})")
    return {"num_cameras": num_cameras, "jpm_groups": groups if has_jpm else 0,
            "num_classes": int(params["neck"]["classifier"]["kernel"].shape[-1])
            if "classifier" in params["neck"] else 0}  # a usl run's BNNeck has none


def load_model(checkpoint: str, model_overrides=None, preprocessing_overrides=None
               ) -> LoadedModel:
    """Reads `checkpoint` and builds its model (see the module docstring).

    kind 'reid': a fine-tune run or a converted PersonViT / TransReID ReID model
    ({'params', 'batch_stats'}); 'backbone': a pretrain run's teacher or converted backbone
    weights ({'params': ViT params}; the mask token of pretraining is dropped)."""
    step_dir = resolve_checkpoint(checkpoint)
    tree = load_state_tree(step_dir)
    model_cfg = resolve_model_config(checkpoint, model_overrides)
    params = tree.get("params")
    if isinstance(params, dict) and "neck" in params:
        if "batch_stats" not in tree:
            raise ValueError(f"{step_dir}: ReID params without batch_stats (the BNNeck running "
                             "statistics)")
        kind, variables = "reid", {"params": params, "batch_stats": tree["batch_stats"]}
        arch = _check_architecture(model_cfg, params, kind, step_dir)
        module = reid_model_from_config(ml_collections.ConfigDict({"model": model_cfg}),
                                        arch["num_classes"], arch["num_cameras"])
    else:
        kind = "backbone"
        vit_params = {k: v for k, v in _backbone_params(tree, step_dir).items()
                      if k != "mask_token"}
        model_cfg.jpm = False  # a backbone has no JPM branches, whatever the run trained
        arch = _check_architecture(model_cfg, vit_params, kind, step_dir)
        variables = {"params": vit_params}
        module = vit_from_config(model_cfg, num_cameras=arch["num_cameras"])
    preprocessing = resolve_preprocessing(checkpoint, preprocessing_overrides)
    _check_tree(module, variables, kind, preprocessing, arch["num_cameras"], step_dir)
    return LoadedModel(checkpoint=step_dir, kind=kind, model_config=model_cfg, module=module,
                       variables=variables, preprocessing=preprocessing, **arch)


def _check_tree(module, variables: dict, kind: str, preprocessing: Preprocessing,
                num_cameras: int, source: str) -> None:
    """Every array the built model expects, with its shape, and nothing else (a different
    depth, width or patch size in the config is named here, not deep inside Flax)."""
    x = jnp.zeros((1, *preprocessing.image_size, 3), jnp.float32)
    cams = jnp.zeros((1,), jnp.int32) if num_cameras else None
    if kind == "reid":
        init = lambda: module.init(jax.random.key(0), x, cams)
    else:
        init = lambda: module.init(jax.random.key(0), x, camera_ids_b=cams)
    want = trees.shapes(trees.flatten(jax.eval_shape(init)))
    have = trees.shapes(trees.flatten(variables))
    problems = trees.diff(have, want).problems()
    if problems:
        raise ValueError(f"{source}: the checkpoint's arrays do not fit the configured model "
                         f"(check --config.model.*): " + "; ".join(problems[:10]))


# ---------------------------------------------------------------------------- init_from
@dataclasses.dataclass
class InitSource:
    """What `config.init_from` offers a new run (arrays on the host)."""

    path: str
    backbone: dict  # ViT params (a pretrain run's teacher backbone, else the run's backbone)
    teacher_head: Optional[dict]  # a pretrain run's (or --heads conversion's) teacher head
    pos_grid: Optional[tuple]  # the stored position-embedding grid, if its config says it
    num_classes: int  # the classifier of a ReID checkpoint (0 if none)


def init_source(path: str) -> InitSource:
    tree = load_state_tree(path)
    saved = saved_config(path)
    model = saved.get("model") if saved is not None else None
    teacher = tree.get("teacher") if isinstance(tree.get("teacher"), dict) else {}
    params = tree.get("params") if isinstance(tree.get("params"), dict) else {}
    neck = params.get("neck", {})
    return InitSource(
        path=path, backbone=_backbone_params(tree, resolve_checkpoint(path)),
        teacher_head=teacher.get("head"),
        pos_grid=tuple(model["pos_grid"]) if model is not None and "pos_grid" in model else None,
        num_classes=int(neck["classifier"]["kernel"].shape[-1]) if "classifier" in neck else 0)


def describe(loaded: LoadedModel) -> dict[str, Any]:
    """A JSON-ready summary of what was loaded (for logs and output metadata)."""
    p = loaded.preprocessing
    return {"checkpoint": loaded.checkpoint, "kind": loaded.kind, "model": loaded.model_config.name,
            "image_size": list(p.image_size), "mean": list(p.mean), "std": list(p.std),
            "num_cameras": loaded.num_cameras, "num_classes": loaded.num_classes,
            "jpm_groups": loaded.jpm_groups}
