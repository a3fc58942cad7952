"""Test-time embeddings: the one place that turns a ReID model's outputs into retrieval features
(neck side, JPM concatenation, flip-TTA, L2 norm), and batched, sharded extraction over a split."""

from __future__ import annotations

import os
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from personvit_jax.data.layouts import Split
from personvit_jax.data.pipeline import eval_iterator
from personvit_jax.models.reid import retrieval_embedding
from personvit_jax.training.sharding import to_global


def normalize_rows(x_bd: jax.Array, eps: float = 1e-12) -> jax.Array:
    """Row-wise L2 normalisation inside jit (numpy twin: `evaluation.l2_normalize`)."""
    return x_bd / jnp.maximum(jnp.linalg.norm(x_bd, axis=-1, keepdims=True), eps)


def with_flip(embed_bd: Callable[[jax.Array], jax.Array], flip: bool) -> Callable:
    """Flip test-time augmentation: the mean of the features of the images and their mirrors
    (mirror = reversed width axis of [B, H, W, 3]); identity when `flip` is False."""
    if not flip:
        return embed_bd
    return lambda images_bhwc: 0.5 * (embed_bd(images_bhwc) + embed_bd(images_bhwc[:, :, ::-1]))


def reid_embed_fn(model, eval_cfg, use_cams: bool) -> Callable:
    """(variables, images [B, H, W, 3], camids [B]) -> features [B, D] of a `ReIDModel` (unjitted).

    eval_cfg fields: neck_feat ('before' | 'after' the BNNeck), normalize (L2), flip (TTA; the
    mirror is averaged before normalising, as TransReID/fast-reid do). `use_cams` feeds camera ids
    to the SIE embedding."""
    def embed(variables, images, camids):
        def raw(x):
            out = model.apply(variables, x, camids if use_cams else None, train=False)
            return retrieval_embedding(out, eval_cfg.neck_feat)
        f = with_flip(raw, eval_cfg.get("flip", False))(images)
        return normalize_rows(f) if eval_cfg.normalize else f
    return embed


def extract_features(embed_fn: Callable[[jax.Array, jax.Array], jax.Array], split: Split,
                     data_cfg, mesh: Mesh, batch_size: int,
                     progress: Optional[Callable[[int, int], None]] = None) -> np.ndarray:
    """Features [N, D] of every image of `split`, in split order.

    `embed_fn(images [B, H, W, 3], camids [B]) -> [B, D]` must return a replicated array (each
    process then holds all rows). The split is read in global batches of `batch_size`; the last
    one is padded, and the padding is cut off here. `progress(done, total)` is called after
    each batch (e.g. `progress_printer`).
    """
    out = []
    it = eval_iterator(split, data_cfg, batch_size, jax.process_index(), jax.process_count())
    for batch in it:
        batch.pop("valid")
        g = to_global(batch, mesh)
        out.append(np.asarray(embed_fn(g["images"], g["camids"])))
        if progress is not None:
            progress(min(len(out) * batch_size, len(split)), len(split))
    return np.concatenate(out)[: len(split)]


def checkpoint_embed_fn(path: str, model_cfg, eval_cfg, num_cameras: int = 0):
    """A checkpoint -> (embed(variables, images [B, H, W, 3], camids [B]) -> [B, D] unjitted,
    variables, kind). `model_cfg` must describe the checkpoint's architecture (usually the
    `model` block of its saved config.json, see `checkpointing.saved_config`).

    kind 'reid': the ReID model's retrieval feature (neck side, JPM, SIE as configured);
    kind 'backbone': the ViT's final CLS token (only eval_cfg.neck_feat='before' makes sense).
    Flip-TTA and L2 normalisation follow eval_cfg in both cases.
    """
    from personvit_jax.models.reid import reid_model_from_config
    from personvit_jax.models.vit import vit_from_config
    from personvit_jax.training.checkpointing import inference_variables

    kind, variables = inference_variables(path)
    if kind == "reid":
        num_classes = variables["params"]["neck"]["classifier"]["kernel"].shape[-1]
        model = reid_model_from_config(ml_collections.ConfigDict({"model": model_cfg}),
                                       num_classes, num_cameras)
        return reid_embed_fn(model, eval_cfg, model_cfg.get("sie", False)), variables, kind
    if eval_cfg.neck_feat != "before":
        raise ValueError(f"{path}: a backbone-only checkpoint has no BNNeck; "
                         f"eval.neck_feat={eval_cfg.neck_feat!r} needs a fine-tuned ReID model")
    vit = vit_from_config(model_cfg, num_cameras=0)

    def embed(variables, images, camids):
        del camids
        f = with_flip(lambda x: vit.apply(variables, x, train=False)["cls"],
                      eval_cfg.get("flip", False))(images)
        return normalize_rows(f) if eval_cfg.normalize else f
    return embed, variables, kind


