"""The one checkpoint wrapper: Orbax CheckpointManager over {train state, data iterator}.

Layout: <workdir>/checkpoints/<step>/{state, data}. Orbax writes each checkpoint into a temporary
folder and renames it when complete, so a run killed mid-write never leaves a "latest" checkpoint
that cannot be read. `data` holds the Grain iterator position, so a resumed run sees exactly the
batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from personvit_jax.models.vit import resize_pos_embed


class Checkpointer:
    def __init__(self, directory: str, *, max_to_keep: int = 3, save_interval_steps: int = 1000,
                 async_save: bool = True):
        self.directory = os.path.abspath(directory)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, save_interval_steps=save_interval_steps, create=True,
                enable_async_checkpointing=async_save))

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data_iter=None, force: bool = False) -> bool:
        """Saves when `step` is on the interval (or `force`); returns whether it saved."""
        items = {"state": ocp.args.StandardSave(state)}
        if data_iter is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iter)
        return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

    def restore(self, step: int, abstract_state: Any, data_iter=None) -> Any:
        """Restores the state onto the shardings of `abstract_state` (and the iterator in place)."""
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if data_iter is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
        return self.manager.restore(step, args=ocp.args.Composite(**items))["state"]

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_state(state: Any) -> Any:
    """Shape/dtype/sharding skeleton of a (sharded) state, the restore target."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)


def resolve_checkpoint(path: str) -> str:
    """A workdir, its `checkpoints/` folder or one step folder -> the step folder to read.

    A workdir or `checkpoints/` folder resolves to its latest complete step.
    """
    path = os.path.abspath(os.path.expanduser(path))
    if os.path.isdir(os.path.join(path, "state")):
        return path
    ckpt_dir = os.path.join(path, "checkpoints") if os.path.isdir(
        os.path.join(path, "checkpoints")) else path
    if not os.path.isdir(ckpt_dir):
        raise FileNotFoundError(f"checkpoint path {path} does not exist")
    steps = sorted(int(n) for n in os.listdir(ckpt_dir)
                   if n.isdigit() and os.path.isdir(os.path.join(ckpt_dir, n, "state")))
    if not steps:
        raise FileNotFoundError(
            f"no checkpoint under {path}: expected a workdir with checkpoints/<step>/state, a "
            "checkpoints folder, or a step folder containing state/")
    return os.path.join(ckpt_dir, str(steps[-1]))


def load_state_tree(path: str) -> dict:
    """Reads the saved train state of `path` (see `resolve_checkpoint`) as host numpy arrays,
    whatever the mesh it was written from."""
    state_dir = os.path.join(resolve_checkpoint(path), "state")
    with ocp.PyTreeCheckpointer() as ckptr:
        meta = ckptr.metadata(state_dir).item_metadata
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), meta.tree)
        return ckptr.restore(state_dir, args=ocp.args.PyTreeRestore(restore_args=restore_args))


def pretrained_backbone(path: str) -> dict:
    """The backbone parameters stored at `path`: a pretrain run's TEACHER backbone (as
    PersonViT fine-tunes from), else a fine-tune run's backbone."""
    tree = load_state_tree(path)
    for owner in ("teacher", "params"):
        if isinstance(tree.get(owner), dict) and "backbone" in tree[owner]:
            return tree[owner]["backbone"]
    raise ValueError(f"{resolve_checkpoint(path)}: no backbone parameters found (expected "
                     f"state['teacher']['backbone'] or state['params']['backbone']; top-level "
                     f"keys: {sorted(tree)})")


def saved_config(path: str) -> Optional[ml_collections.ConfigDict]:
    """The config.json of the run (or conversion) that wrote the checkpoint at `path`: the
    workdir holding `checkpoints/<step>/`. None when there is none (e.g. a bare step folder)."""
    step_dir = resolve_checkpoint(path)
    workdir = os.path.dirname(os.path.dirname(step_dir))
    cfg_path = os.path.join(workdir, "config.json")
    if not os.path.isfile(cfg_path):
        return None
    try:
        with open(cfg_path) as f:
            return ml_collections.ConfigDict(json.load(f))
    except (OSError, ValueError) as e:
        raise ValueError(f"{cfg_path}: unreadable saved config ({e})") from e


def inference_variables(path: str) -> tuple[str, dict]:
    """What a checkpoint offers for feature extraction, as (kind, Flax variables):

      'reid'     -> {'params': ReIDModel params, 'batch_stats': BNNeck running stats}
                    (a fine-tune run, or a converted PersonViT/TransReID ReID model)
      'backbone' -> {'params': ViT params} (a pretrain run's teacher, or converted backbone
                    weights: the CLS token is the feature)
    """
    tree = load_state_tree(path)
    params = tree.get("params")
    if isinstance(params, dict) and "neck" in params:
        if "batch_stats" not in tree:
            raise ValueError(f"{resolve_checkpoint(path)}: ReID params without batch_stats "
                             "(the BNNeck running statistics)")
        return "reid", {"params": params, "batch_stats": tree["batch_stats"]}
    return "backbone", {"params": pretrained_backbone(path)}


