"""Config checks that run before any work: impossible values, command-line overrides of keys that
do not exist, and a workdir whose saved config disagrees with the new one in fields that change
array shapes (resuming would fail deep inside Orbax, or silently train something else).

Each check raises a ValueError naming the key, the value and what was expected.
"""

from __future__ import annotations

import json
import os
import time
from typing import Iterable, Optional

import ml_collections
import numpy as np
from absl import logging

from personvit_jax import files
from personvit_jax.models.vit import vit_from_config
from personvit_jax.training.checkpointing import resolve_checkpoint
from personvit_jax.training.loop import NONFINITE_MODES

# Fields whose change makes a workdir's checkpoints unusable (array shapes, number of classes).
SHAPE_FIELDS = (
    "stage", "model.name", "model.width", "model.depth", "model.num_heads", "model.patch_size",
    "model.patch_stride", "model.pos_grid", "model.sie", "model.jpm", "model.jpm_groups",
    "data.name", "data.synthetic", "head.out_dim", "head.patch_out_dim", "head.hidden_dim",
    "head.bottleneck_dim", "head.shared_head", "head.norm_last_layer", "optim.name")


def _get(cfg, dotted: str):
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, (dict, ml_collections.ConfigDict)) or part not in node:
            return None
        node = node[part]
    return node.to_dict() if isinstance(node, ml_collections.ConfigDict) else node


def _norm(v):
    """JSON round trip, so tuples == lists and ConfigDicts == dicts."""
    return json.loads(json.dumps(v, default=str))


def _fail(key: str, value, expected: str) -> None:
    raise ValueError(f"config.{key}={value!r}: {expected}")


# ---------------------------------------------------------------------------- value checks
def _check_choice(cfg, key: str, choices: Iterable[str]) -> None:
    v = _get(cfg, key)
    if v not in choices:
        _fail(key, v, f"expected one of {sorted(choices)}")


def _check_range(cfg, key: str, lo: float, hi: float) -> None:
    v = _get(cfg, key)
    if not lo <= v <= hi:
        _fail(key, v, f"expected a value in [{lo}, {hi}]")


def _pair(cfg, key: str, what: str) -> tuple:
    """The two numbers of a (height, width) / (min, max) field, or a ValueError naming it."""
    v = _get(cfg, key)
    if not isinstance(v, (tuple, list)) or len(v) != 2 or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
        _fail(key, v, f"expected two numbers {what}")
    return tuple(v)


def _check_scale(cfg, key: str) -> None:
    lo, hi = _pair(cfg, key, "(min, max)")
    if not 0 < lo <= hi <= 1:
        _fail(key, (lo, hi), "expected (min, max) with 0 < min <= max <= 1")


def _check_patch_grid(cfg, size_key: str) -> None:
    """The patch embedding must tile the input: (side - patch) divisible by the stride."""
    h, w = _pair(cfg, size_key, "(height, width)")
    p, s = cfg.model.patch_size, cfg.model.patch_stride
    for side in (h, w):
        if side < p or (side - p) % s:
            _fail(size_key, (h, w), f"each side must be >= model.patch_size={p} and (side - {p}) "
                                    f"divisible by model.patch_stride={s}")


def check_common(cfg) -> None:
    vit_from_config(cfg.model)  # the one check of model.name (and the sizes it implies)
    _check_choice(cfg, "model.compute_dtype", ("float32", "bfloat16"))
    _check_choice(cfg, "model.pos_interp", ("bicubic", "bilinear"))
    _check_range(cfg, "model.drop_path_rate", 0.0, 0.99)
    _check_choice(cfg, "nonfinite", NONFINITE_MODES)
    if cfg.model.patch_stride > cfg.model.patch_size or cfg.model.patch_stride < 1:
        _fail("model.patch_stride", cfg.model.patch_stride,
              f"expected 1 <= stride <= model.patch_size={cfg.model.patch_size}")
    if cfg.get("init_from"):  # a wrong path fails before the data and the model are built
        resolve_checkpoint(cfg.init_from)
    for key in ("optim.epochs", "log_every_steps", "checkpoint_every_steps", "keep_checkpoints"):
        if _get(cfg, key) is not None and _get(cfg, key) < (0 if key == "optim.epochs" else 1):
            _fail(key, _get(cfg, key), "expected a positive integer")


