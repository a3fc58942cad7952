"""The fine-tuning model: ViT backbone + BNNeck (+ optional JPM local branches)."""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from personvit_jax.models.heads import JPM, BNNeck
from personvit_jax.models.vit import ViT, vit_from_config


class ReIDModel(nn.Module):
    """Outputs, with S = 1 branch (global) or 1 + jpm_groups branches (global first):

      feats    [B, S, D]  pre-BN features (triplet loss, default test feature)
      feats_bn [B, S, D]  post-BN features
      logits   [B, S, C]  ID classifier logits
    """

    backbone: ViT
    num_classes: int
    jpm: bool = False
    jpm_groups: int = 4
    jpm_shift: int = 5
    jpm_shuffle_groups: int = 2
    jpm_rearrange: bool = True

    @nn.compact
    def __call__(self, images_bhwc: jax.Array, camera_ids_b: Optional[jax.Array] = None,
                 train: bool = False) -> dict[str, jax.Array]:
        out = self.backbone(images_bhwc, camera_ids_b=camera_ids_b, train=train,
                            return_pre_last=self.jpm)
        feats = [out["cls"]]
        if self.jpm:
            local_bgd = JPM(self.backbone.num_heads, self.jpm_groups, self.jpm_shift,
                            self.jpm_shuffle_groups, self.jpm_rearrange,
                            self.backbone.drop_path_rate, name="jpm")(out["pre_last"], train)
            feats += [local_bgd[:, g] for g in range(self.jpm_groups)]
        feats_bn, logits = [], []
        for i, f in enumerate(feats):
            name = "neck" if i == 0 else f"neck_{i}"
            f_bn, lg = BNNeck(self.num_classes, name=name)(f, train)
            feats_bn.append(f_bn)
            logits.append(lg)
        return {"feats": jnp.stack(feats, 1).astype(jnp.float32),
                "feats_bn": jnp.stack(feats_bn, 1), "logits": jnp.stack(logits, 1)}


def retrieval_embedding(outputs: dict[str, jax.Array], neck_feat: str = "before") -> jax.Array:
    """The retrieval feature [B, D * S]: the global feature, and with JPM the local ones / G
    concatenated (TransReID). `neck_feat` picks the feature 'before' or 'after' the BNNeck
    (checked with the config: validation.check_eval_block)."""
    f = outputs["feats_bn"] if neck_feat == "after" else outputs["feats"]
    s = f.shape[1]
    if s == 1:
        return f[:, 0]
    return jnp.concatenate([f[:, 0]] + [f[:, i] / (s - 1) for i in range(1, s)], axis=-1)


def reid_model_from_config(config, num_classes: int, num_cameras: int = 0) -> ReIDModel:
    """Assembles the ReID model of a fine-tune / evaluate config."""
    m = config.model
    backbone = vit_from_config(m, num_cameras=num_cameras if m.sie else 0, sie_coef=m.sie_coef)
    return ReIDModel(backbone=backbone, num_classes=num_classes, jpm=m.jpm,
                     jpm_groups=m.jpm_groups, jpm_shift=m.jpm_shift,
                     jpm_shuffle_groups=m.jpm_shuffle_groups, jpm_rearrange=m.jpm_rearrange)
