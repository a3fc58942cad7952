"""Heads on top of the ViT: the ReID BNNeck classifier, TransReID's jigsaw patch module (JPM)
and the iBOT/DINO projection head of pretraining."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from personvit_jax.linalg import l2_normalize
from personvit_jax.models.vit import LN_EPS, Block


class BatchNorm1d(nn.Module):
    """torch.nn.BatchNorm1d with its bias frozen at 0: params {scale [D]}, batch_stats {mean,
    var [D]} (nn.BatchNorm's names). Training normalises with the biased batch variance, and
    the running variance moves towards the UNBIASED one (x B / (B - 1)), as PyTorch's does;
    Flax's nn.BatchNorm keeps the biased one, which differs by 1 / (B - 1) (14% at B = 8)."""

    momentum: float = 0.1  # PyTorch's convention: running = (1 - m) running + m batch
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x_bd: jax.Array, train: bool) -> jax.Array:
        d = x_bd.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (d,), jnp.float32)
        running_mean = self.variable("batch_stats", "mean", jnp.zeros, (d,), jnp.float32)
        running_var = self.variable("batch_stats", "var", jnp.ones, (d,), jnp.float32)
        if train:
            mean = x_bd.mean(0)
            var = jnp.square(x_bd - mean).mean(0)
            if not self.is_initializing():
                n, m = x_bd.shape[0], self.momentum
                running_mean.value = (1 - m) * running_mean.value + m * mean
                running_var.value = (1 - m) * running_var.value + m * var * n / max(n - 1, 1)
        else:
            mean, var = running_mean.value, running_var.value
        return (x_bd - mean) * jax.lax.rsqrt(var + self.epsilon) * scale


class BNNeck(nn.Module):
    """BatchNorm (bias fixed at 0) -> bias-free linear classifier (init std 0.001).

    Returns (feat_bn [B, D], logits [B, C]). The pre-BN feature feeds the triplet loss, the
    post-BN one the ID loss (Luo et al., "Bag of Tricks").
    num_classes = 0: no classifier (label-free training), logits [B, 0].
    """

    num_classes: int

    @nn.compact
    def __call__(self, feat_bd: jax.Array, train: bool = False):
        feat_bn = BatchNorm1d(name="bottleneck")(feat_bd.astype(jnp.float32), train)
        if not self.num_classes:
            return feat_bn, jnp.zeros((feat_bn.shape[0], 0), jnp.float32)
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


class WeightNormDense(nn.Module):
    """Bias-free linear layer with weight normalisation, W = g * v / ||v|| per output unit
    (PyTorch `weight_norm(Linear)`, dim 0). `learn_norm=False` fixes g = 1 (DINO's
    norm_last_layer), which keeps the output scale bounded and stabilises training.

    Params: `weight_v` [in, out]; `weight_g` [1, out] only when the norm is learned.
    """

    features: int
    learn_norm: bool = False

    @nn.compact
    def __call__(self, x_bd: jax.Array) -> jax.Array:
        v = self.param("weight_v", nn.initializers.truncated_normal(stddev=0.02),
                       (x_bd.shape[-1], self.features))
        w = l2_normalize(v, axis=0)  # each prototype (column) a unit vector
        if self.learn_norm:
            w = w * self.param("weight_g", nn.initializers.ones, (1, self.features))
        return x_bd @ w


class IBOTHead(nn.Module):
    """iBOT/DINO projection head applied to every token: 3-layer MLP (GELU) -> bottleneck ->
    L2-normalise -> weight-normalised linear to `out_dim` logits.

    Input tokens [B, T, D] (CLS first); returns (cls_logits [B, out_dim], patch_logits
    [B, T - 1, patch_out_dim]). With `shared_head` the patch tokens go through the same layers
    (iBOT's shared head; then patch_out_dim must equal out_dim); otherwise through their own
    last layer (`last_layer_patch`), sharing the MLP.
    """

    out_dim: int = 8192
    patch_out_dim: int = 8192
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    num_layers: int = 3
    shared_head: bool = True
    learn_last_norm: bool = False

    @nn.compact
    def __call__(self, tokens_btd: jax.Array) -> tuple[jax.Array, jax.Array]:
        if self.shared_head and self.patch_out_dim != self.out_dim:
            raise ValueError(f"a shared head needs patch_out_dim == out_dim, got "
                             f"{self.patch_out_dim} != {self.out_dim}")
        dense = lambda n, name: nn.Dense(n, kernel_init=nn.initializers.truncated_normal(0.02),
                                         name=name)
        b, t, _ = tokens_btd.shape
        # Tokens as rows of one matrix: a single contracting axis for the weight gradients
        # (the fast XLA:CPU matmul path; see vit.Mlp).
        x = tokens_btd.astype(jnp.float32).reshape(b * t, tokens_btd.shape[-1])
        for i in range(self.num_layers - 1):
            x = nn.gelu(dense(self.hidden_dim, f"mlp_{i}")(x), approximate=False)
        x = dense(self.bottleneck_dim, f"mlp_{self.num_layers - 1}")(x)
        x = l2_normalize(x)
        x = x.reshape(b, t, self.bottleneck_dim)
        cls_rows, patch_rows = x[:, 0], x[:, 1:].reshape(b * (t - 1), self.bottleneck_dim)
        last = WeightNormDense(self.out_dim, self.learn_last_norm, name="last_layer")
        patch_last = last if self.shared_head else WeightNormDense(
            self.patch_out_dim, self.learn_last_norm, name="last_layer_patch")
        return last(cls_rows), patch_last(patch_rows).reshape(b, t - 1, patch_last.features)