def _check_reid_optim(cfg) -> None:
    """The optim block training/optim.make_finetune_optimizer reads (finetune, usl)."""
    _check_choice(cfg, "optim.name", ("sgd", "adamw"))
    if _get(cfg, "optim.clip_grad") < 0:
        _fail("optim.clip_grad", _get(cfg, "optim.clip_grad"), "expected >= 0 (0 = no clipping)")
    # Keys a combination would ignore are refused, not dropped silently.
    if cfg.optim.name == "adamw" and _get(cfg, "optim.weight_decay_bias"):
        _fail("optim.weight_decay_bias", _get(cfg, "optim.weight_decay_bias"),
              "adamw never decays biases (decoupled decay on matrices only): 0, or optim.name=sgd")
    if cfg.optim.get("schedule", "cosine") == "step" and _get(cfg, "optim.warmup_epochs"):
        _fail("optim.warmup_epochs", _get(cfg, "optim.warmup_epochs"),
              "optim.schedule='step' has no warm-up: 0, or optim.schedule='cosine'")


def check_finetune_config(cfg) -> None:
    """Values of a fine-tune config that can be judged without the data."""
    check_common(cfg)
    d = cfg.data
    _check_patch_grid(cfg, "data.image_size")
    if d.num_instances < 2:
        _fail("data.num_instances", d.num_instances,
              "the batch-hard triplet needs K >= 2 images per identity")
    if d.num_ids_per_batch < 2:
        _fail("data.num_ids_per_batch", d.num_ids_per_batch,
              "the batch-hard triplet needs P >= 2 identities per batch")
    if d.pad < 0:
        _fail("data.pad", d.pad, "expected >= 0 pixels")
    for key in ("data.flip_prob", "data.erasing_prob", "data.color_jitter.prob"):
        _check_range(cfg, key, 0.0, 1.0)
    _check_reid_optim(cfg)
    _check_choice(cfg, "loss.triplet", ("soft", "margin"))
    check_eval_block(cfg)


def check_usl_config(cfg) -> None:
    """Values of a usl config that can be judged without the data."""
    check_common(cfg)
    d = cfg.data
    _check_patch_grid(cfg, "data.image_size")
    if d.num_instances < 2:
        _fail("data.num_instances", d.num_instances, "expected K >= 2 images per cluster")
    if d.num_ids_per_batch < 2:
        _fail("data.num_ids_per_batch", d.num_ids_per_batch, "expected P >= 2 clusters")
    if d.pad < 0:
        _fail("data.pad", d.pad, "expected >= 0 pixels")
    for key in ("data.flip_prob", "data.erasing_prob", "data.color_jitter.prob",
                "memory.momentum"):
        _check_range(cfg, key, 0.0, 1.0)
    for key in ("model.sie", "model.jpm"):
        if _get(cfg, key):
            _fail(key, True, "the usl stage trains the global feature without cameras: False")
    _check_reid_optim(cfg)
    _check_choice(cfg, "optim.schedule", ("step", "cosine"))
    if not 0.0 < cfg.cluster.eps < 1.0:
        _fail("cluster.eps", cfg.cluster.eps, "a Jaccard distance in (0, 1)")
    for key in ("cluster.min_samples", "cluster.k1", "cluster.k2", "optim.iters_per_epoch",
                "optim.step_epochs"):
        if _get(cfg, key) < 1:
            _fail(key, _get(cfg, key), "expected a positive integer")
    if cfg.cluster.k2 > cfg.cluster.k1:
        _fail("cluster.k2", cfg.cluster.k2, f"expected <= cluster.k1={cfg.cluster.k1}")
    if cfg.memory.temp <= 0:
        _fail("memory.temp", cfg.memory.temp, "expected a positive temperature")
    check_eval_block(cfg)


def check_eval_block(cfg) -> None:
    """`eval` fields shared by the fine-tune and evaluate configs (and tools/extract)."""
    _check_choice(cfg, "eval.neck_feat", ("before", "after"))
    _check_choice(cfg, "eval.metric", ("euclidean", "cosine"))
    if cfg.eval.batch_size < 1:
        _fail("eval.batch_size", cfg.eval.batch_size, "expected a positive integer")