def pretrained_head(path: str, fresh_head: dict, log=print) -> dict:
    """The projection head to continue pretraining with: the checkpoint's TEACHER head (a
    pretrain run, or iBOT/DINO weights converted with --heads) when it has exactly the arrays
    and shapes of `fresh_head`; else `fresh_head`, and the log says why."""
    tree = load_state_tree(path)
    head = tree.get("teacher", {}).get("head") if isinstance(tree.get("teacher"), dict) else None
    if head is None:
        log(f"init_from: {path} has no projection head; the head starts fresh")
        return fresh_head
    want = {path_name(k): np.shape(v) for k, v in jax.tree_util.tree_leaves_with_path(fresh_head)}
    have = {path_name(k): np.shape(v) for k, v in jax.tree_util.tree_leaves_with_path(head)}
    if want != have:
        diff = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
        log(f"init_from: the head of {path} does not match config.head ({diff[:5]}); the head "
            "starts fresh")
        return fresh_head
    log(f"init_from: projection head loaded from {path} (teacher head)")
    return jax.tree.map(lambda f, h: np.asarray(h, np.asarray(f).dtype), fresh_head, head)


def merge_backbone(params: dict, backbone: dict, source: str, pos_grid, log=print) -> dict:
    """Copies `backbone` into params['backbone'] (pos_embed resized when the grid differs; the
    JPM block, if any, starts as a copy of the last block). Other mismatches are errors that name
    the arrays; heads of the new model keep their fresh initialisation. `pos_grid` = the new
    model's stored position-embedding grid (config.model.pos_grid)."""
    target = params["backbone"]
    flat_t = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(target)}
    flat_s = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(backbone)}
    missing = sorted(set(flat_t) - set(flat_s))
    unexpected = sorted(set(flat_s) - set(flat_t))
    # Tokens a fine-tune model may lack or add (mask token of pretraining, SIE of TransReID).
    optional = ("['mask_token']", "['sie_embed']")
    bad_missing = [k for k in missing if k not in optional]
    if bad_missing:
        raise ValueError(f"{source}: backbone lacks {bad_missing} (different model size or depth?)")
    new = dict(flat_t)
    mismatched = []
    for k, v in flat_s.items():
        if k not in flat_t:
            continue
        t = flat_t[k]
        if k == "['pos_embed']" and v.shape != t.shape:
            v = resize_pos_embed_tokens(np.asarray(v), tuple(pos_grid), _saved_pos_grid(source))
            log(f"init_from: resized pos_embed {flat_s[k].shape} -> {t.shape}")
        if v.shape != t.shape:
            mismatched.append(f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(t.shape)}")
            continue
        new[k] = jax.numpy.asarray(v, t.dtype)
    if mismatched:
        raise ValueError(f"{source}: shape mismatch for " + "; ".join(mismatched))
    paths = [k for k, _ in jax.tree_util.tree_leaves_with_path(target)]
    out = dict(params)
    out["backbone"] = jax.tree_util.tree_unflatten(
        jax.tree_util.tree_structure(target), [new[jax.tree_util.keystr(k)] for k in paths])
    if "jpm" in params:
        depth = sum(1 for k in backbone if k.startswith("blocks_"))
        out["jpm"] = dict(params["jpm"], block=backbone[f"blocks_{depth - 1}"])
        log(f"init_from: JPM block initialised from blocks_{depth - 1}")
    log(f"init_from: loaded {len(flat_s) - len(unexpected)} backbone arrays from {source}"
        + (f"; ignored {unexpected}" if unexpected else "")
        + (f"; kept fresh {missing}" if missing else ""))
    return out


def _saved_pos_grid(path: str):
    """model.pos_grid of the saved config of the checkpoint at `path` (None if unknown): the
    only way to read grids such as 21x10 (overlapping patches) that a token count leaves open."""
    try:
        config = saved_config(path)
    except (FileNotFoundError, ValueError):
        return None
    model = config.get("model") if config is not None else None
    return tuple(model["pos_grid"]) if model is not None and "pos_grid" in model else None


def stored_grid(num_patches: int, expected=None) -> tuple[int, int]:
    """Grid of a stored position embedding from its patch count: `expected` (e.g. the grid the
    checkpoint's config or image size and stride give, such as TransReID's 21x10 at 256x128 with
    stride 12) when its size matches, else height = 2 x width (person crops, e.g. 16x8 at
    256x128) when that fits, else square (e.g. 14x14 at 224x224)."""
    if expected is not None and int(expected[0]) * int(expected[1]) == num_patches:
        return int(expected[0]), int(expected[1])
    w = int(round((num_patches / 2) ** 0.5))
    if 2 * w * w == num_patches:
        return 2 * w, w
    s = int(round(num_patches ** 0.5))
    if s * s == num_patches:
        return s, s
    raise ValueError(f"cannot infer the grid of a stored pos_embed with {num_patches} patch "
                     "tokens (neither the expected grid "
                     f"{tuple(expected) if expected is not None else None}, nor h = 2w, nor square)")


