"""The pretraining network: the one ViT + the iBOT head (student and teacher share this)."""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax

from personvit_jax.models.heads import IBOTHead
from personvit_jax.models.vit import ViT, vit_from_config


class PretrainModel(nn.Module):
    """images [B, H, W, 3] (+ mask [B, N]) -> {cls_feat [B, D], cls_logits [B, K],
    patch_logits [B, N, K]}. Params: {'backbone': ViT, 'head': IBOTHead}."""

    backbone: ViT
    head: IBOTHead

    def __call__(self, images_bhwc: jax.Array, mask_bn: Optional[jax.Array] = None,
                 train: bool = False, with_patches: bool = True) -> dict[str, jax.Array]:
        out = self.backbone(images_bhwc, mask_bn=mask_bn, train=train)
        tokens = out["cls"][:, None]
        if with_patches:  # local crops only need the CLS logits
            tokens = jax.numpy.concatenate([tokens, out["patch"]], axis=1)
        cls_logits, patch_logits = self.head(tokens)
        return {"cls_feat": out["cls"], "cls_logits": cls_logits, "patch_logits": patch_logits}


def pretrain_model_from_config(config, student: bool) -> PretrainModel:
    """Student: drop path as configured; teacher: none (its params are the student's EMA)."""
    h = config.head
    backbone = vit_from_config(config.model, use_mask_token=True,
                               drop_path_rate=config.model.drop_path_rate if student else 0.0)
    head = IBOTHead(out_dim=h.out_dim, patch_out_dim=h.patch_out_dim, hidden_dim=h.hidden_dim,
                    bottleneck_dim=h.bottleneck_dim, shared_head=h.shared_head,
                    learn_last_norm=not h.norm_last_layer)
    return PretrainModel(backbone, head)
