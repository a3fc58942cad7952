"""The one L2 normalisation of the package (features, head bottlenecks, cluster centres,
weight-normed prototypes), for NumPy and JAX arrays alike."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def l2_normalize(x, axis: int = -1, eps: float = 1e-12):
    """x / max(|x|, eps) along `axis` (rows of [..., D] by default; a zero row stays zero).
    A jax.Array (traced ones included) gives a jax.Array; anything else is computed in NumPy
    in its own dtype."""
    xp = jnp if isinstance(x, jax.Array) else np
    return x / xp.maximum(xp.linalg.norm(x, axis=axis, keepdims=True), eps)
