"""iBOT projection head: weight normalisation, shared CLS/patch layers, shapes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from personvit_jax.models.heads import IBOTHead, WeightNormDense


def test_weight_norm_dense():
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 6))
    layer = WeightNormDense(4)
    v = layer.init(jax.random.PRNGKey(1), x)
    assert set(v["params"]) == {"weight_v"}  # norm fixed at 1: no weight_g
    wv = np.asarray(v["params"]["weight_v"])
    w = wv / np.linalg.norm(wv, axis=0, keepdims=True)
    np.testing.assert_allclose(layer.apply(v, x), np.asarray(x) @ w, rtol=1e-5)
    # scaling v changes nothing: only its direction matters
    v2 = {"params": {"weight_v": 5.0 * v["params"]["weight_v"]}}
    np.testing.assert_allclose(layer.apply(v2, x), layer.apply(v, x), rtol=1e-5)
    learned = WeightNormDense(4, learn_norm=True)
    vg = learned.init(jax.random.PRNGKey(1), x)
    vg["params"]["weight_g"] = jnp.full((1, 4), 2.0)
    np.testing.assert_allclose(learned.apply(vg, x), 2 * np.asarray(x) @ w, rtol=1e-5)


def test_ibot_head_shared_and_separate():
    tokens = jax.random.normal(jax.random.PRNGKey(2), (2, 5, 12))
    head = IBOTHead(out_dim=32, patch_out_dim=32, hidden_dim=16, bottleneck_dim=8)
    v = head.init(jax.random.PRNGKey(0), tokens)
    p = v["params"]
    assert set(p) == {"mlp_0", "mlp_1", "mlp_2", "last_layer"}
    assert p["mlp_2"]["kernel"].shape == (16, 8) and p["last_layer"]["weight_v"].shape == (8, 32)
    cls, patch = head.apply(v, tokens)
    assert cls.shape == (2, 32) and patch.shape == (2, 4, 32)
    # shared: a patch token equal to the CLS token gets the same logits
    same = tokens.at[:, 1].set(tokens[:, 0])
    c2, p2 = head.apply(v, same)
    np.testing.assert_allclose(p2[:, 0], c2, rtol=1e-5, atol=1e-6)
    # logits are bounded: unit bottleneck x unit-norm columns -> |logit| <= 1
    assert float(jnp.max(jnp.abs(cls))) <= 1.0 + 1e-5
    sep = IBOTHead(out_dim=32, patch_out_dim=16, hidden_dim=16, bottleneck_dim=8,
                   shared_head=False)
    vs = sep.init(jax.random.PRNGKey(0), tokens)
    assert vs["params"]["last_layer_patch"]["weight_v"].shape == (8, 16)
    assert sep.apply(vs, tokens)[1].shape == (2, 4, 16)
    with pytest.raises(ValueError, match="patch_out_dim == out_dim"):
        IBOTHead(out_dim=32, patch_out_dim=16).init(jax.random.PRNGKey(0), tokens)