def resize_pos_embed_tokens(pos_1nd: np.ndarray, new_grid, old_grid=None) -> np.ndarray:
    """[1, 1 + h*w, D] (CLS first) -> [1, 1 + h'*w', D] for `new_grid` = (h', w'); the stored
    grid (h, w) is `old_grid` when it fits the token count, else inferred (`stored_grid`)."""
    d = pos_1nd.shape[-1]
    h, w = stored_grid(pos_1nd.shape[1] - 1, old_grid)
    grid = resize_pos_embed(jax.numpy.asarray(pos_1nd[0, 1:]).reshape(h, w, d), new_grid)
    return np.concatenate([pos_1nd[:, :1], np.asarray(grid).reshape(1, -1, d)], axis=1)


def saved_shapes(path: str) -> dict[str, tuple]:
    """{keystr path: shape} of the arrays saved at `path` (see `resolve_checkpoint`), from the
    checkpoint's metadata only (no array is read)."""
    with ocp.PyTreeCheckpointer() as ckptr:
        saved = ckptr.metadata(os.path.join(resolve_checkpoint(path), "state")).item_metadata.tree
    return {path_name(k): tuple(v.shape) for k, v in
            jax.tree_util.tree_leaves_with_path(saved) if hasattr(v, "shape")}


def path_name(path) -> str:
    """'params/neck/classifier/kernel' for a tree path, the same whether the tree holds
    namedtuples (optax states) or the dicts/lists Orbax's metadata reads them back as."""
    parts = []
    for p in path:
        for attr in ("key", "name", "idx"):
            if hasattr(p, attr):
                parts.append(str(getattr(p, attr)))
                break
    return "/".join(parts)


def check_restorable(step_dir: str, target: Any) -> None:
    """Raises a ValueError naming every array whose saved shape differs from `target`'s (a
    different model size, number of classes or head), or that exists on one side only."""
    flat_s = saved_shapes(step_dir)
    flat_t = {path_name(k): tuple(v.shape) for k, v in
              jax.tree_util.tree_leaves_with_path(target)}
    problems = [f"{k}: checkpoint {flat_s[k]} vs model {flat_t[k]}"
                for k in sorted(set(flat_s) & set(flat_t)) if flat_s[k] != flat_t[k]]
    problems += [f"{k}: only in the model" for k in sorted(set(flat_t) - set(flat_s))]
    problems += [f"{k}: only in the checkpoint" for k in sorted(set(flat_s) - set(flat_t))]
    if problems:  # model arrays first; the optimizer state mirrors them
        problems.sort(key=lambda p: (p.startswith("opt_state"), p))
        shown = problems[:20] + ([f"... {len(problems) - 20} more"] if len(problems) > 20 else [])
        raise IncompatibleCheckpointError(
            f"{step_dir} does not fit the configured model: " + "; ".join(shown))


class IncompatibleCheckpointError(ValueError):
    """A readable checkpoint whose arrays do not match the model (never a reason to fall back)."""


def set_aside(ckpt: Checkpointer, step: int) -> str:
    """Renames an unreadable step folder to <step>.unreadable[-N] (kept for inspection, never
    deleted) so that the previous checkpoint becomes the latest. Process 0 renames (shared
    file system), every process then re-reads the step list."""
    src = os.path.join(ckpt.directory, str(step))
    dst, n = src + ".unreadable", 1
    while os.path.exists(dst):
        n += 1
        dst = f"{src}.unreadable-{n}"
    if jax.process_index() == 0:
        os.rename(src, dst)
    multihost_sync(f"set_aside_{step}")
    ckpt.manager.reload()
    return dst


def restore_or_initialize(ckpt: Checkpointer, state: Any, data_iter, init_from: str,
                          load_backbone, log=print, warn=print) -> Any:
    """The start order of every stage: 1) resume from this workdir's latest readable checkpoint
    (state and data-iterator position; an unreadable newest one is set aside with a warning and
    the one before it is used), 2) `init_from`: `load_backbone(state, backbone_params)` returns
    the state with the pretrained backbone put in, 3) keep the freshly initialised `state`."""
    target = abstract_state(state)
    ckpt.manager.reload()
    for step in sorted(ckpt.manager.all_steps(), reverse=True):
        step_dir = os.path.join(ckpt.directory, str(step))
        try:
            check_restorable(step_dir, target)
            restored = ckpt.restore(step, target, data_iter)
        except IncompatibleCheckpointError:
            raise
        except Exception as e:  # unreadable / truncated: fall back to the previous one
            moved = set_aside(ckpt, step)
            warn(f"checkpoint {step_dir} is unreadable ({type(e).__name__}: {str(e)[:300]}); "
                 f"moved to {moved}; trying the previous checkpoint")
            continue
        log(f"resumed from {ckpt.directory} at step {step}")
        return restored
    if init_from:
        return load_backbone(state, pretrained_backbone(init_from))
    log("starting from scratch (no checkpoint in the workdir, no init_from)")
    return state


def multihost_sync(name: str) -> None:
    """Barrier across processes (no-op for one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)