def check_finetune_data(cfg, num_train_ids: int) -> None:
    """Checks that need the train split: P x K must be drawable."""
    if cfg.data.num_ids_per_batch > num_train_ids:
        _fail("data.num_ids_per_batch", cfg.data.num_ids_per_batch,
              f"larger than the {num_train_ids} identities of {cfg.data.name}'s train split")


def check_pretrain_config(cfg) -> None:
    check_common(cfg)
    d = cfg.data
    _check_patch_grid(cfg, "data.global_size")
    _check_patch_grid(cfg, "data.local_size")
    if d.local_size[0] > d.global_size[0] or d.local_size[1] > d.global_size[1]:
        _fail("data.local_size", tuple(d.local_size),
              f"local crops larger than the global crops {tuple(d.global_size)}")
    _check_scale(cfg, "data.global_scale")
    _check_scale(cfg, "data.local_scale")
    if "crop_ratio" in d:
        lo, hi = _pair(cfg, "data.crop_ratio", "(min, max)")
        if not 0 < lo <= hi:
            _fail("data.crop_ratio", (lo, hi), "expected a w/h range (min, max), 0 < min <= max")
    if d.num_local_crops < 0:
        _fail("data.num_local_crops", d.num_local_crops, "expected >= 0")
    for key in ("data.color_jitter.prob", "data.grayscale_prob", "data.solarize_prob",
                "mask.masked_fraction"):
        _check_range(cfg, key, 0.0, 1.0)
    _check_range(cfg, "data.color_jitter.channel_gain", 0.0, 1.0)  # std of a log gain
    if "sensor_jitter" in d:
        _check_range(cfg, "data.sensor_jitter.prob", 0.0, 1.0)
        if not 0.0 < d.sensor_jitter.min_resolution <= 1.0:
            _fail("data.sensor_jitter.min_resolution", d.sensor_jitter.min_resolution,
                  "expected a size factor in (0, 1]")
        _check_range(cfg, "data.sensor_jitter.max_noise", 0.0, 255.0)
    if "background_swap" in d:
        _check_range(cfg, "data.background_swap.prob", 0.0, 1.0)
        if not 0.0 <= d.background_swap.margin < 0.5:
            _fail("data.background_swap.margin", d.background_swap.margin,
                  "expected a fraction of the width per side in [0, 0.5)")
    k = cfg.mask
    if not (0 <= k.ratio - k.ratio_var and k.ratio + k.ratio_var < 1):
        _fail("mask.ratio", (k.ratio, k.ratio_var), "ratio +- ratio_var must lie in [0, 1)")
    if k.start_epoch < 0 or k.min_block < 0:
        _fail("mask.start_epoch" if k.start_epoch < 0 else "mask.min_block",
              k.start_epoch if k.start_epoch < 0 else k.min_block, "expected >= 0")
    _check_choice(cfg, "optim.clip_mode", ("per_tensor", "global_norm"))
    if cfg.head.shared_head and cfg.head.out_dim != cfg.head.patch_out_dim:
        _fail("head.patch_out_dim", cfg.head.patch_out_dim,
              f"a shared head needs patch_out_dim == out_dim ({cfg.head.out_dim})")


def check_camera_centres(cfg, images) -> int:
    """The number of centres: 1, or with loss.camera_centres the cameras of the pretraining
    images (0-based ids; they must have camera ids)."""
    if not cfg.loss.get("camera_centres", False):
        return 1
    camids = np.asarray(getattr(images, "camids", []))
    if not getattr(images, "has_camera_ids", False) or not len(camids) or camids.min() < 0:
        _fail("loss.camera_centres", True, f"the pretraining images of data.name="
              f"{cfg.data.name!r} have no camera ids (a labelled dataset's train split or the "
              f"synthetic set has them; folders and unlabeled builds do not): False")
    return int(camids.max()) + 1


def check_pretrain_data(cfg, num_images: int) -> None:
    if num_images < cfg.data.batch_size:
        _fail("data.batch_size", cfg.data.batch_size,
              f"larger than the {num_images} pretraining images")


