"""Where the CLS token looks: the last block's attention of the CLS token over the patch grid,
per head (the picture DINO / iBOT / PersonViT show to say that heads find body parts).

When the 'intermediates' collection is mutable, every block's attention runs its explicit path
and `sow`s its softmax weights [B, heads, 1 + N, 1 + N] there (models/vit.py, `Attention`);
otherwise it runs the fused core (cuDNN flash attention on GPU), so training and feature
extraction never build them.
"""

from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from personvit_jax import inference
from personvit_jax.data.augment import reid_test_transform
from personvit_jax.models.vit import ViT, grid_size


def cls_attention(vit: ViT, variables: dict, images_bhwc: jax.Array,
                  camids_b: Optional[jax.Array] = None) -> jax.Array:
    """[B, heads, gh, gw]: the last block's attention weights of the CLS token (query row 0)
    over the patch tokens, laid out on the patch grid (row-major, as the tokens). Each head's
    map sums to 1 minus the CLS token's attention to itself."""
    _, state = vit.apply(variables, images_bhwc, camera_ids_b=camids_b, train=False,
                         mutable=["intermediates"])
    weights_bhnn = state["intermediates"][f"blocks_{vit.depth - 1}"]["attn"]["attention"][-1]
    gh, gw = grid_size(images_bhwc.shape[1:3], vit.patch_size, vit.patch_stride)
    b, heads = weights_bhnn.shape[:2]
    return weights_bhnn[:, :, 0, 1:].astype(jnp.float32).reshape(b, heads, gh, gw)


def checkpoint_cls_attention(checkpoint: str, images: Sequence, camids: Optional[Sequence] = None,
                             model_cfg=None, data_cfg=None) -> np.ndarray:
    """CLS attention maps [B, heads, gh, gw] of a checkpoint's ViT for PIL images.

    `checkpoint`: a fine-tune run (its backbone), a pretrain run (its TEACHER backbone), or a
    converted folder, as the evaluate stage accepts (`inference.load_model`: architecture and
    test preprocessing from its saved config.json; `model_cfg` / `data_cfg` fields that are set
    override them). A model with SIE needs the images' camera ids (`camids`, 0-based).
    """
    loaded = inference.load_model(checkpoint, model_cfg, data_cfg)
    if loaded.kind == "reid":
        vit, params = loaded.module.backbone, loaded.variables["params"]["backbone"]
    else:
        vit, params = loaded.module, loaded.variables["params"]
    if loaded.uses_cameras:
        if camids is None:
            raise ValueError(f"{checkpoint}: the model has SIE camera embeddings "
                             f"({loaded.num_cameras} cameras): pass the images' camera ids as "
                             "camids=")
        loaded.check_camera_ids(camids, "camids")
    images_bhwc = np.stack([reid_test_transform(im, loaded.preprocessing) for im in images])
    cams = jnp.asarray(camids, jnp.int32) if loaded.uses_cameras else None
    fn = jax.jit(lambda p, x, c: cls_attention(vit, {"params": p}, x, c))
    return np.asarray(fn(params, jnp.asarray(images_bhwc), cams))
