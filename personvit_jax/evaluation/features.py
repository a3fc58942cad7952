"""Test-time embeddings: the one place that turns a ReID model's outputs into retrieval features
(neck side, JPM concatenation, flip-TTA, L2 norm), and batched, sharded extraction over a split."""

from __future__ import annotations

from typing import Callable

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
                     data_cfg, mesh: Mesh, batch_size: int) -> np.ndarray:
    """Features [N, D] of every image of `split`, in split order.

    `embed_fn(images [B, H, W, 3], camids [B]) -> [B, D]` must return a replicated array (each
    process then holds all rows). The split is read in global batches of `batch_size`; the last
    one is padded, and the padding is cut off here.
    """
    out = []
    it = eval_iterator(split, data_cfg, batch_size, jax.process_index(), jax.process_count())
    for batch in it:
        batch.pop("valid")
        g = to_global(batch, mesh)
        out.append(np.asarray(embed_fn(g["images"], g["camids"])))
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