# ---------------------------------------------------------------------------- workdir
def check_workdir_config(cfg, workdir: str, has_checkpoint: bool) -> None:
    """A workdir holding checkpoints may only be resumed with a config that keeps the
    SHAPE_FIELDS of its saved config.json."""
    path = os.path.join(workdir, "config.json")
    if not has_checkpoint or not os.path.isfile(path):
        return
    try:
        with open(path) as f:
            saved = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: unreadable saved config ({e}); move it away to resume") from e
    diffs = [f"{k}: saved {_norm(_get(saved, k))!r}, now {_norm(_get(cfg, k))!r}"
             for k in SHAPE_FIELDS if _norm(_get(saved, k)) != _norm(_get(cfg, k))]
    if diffs:
        raise ValueError(f"{workdir} holds checkpoints of a run whose config differs in "
                         f"shape-changing fields ({'; '.join(diffs)}): use a new --workdir, or "
                         f"the original values to resume")


def prepare_workdir(cfg, workdir: str, is_main: bool, log=logging.warning) -> str:
    """Absolute workdir, created; refuses a config that cannot resume its checkpoints; then
    (main process) records the config: config.json is the one in force (written atomically),
    and a run resumed with another config first keeps the earlier one as
    config.<UTC time it was written>.json and logs the keys that changed."""
    workdir = os.path.abspath(os.path.expanduser(workdir))
    os.makedirs(workdir, exist_ok=True)
    ckpt_dir = os.path.join(workdir, "checkpoints")
    has_checkpoint = os.path.isdir(ckpt_dir) and any(n.isdigit() for n in os.listdir(ckpt_dir))
    check_workdir_config(cfg, workdir, has_checkpoint)
    if is_main:
        path, text = os.path.join(workdir, "config.json"), cfg.to_json_best_effort(indent=2)
        kept = keep_config_revision(path, text)
        if kept:
            log("%s: the config differs from the one this workdir ran with (%s); the earlier "
                "one is kept as %s", workdir, "; ".join(changed_keys(kept, text)), kept)
        files.write_text(path, text)
    return workdir


def keep_config_revision(path: str, new_text: str) -> Optional[str]:
    """When `path` holds another config than `new_text`, copies it to config.<the UTC time it
    was written>.json beside it (never over an existing file) and returns that path."""
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        old_text = f.read()
    if _parsed(old_text) == _parsed(new_text):
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(os.path.getmtime(path)))
    base = os.path.join(os.path.dirname(path), f"config.{stamp}")
    revision, n = base + ".json", 1
    while os.path.exists(revision):
        n += 1
        revision = f"{base}-{n}.json"
    files.write_text(revision, old_text, overwrite=False)
    return revision


def changed_keys(old_path: str, new_text: str) -> list[str]:
    """'key: old -> new' for every dotted key whose value differs (or exists in one only)."""
    with open(old_path) as f:
        old = _flat(_parsed(f.read()))
    new = _flat(_parsed(new_text))
    return [f"{k}: {old.get(k, '<absent>')!r} -> {new.get(k, '<absent>')!r}"
            for k in sorted(set(old) | set(new)) if old.get(k, "<absent>") != new.get(k, "<absent>")]


def _parsed(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text  # an unreadable earlier file is a revision of its own


def _flat(tree, prefix: str = "") -> dict:
    if not isinstance(tree, dict):
        return {prefix or "<config>": tree}
    out = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


# ---------------------------------------------------------------------------- command line
def check_override_keys(config, argv: list[str], flag: str = "config") -> Optional[str]:
    """The first `--config.a.b=...` of `argv` naming a key that `config` lacks, as an error
    message listing the keys that exist at that level; None when all exist."""
    for arg in argv:
        if not arg.startswith(f"--{flag}."):
            continue
        dotted = arg[len(flag) + 3:].partition("=")[0]
        node, parts = config, dotted.split(".")
        for i, part in enumerate(parts):
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                where = ".".join(parts[:i]) or "<top level>"
                keys = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
                return (f"{arg}: config has no key {dotted!r} ({part!r} is not in {where}; "
                        f"keys there: {keys})")
            node = node[part]
    return None
