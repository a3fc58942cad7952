"""The ViT's attention core through jax.nn.dot_product_attention: the same function as the
explicit einsum + softmax path it replaced (forward and gradients), the implementation choice
by backend and dtype, and the attention weights built only when asked for."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from personvit_jax.models.vit import (Attention, ViT, attention_implementation,
                                      explicit_attention, fused_attention)

B, N, WIDTH, HEADS = 2, 33, 48, 3  # 1 + 32 tokens, head dim 16


def _reference_attention(params, x_bnd, num_heads):
    """The attention block as it was written before the fused core: qkv projection, heads-major
    [3, B, H, N, hd], einsum logits, float32 softmax, einsum, proj."""
    b, n, d = x_bnd.shape
    hd = d // num_heads
    qkv = x_bnd.reshape(b * n, d) @ params["qkv"]["kernel"] + params["qkv"]["bias"]
    q, k, v = qkv.reshape(b, n, 3, num_heads, hd).transpose(2, 0, 3, 1, 4)
    logits = jnp.einsum("bhqd,bhkd->bhqk", q, k) * (hd ** -0.5)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    out = jnp.einsum("bhqk,bhkd->bhqd", weights, v).transpose(0, 2, 1, 3).reshape(b * n, d)
    return (out @ params["proj"]["kernel"] + params["proj"]["bias"]).reshape(b, n, d)


def _setup(seed=0):
    x = jax.random.normal(jax.random.PRNGKey(seed), (B, N, WIDTH))
    attn = Attention(WIDTH, HEADS)
    params = attn.init(jax.random.PRNGKey(seed + 1), x)["params"]
    # Larger than the 0.02 init, so the softmax is far from uniform and errors would show.
    params = jax.tree.map(lambda p: p * 10.0, params)
    return attn, params, x


def test_fused_core_matches_the_explicit_path_forward_and_gradients_float32():
    attn, params, x = _setup()
    assert attention_implementation(jnp.float32, WIDTH // HEADS) == "xla"  # on this CPU
    # parameter names and shapes as before (converted checkpoints map one to one)
    assert jax.tree.map(jnp.shape, params) == {
        "qkv": {"kernel": (WIDTH, 3 * WIDTH), "bias": (3 * WIDTH,)},
        "proj": {"kernel": (WIDTH, WIDTH), "bias": (WIDTH,)}}
    ref = _reference_attention(params, x, HEADS)
    np.testing.assert_allclose(attn.apply({"params": params}, x), ref, atol=1e-5, rtol=1e-5)

    w = jax.random.normal(jax.random.PRNGKey(9), ref.shape)  # a loss that uses every output
    fused_loss = lambda p, x: jnp.sum(attn.apply({"params": p}, x) * w)
    ref_loss = lambda p, x: jnp.sum(_reference_attention(p, x, HEADS) * w)
    got = jax.grad(fused_loss, argnums=(0, 1))(params, x)
    want = jax.grad(ref_loss, argnums=(0, 1))(params, x)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


def test_fused_and_explicit_cores_agree_on_raw_qkv():
    ks = jax.random.split(jax.random.PRNGKey(3), 3)
    q, k, v = (jax.random.normal(key, (B, N, HEADS, 16)) * 2 for key in ks)
    out, weights = explicit_attention(q, k, v)
    assert weights.shape == (B, HEADS, N, N)
    np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-6)
    np.testing.assert_allclose(fused_attention(q, k, v), out, atol=1e-5, rtol=1e-5)
    # bfloat16 inputs: float32 softmax in both, so they agree to bfloat16 rounding
    qb, kb, vb = (t.astype(jnp.bfloat16) for t in (q, k, v))
    fused_b = fused_attention(qb, kb, vb)
    assert fused_b.dtype == jnp.bfloat16
    np.testing.assert_allclose(fused_b.astype(jnp.float32),
                               explicit_attention(qb, kb, vb)[0].astype(jnp.float32),
                               atol=3e-2, rtol=3e-2)
    np.testing.assert_allclose(fused_b.astype(jnp.float32), out, atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize("backend, dtype, head_dim, want", [
    ("gpu", jnp.bfloat16, 64, "cudnn"), ("gpu", jnp.float16, 32, "cudnn"),
    ("gpu", jnp.float32, 64, "xla"),  # cuDNN flash attention is half precision only
    ("gpu", jnp.bfloat16, 60, "xla"), ("gpu", jnp.bfloat16, 192, "xla"),  # head-dim rule
    ("cuda", jnp.bfloat16, 64, "cudnn"), ("cpu", jnp.bfloat16, 64, "xla"),
    ("tpu", jnp.bfloat16, 64, "xla")])
def test_attention_implementation_by_backend_and_dtype(backend, dtype, head_dim, want):
    assert attention_implementation(dtype, head_dim, backend) == want


def test_attention_weights_only_built_when_intermediates_are_asked_for(monkeypatch):
    from personvit_jax.models import vit as vit_module

    vit = ViT(width=64, depth=2, num_heads=2, patch_size=8, patch_stride=8, pos_grid=(8, 4))
    x = jax.random.normal(jax.random.PRNGKey(4), (2, 64, 32, 3))
    params = vit.init(jax.random.PRNGKey(0), x)["params"]
    out, state = vit.apply({"params": params}, x, mutable=["intermediates"])
    (weights,) = state["intermediates"]["blocks_1"]["attn"]["attention"]
    assert weights.shape == (2, 2, 33, 33)  # [B, H, 1 + N, 1 + N]

    # A plain call (as the train step and feature extraction make it) never runs the explicit
    # path, with or without remat, and gives the same features.
    def no_explicit(*a):
        raise AssertionError("explicit attention in a plain call")

    monkeypatch.setattr(vit_module, "explicit_attention", no_explicit)
    np.testing.assert_allclose(vit.apply({"params": params}, x)["cls"], out["cls"], atol=1e-5)
    remat = ViT(width=64, depth=2, num_heads=2, patch_size=8, patch_stride=8, pos_grid=(8, 4),
                remat=True)
    jax.grad(lambda p: jnp.sum(remat.apply({"params": p}, x, train=True)["cls"]))(params)
    with pytest.raises(ValueError, match="implementation"):
        fused_attention(*(jnp.zeros((1, 4, 2, 8)),) * 3, implementation="flash")


def test_a_refused_cudnn_choice_falls_back_to_xla(monkeypatch):
    """Where JAX refuses cuDNN while tracing (here: no cuDNN on a CPU), the model's own choice
    falls back to XLA; an explicitly forced 'cudnn' still raises."""
    from personvit_jax.models import vit as vit_module

    monkeypatch.setattr(vit_module, "attention_implementation", lambda *a: "cudnn")
    q = jax.random.normal(jax.random.PRNGKey(5), (1, 9, 2, 8)).astype(jnp.bfloat16)
    np.testing.assert_array_equal(fused_attention(q, q, q), fused_attention(q, q, q, "xla"))
    with pytest.raises(RuntimeError, match="cuDNN"):
        fused_attention(q, q, q, "cudnn")
