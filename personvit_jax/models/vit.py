"""The one Vision Transformer of the project (Flax Linen, pure functional).

Both stages use this module unchanged:
  * fine-tuning reads the CLS token (and, for JPM, the tokens entering the last block);
  * pretraining feeds masked global crops (mask token) and unmasked local crops of another
    resolution (the position embedding is resized on the fly).

Shapes: images [B, H, W, 3] (NHWC, float); tokens [B, 1 + N, D] with N = gh * gw patches in
row-major order over the patch grid (gh rows, gw columns), CLS first.

Parameter layout follows the PyTorch ViT (timm / TransReID / iBOT) one to one, so converted
checkpoints map key by key: `patch_embed` (conv kernel HWIO), `cls_token`, `pos_embed` (stored for
`pos_grid`), `blocks_{i}/{norm1, attn/qkv, attn/proj, norm2, mlp/fc1, mlp/fc2}`, `norm`, and the
optional `mask_token` (iBOT's `masked_embed`) and `sie_embed` (TransReID's camera embedding).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# width, depth, heads of the standard sizes (MLP ratio 4 for all).
VIT_SIZES = {
    "vit_tiny": dict(width=192, depth=12, num_heads=3),
    "vit_small": dict(width=384, depth=12, num_heads=6),
    "vit_base": dict(width=768, depth=12, num_heads=12),
}

LN_EPS = 1e-6  # timm / TransReID ViT LayerNorm epsilon
_dense_init = nn.initializers.truncated_normal(stddev=0.02)


def grid_size(image_hw: Sequence[int], patch_size: int, stride: int) -> tuple[int, int]:
    """Patch-grid rows and columns for an image of `image_hw` (valid convolution)."""
    h, w = image_hw
    if h < patch_size or w < patch_size:
        raise ValueError(f"image size {tuple(image_hw)} is smaller than the patch size {patch_size}")
    return (h - patch_size) // stride + 1, (w - patch_size) // stride + 1


def resize_pos_embed(pos_grid_hwd: jax.Array, new_hw: Sequence[int],
                     method: str = "bilinear") -> jax.Array:
    """Resizes a [gh, gw, D] position-embedding grid to [new_h, new_w, D].

    bilinear: no antialiasing and half-pixel centres, the same numbers as PyTorch's
      `F.interpolate(size=new_hw, mode="bilinear", align_corners=False)` that TransReID /
      PersonViT use, so a converted checkpoint evaluated at another grid gives the original's
      features.
    bicubic: iBOT/DINO's `interpolate_pos_encoding` for pretraining crops of another size:
      `F.interpolate(scale_factor=(new + 0.1) / old, mode="bicubic")` per axis (their +0.1
      guards the output size against rounding down; the kernel samples at that scale).
    """
    if tuple(pos_grid_hwd.shape[:2]) == tuple(new_hw):
        return pos_grid_hwd
    if method == "bicubic":
        (gh, gw), (nh, nw) = pos_grid_hwd.shape[:2], new_hw
        rows = jnp.asarray(_torch_bicubic_matrix(gh, nh, (nh + 0.1) / gh), pos_grid_hwd.dtype)
        cols = jnp.asarray(_torch_bicubic_matrix(gw, nw, (nw + 0.1) / gw), pos_grid_hwd.dtype)
        return jnp.einsum("oh,hwd,pw->opd", rows, pos_grid_hwd, cols)
    if method != "bilinear":
        raise ValueError(f"position-embedding interpolation {method!r}: expected 'bilinear' or "
                         f"'bicubic'")
    new_shape = (int(new_hw[0]), int(new_hw[1]), pos_grid_hwd.shape[-1])
    return jax.image.resize(pos_grid_hwd, new_shape, method="bilinear", antialias=False)


def _torch_bicubic_matrix(in_size: int, out_size: int, scale: float) -> np.ndarray:
    """[out, in] float64 weights of PyTorch's bicubic upsampling along one axis (cubic
    convolution with A = -0.75, align_corners=False, source x = (o + 0.5) / scale - 0.5,
    neighbour indices clamped to the border)."""
    a = -0.75
    near = lambda x: ((a + 2) * x - (a + 3)) * x * x + 1  # |x| <= 1
    far = lambda x: ((a * x - 5 * a) * x + 8 * a) * x - 4 * a  # 1 < |x| < 2
    m = np.zeros((out_size, in_size))
    for o in range(out_size):
        x = (o + 0.5) / scale - 0.5
        i = min(int(np.floor(x)), in_size - 1)
        t = min(max(x - i, 0.0), 1.0)
        for k, w in zip((-1, 0, 1, 2), (far(t + 1), near(t), near(1 - t), far(2 - t))):
            m[o, min(max(i + k, 0), in_size - 1)] += w
    return m


class PatchEmbed(nn.Module):
    """Image -> patch tokens [B, gh, gw, D] with a (possibly overlapping) strided patch conv."""

    width: int
    patch_size: int = 16
    stride: int = 16
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images_bhwc: jax.Array) -> jax.Array:
        p, s = self.patch_size, self.stride
        c = images_bhwc.shape[-1]
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (p, p, c, self.width))
        bias = self.param("bias", nn.initializers.zeros, (self.width,))
        x = images_bhwc.astype(self.dtype)
        kernel = kernel.astype(self.dtype)
        gh, gw = grid_size(x.shape[1:3], p, s)
        if s == p:
            # Non-overlapping patches: one [B*N, p*p*C] x [p*p*C, D] matmul, far faster than a
            # convolution on CPU and identical in value. Flattening order (row, col, channel)
            # matches the HWIO kernel reshaped to [p*p*C, D].
            b = x.shape[0]
            x = x[:, : gh * p, : gw * p]
            x = x.reshape(b, gh, p, gw, p, c).transpose(0, 1, 3, 2, 4, 5)
            x = x.reshape(b, gh, gw, p * p * c) @ kernel.reshape(p * p * c, self.width)
        else:
            # Overlapping patches (TransReID's stride < patch): a strided convolution.
            x = jax.lax.conv_general_dilated(
                x, kernel, (s, s), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return x + bias.astype(self.dtype)


def attention_implementation(dtype: Any, head_dim: int, backend: Optional[str] = None) -> str:
    """The `jax.nn.dot_product_attention` implementation for this backend and compute dtype.

    'cudnn' (cuDNN's flash attention: no [B, H, N, N] logits in memory, forward or backward) on
    a GPU in bfloat16 / float16 with a head dim cuDNN's flash kernels take (a multiple of 8, at
    most 128; ViT-S/B have 64); else 'xla' (the einsum + float32 softmax reference, also on CPU).
    """
    backend = backend or jax.default_backend()
    half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    if backend in ("gpu", "cuda") and half and head_dim % 8 == 0 and head_dim <= 128:
        return "cudnn"
    return "xla"


def fused_attention(q_bnhd: jax.Array, k_bnhd: jax.Array, v_bnhd: jax.Array,
                    implementation: Optional[str] = None) -> jax.Array:
    """softmax(q k^T / sqrt(hd)) v per head, [B, N, H, hd] in and out, through
    `jax.nn.dot_product_attention` (softmax in float32 in either implementation).

    `implementation=None` picks one with `attention_implementation`. JAX checks cuDNN's own
    rules (sequence lengths by version; cuDNN present at all, e.g. not on ROCm) while tracing;
    what they refuse falls back to 'xla': slower, not an error.
    """
    impl = implementation or attention_implementation(q_bnhd.dtype, q_bnhd.shape[-1])
    if impl == "cudnn" and implementation is None:
        try:
            return jax.nn.dot_product_attention(q_bnhd, k_bnhd, v_bnhd, implementation="cudnn")
        except (NotImplementedError, RuntimeError):  # JAX's refusals, raised before any run
            impl = "xla"
    return jax.nn.dot_product_attention(q_bnhd, k_bnhd, v_bnhd, implementation=impl)


def explicit_attention(q_bnhd: jax.Array, k_bnhd: jax.Array, v_bnhd: jax.Array
                       ) -> tuple[jax.Array, jax.Array]:
    """The same attention written out: (output [B, N, H, hd], softmax weights [B, H, N, N]),
    for the attention maps. Softmax in float32; weights in the inputs' dtype."""
    scale = q_bnhd.shape[-1] ** -0.5
    logits = jnp.einsum("bqhd,bkhd->bhqk", q_bnhd, k_bnhd,
                        preferred_element_type=jnp.float32) * scale
    weights = jax.nn.softmax(logits, axis=-1).astype(v_bnhd.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", weights, v_bnhd), weights


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection ([D] -> [3, heads, head_dim]).

    The core is `fused_attention` (cuDNN flash attention on GPU in bf16). Only when the
    'intermediates' collection is mutable (evaluation/attention.py asks for it) does it run
    `explicit_attention` instead and sow the softmax weights [B, H, N, N] as 'attention':
    training and feature extraction never build them.

    Attributes:
      implementation: force 'xla' / 'cudnn' for the fused core (None: by backend and dtype).
    """

    width: int
    num_heads: int
    dtype: Any = jnp.float32
    implementation: Optional[str] = None

    @nn.compact
    def __call__(self, x_bnd: jax.Array) -> jax.Array:
        b, n, d = x_bnd.shape
        head_dim = d // self.num_heads
        qkv = nn.Dense(3 * d, dtype=self.dtype, kernel_init=_dense_init, name="qkv")(
            x_bnd.reshape(b * n, d))  # token rows: see `Mlp`
        # PyTorch layout of the fused output: (3, heads, head_dim); q, k, v [B, N, H, hd] are
        # plain slices of it, the layout dot_product_attention takes.
        qkv = qkv.reshape(b, n, 3, self.num_heads, head_dim)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        if self.is_mutable_collection("intermediates"):
            out, weights = explicit_attention(q, k, v)
            self.sow("intermediates", "attention", weights)  # [B, H, N, N]
        else:
            out = fused_attention(q, k, v, self.implementation)
        return nn.Dense(d, dtype=self.dtype, kernel_init=_dense_init, name="proj")(
            out.reshape(b * n, d)).reshape(b, n, d)


class Mlp(nn.Module):
    """[..., D] -> fc1 -> GELU -> fc2 -> [..., D], applied to the tokens as rows of one matrix.

    Flattening [B, N, D] to [B*N, D] first gives the weight gradient a single contracting axis:
    with two (batch and token), XLA:CPU transposes the output gradient and leaves its fast
    matmul path (measured: fc1 forward + backward 264 ms -> 121 ms at 64 x 129 tokens of 384).
    """

    hidden: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        x = nn.Dense(self.hidden, dtype=self.dtype, kernel_init=_dense_init, name="fc1")(x)
        x = nn.gelu(x, approximate=False)  # exact erf GELU, as the PyTorch originals
        x = nn.Dense(shape[-1], dtype=self.dtype, kernel_init=_dense_init, name="fc2")(x)
        return x.reshape(shape)


def drop_path(x_bnd: jax.Array, rate: float, rng: Optional[jax.Array]) -> jax.Array:
    """Stochastic depth: drops the residual branch of whole samples with probability `rate`."""
    if rate == 0.0 or rng is None:
        return x_bnd
    keep = jax.random.bernoulli(rng, 1.0 - rate, (x_bnd.shape[0],) + (1,) * (x_bnd.ndim - 1))
    return jnp.where(keep, x_bnd / (1.0 - rate), jnp.zeros_like(x_bnd))


class Block(nn.Module):
    """Pre-norm transformer block: x + DropPath(Attn(LN(x))); x + DropPath(MLP(LN(x)))."""

    width: int
    num_heads: int
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_bnd: jax.Array, train: bool = False) -> jax.Array:
        def branch_rng():
            if train and self.drop_path_rate > 0:
                return self.make_rng("dropout")
            return None

        ln = lambda name: nn.LayerNorm(epsilon=LN_EPS, dtype=jnp.float32, name=name)
        y = ln("norm1")(x_bnd).astype(self.dtype)
        y = Attention(self.width, self.num_heads, self.dtype, name="attn")(y)
        x_bnd = x_bnd + drop_path(y, self.drop_path_rate, branch_rng())
        y = ln("norm2")(x_bnd).astype(self.dtype)
        y = Mlp(int(self.width * self.mlp_ratio), self.dtype, name="mlp")(y)
        return x_bnd + drop_path(y, self.drop_path_rate, branch_rng())


class ViT(nn.Module):
    """ViT returning the normalised CLS [B, D] and patch tokens [B, N, D].

    Attributes:
      pos_grid: the patch grid (rows, cols) the position embedding is stored for; inputs with
        another grid (other resolution or stride) get a resized copy (`resize_pos_embed` with
        `pos_interp`: bilinear as TransReID, or bicubic as iBOT's pretraining).
      use_mask_token: adds a learned `mask_token` that replaces masked patch embeddings (iBOT).
      num_cameras: > 0 adds TransReID's side-information embedding (SIE) per camera, scaled by
        `sie_coef` and added to every token.
      remat: recompute each block in the backward pass (saves activation memory).
    """

    width: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    patch_size: int = 16
    patch_stride: int = 16
    pos_grid: Sequence[int] = (16, 8)
    pos_interp: str = "bilinear"
    drop_path_rate: float = 0.0
    use_mask_token: bool = False
    num_cameras: int = 0
    sie_coef: float = 3.0
    remat: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images_bhwc: jax.Array, *, mask_bn: Optional[jax.Array] = None,
                 camera_ids_b: Optional[jax.Array] = None, train: bool = False,
                 return_pre_last: bool = False) -> dict[str, jax.Array]:
        d = self.width
        x = PatchEmbed(d, self.patch_size, self.patch_stride, self.dtype, name="patch_embed")(
            images_bhwc)
        b, gh, gw, _ = x.shape
        x = x.reshape(b, gh * gw, d).astype(jnp.float32)

        if self.use_mask_token:
            mask_token = self.param("mask_token", nn.initializers.zeros, (1, 1, d))
            if mask_bn is not None:
                x = jnp.where(mask_bn[..., None], mask_token, x)
        elif mask_bn is not None:
            raise ValueError("a mask was given to a ViT built with use_mask_token=False")

        cls_token = self.param("cls_token", _dense_init, (1, 1, d))
        pos = self.param("pos_embed", _dense_init, (1, 1 + self.pos_grid[0] * self.pos_grid[1], d))
        pos_patches = resize_pos_embed(pos[0, 1:].reshape(*self.pos_grid, d), (gh, gw),
                                       self.pos_interp)
        x = jnp.concatenate([jnp.broadcast_to(cls_token, (b, 1, d)), x], axis=1)
        x = x + jnp.concatenate([pos[:, :1], pos_patches.reshape(1, gh * gw, d)], axis=1)

        if self.num_cameras > 0:
            sie = self.param("sie_embed", _dense_init, (self.num_cameras, 1, d))
            if camera_ids_b is None:
                raise ValueError("this ViT has SIE (num_cameras > 0) and needs camera_ids_b")
            x = x + self.sie_coef * sie[camera_ids_b]

        block_cls = nn.remat(Block, static_argnums=(2,)) if self.remat else Block
        pre_last = None
        for i in range(self.depth):
            rate = self.drop_path_rate * i / max(self.depth - 1, 1)  # linear over depth
            if i == self.depth - 1:
                pre_last = x
            x = block_cls(d, self.num_heads, self.mlp_ratio, rate, self.dtype,
                          name=f"blocks_{i}")(x, train)
        x = nn.LayerNorm(epsilon=LN_EPS, dtype=jnp.float32, name="norm")(x)
        out = {"cls": x[:, 0], "patch": x[:, 1:]}
        if return_pre_last:
            out["pre_last"] = pre_last  # [B, 1 + N, D], the input of the last block (for JPM)
        return out


def vit_from_config(model_cfg, **overrides) -> ViT:
    """Builds the ViT from a config's `model` block (`name` picks width/depth/heads)."""
    if model_cfg.name not in VIT_SIZES:
        raise ValueError(f"config.model.name={model_cfg.name!r}: expected one of {sorted(VIT_SIZES)}")
    size = dict(VIT_SIZES[model_cfg.name])
    for key in ("width", "depth", "num_heads"):  # 0 = the standard size
        if model_cfg[key]:
            size[key] = model_cfg[key]
    kwargs = dict(
        mlp_ratio=4.0,
        patch_size=model_cfg.patch_size,
        patch_stride=model_cfg.patch_stride,
        pos_grid=tuple(model_cfg.pos_grid),
        pos_interp=model_cfg.pos_interp,
        drop_path_rate=model_cfg.drop_path_rate,
        remat=model_cfg.remat,
        dtype=jnp.bfloat16 if model_cfg.compute_dtype == "bfloat16" else jnp.float32,
        **size,
    )
    kwargs.update(overrides)
    return ViT(**kwargs)