# ---------------------------------------------------------------------------------------------
# From a checkpoint folder to what inference needs: architecture, preprocessing, embed function
# ---------------------------------------------------------------------------------------------


def _set_fields(cfg) -> dict:
    """The fields of a config block the user set (None = not set: take the checkpoint's)."""
    return {k: v for k, v in (cfg.items() if cfg is not None else []) if v is not None}


def resolve_model_config(checkpoint: str, model_cfg, default_model=None
                         ) -> ml_collections.ConfigDict:
    """The architecture to build for `checkpoint`: the `model` block of the run's saved
    config.json, with the fields set in `model_cfg` (non-None) overriding it. Without a saved
    config, `default_model` plus the overrides, which must then at least name the model."""
    from personvit_jax.training.checkpointing import resolve_checkpoint, saved_config

    saved = saved_config(checkpoint)
    given = _set_fields(model_cfg)
    if saved is not None and "model" in saved:
        base = saved.model
    elif "name" in given and default_model is not None:
        base = default_model
    else:
        workdir = os.path.dirname(os.path.dirname(resolve_checkpoint(checkpoint)))
        raise ValueError(
            f"{checkpoint}: no saved config ({os.path.join(workdir, 'config.json')} is missing) "
            "and no model given: pass the architecture, e.g. --config.model.name=vit_small (and "
            "any field that differs from configs/finetune.py, e.g. --config.model.patch_stride=12)")
    out = ml_collections.ConfigDict(base.to_dict())
    out.update(given)
    return out


def resolve_preprocessing(checkpoint: str, data_cfg) -> ml_collections.ConfigDict:
    """Test preprocessing {image_size, mean, std} for `checkpoint`: fields set in `data_cfg`
    win, then the run's saved config (fine-tune `data.image_size`, pretrain `data.global_size`,
    `data.mean` / `data.std`), then PersonViT's 256x128 with mean = std = 0.5."""
    from personvit_jax.training.checkpointing import saved_config

    saved = saved_config(checkpoint)
    sd = saved.get("data", {}) if saved is not None else {}
    given = _set_fields(data_cfg)
    size = given.get("image_size") or sd.get("image_size") or sd.get("global_size") or (256, 128)
    return ml_collections.ConfigDict({
        "image_size": tuple(size),
        "mean": tuple(given.get("mean") or sd.get("mean") or (0.5, 0.5, 0.5)),
        "std": tuple(given.get("std") or sd.get("std") or (0.5, 0.5, 0.5)),
        "num_workers": given.get("num_workers", 0), "prefetch": given.get("prefetch", 2)})


def checkpoint_embedder(config, mesh: Mesh):
    """An evaluate-style config (checkpoint, model / data overrides, default_model, eval) ->
    (embed(images [B, H, W, 3], camids [B]) -> [B, D] jitted on `mesh`, preprocessing data
    config, resolved model config, kind). Shared by the evaluate stage and the extract tool."""
    from personvit_jax.data import layouts
    from personvit_jax.training import sharding
    from personvit_jax.training.checkpointing import saved_config

    model_cfg = resolve_model_config(config.checkpoint, config.model, config.get("default_model"))
    data_cfg = resolve_preprocessing(config.checkpoint, config.data)
    saved = saved_config(config.checkpoint)
    saved_data = saved.get("data", {}).get("name") if saved is not None else None
    num_cams = layouts.num_cameras(saved_data) if saved_data in layouts.DATASETS else 0
    embed, variables, kind = checkpoint_embed_fn(config.checkpoint, model_cfg, config.eval,
                                                 num_cams)
    repl, batch_sh = sharding.replicated(mesh), sharding.batch_sharded(mesh)
    fn = jax.jit(embed, in_shardings=(repl, batch_sh, batch_sh), out_shardings=repl)
    variables = jax.device_put(variables, repl)
    return (lambda images, camids: fn(variables, images, camids)), data_cfg, model_cfg, kind


def progress_printer(label: str, stream=None) -> Callable[[int, int], None]:
    """(done, total) -> one self-overwriting progress line with rate and ETA on stderr."""
    import sys
    import time

    stream = stream or sys.stderr
    t0 = time.perf_counter()

    def show(done: int, total: int) -> None:
        dt = max(time.perf_counter() - t0, 1e-9)
        eta = (total - done) * dt / max(done, 1)
        bar = "#" * int(30 * done / max(total, 1))
        stream.write(f"\r{label} [{bar:<30}] {done}/{total} images, {done / dt:.1f} img/s, "
                     f"ETA {eta:.0f} s")
        if done >= total:
            stream.write("\n")
        stream.flush()
    return show


def write_text(path: str, text: str) -> None:
    """Writes through a temporary file renamed into place (never a half-written file)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def save_npz(path: str, arrays: dict) -> None:
    """np.savez to exactly `path` (no added suffix) through a temporary file."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)
