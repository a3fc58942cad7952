"""Heads on top of the ViT: the ReID BNNeck classifier and TransReID's jigsaw patch module (JPM).

(The iBOT/DINO projection head for pretraining lives here too once the pretraining stage exists.)
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from personvit_jax.models.vit import LN_EPS, Block


class BNNeck(nn.Module):
    """BatchNorm (bias fixed at 0) -> bias-free linear classifier (init std 0.001).

    Returns (feat_bn [B, D], logits [B, C]). The pre-BN feature feeds the triplet loss, the
    post-BN one the ID loss (Luo et al., "Bag of Tricks"). PyTorch momentum 0.1 == Flax 0.9.
    """

    num_classes: int

    @nn.compact
    def __call__(self, feat_bd: jax.Array, train: bool = False):
        feat_bn = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                               use_bias=False, name="bottleneck")(feat_bd.astype(jnp.float32))
        logits = nn.Dense(self.num_classes, use_bias=False, name="classifier",
                          kernel_init=nn.initializers.normal(stddev=0.001))(feat_bn)
        return feat_bn, logits


def shift_and_shuffle(patches_bnd: jax.Array, shift: int, groups: int) -> jax.Array:
    """JPM's patch rearrangement: rotate the patch sequence, then interleave `groups` chunks.

    Example, N = 8, shift = 3, groups = 2: [1..8] -> rotate by shift-1 -> [3 4 5 6 7 8 1 2]
    -> chunks [3 4 5 6], [7 8 1 2] -> interleave -> [3 7 4 8 5 1 6 2]. Each local branch then
    sees patches from all over the body, which makes its feature robust to occlusion.
    """
    b, n, d = patches_bnd.shape
    if n % groups:
        raise ValueError(f"JPM: {n} patches are not divisible into {groups} shuffle groups")
    x = jnp.concatenate([patches_bnd[:, shift - 1:], patches_bnd[:, :shift - 1]], axis=1)
    return x.reshape(b, groups, n // groups, d).transpose(0, 2, 1, 3).reshape(b, n, d)


class JPM(nn.Module):
    """Jigsaw patch module (TransReID): local features from shuffled groups of patches.

    Input: tokens entering the ViT's last block [B, 1 + N, D]. A copy of that block (+ its own
    LayerNorm) runs on [CLS, group_g] for each of `num_groups` groups; output [B, G, D].
    Initialise `block` from the backbone's last block when loading pretrained weights.
    """

    num_heads: int
    num_groups: int = 4
    shift: int = 5
    shuffle_groups: int = 2
    rearrange: bool = True
    drop_path_rate: float = 0.0

    @nn.compact
    def __call__(self, tokens_bnd: jax.Array, train: bool = False) -> jax.Array:
        b, n1, d = tokens_bnd.shape
        cls, patches = tokens_bnd[:, :1], tokens_bnd[:, 1:]
        if self.rearrange:
            patches = shift_and_shuffle(patches, self.shift, self.shuffle_groups)
        g = self.num_groups
        per_group = (n1 - 1) // g  # TransReID drops the remainder patches
        patches = patches[:, : per_group * g].reshape(b, g, per_group, d)
        cls = jnp.broadcast_to(cls[:, None], (b, g, 1, d))
        x = jnp.concatenate([cls, patches], axis=2).reshape(b * g, per_group + 1, d)
        x = Block(d, self.num_heads, 4.0, self.drop_path_rate, name="block")(x, train)
        x = nn.LayerNorm(epsilon=LN_EPS, name="norm")(x[:, 0])
        return x.reshape(b, g, d)
