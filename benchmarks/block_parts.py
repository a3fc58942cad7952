r"""Where a transformer block's time goes: forward + backward of one ViT block and of its parts,
one JSON line each, with achieved GFLOP/s (XLA's cost analysis), so backends and XLA flags can be
compared on the same shapes.

  python benchmarks/block_parts.py                          # ViT-S, batch 64, 256x128 tokens
  XLA_FLAGS=--xla_cpu_use_onednn=true python benchmarks/block_parts.py   # another CPU path

Parts: the whole `Block`; the attention core (q k^T -> softmax -> p v, heads-major as in
`models/vit.Attention`); the MLP (fc1 -> GELU -> fc2 on token rows); each batched attention
matmul alone (forward only) in the layouts the backward pass needs; and a 2048^3 matmul as the
backend's peak.
"""

import argparse
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from personvit_jax.models.vit import Block, Mlp  # noqa: E402
from train_step import compiled_flops, matmul_peak  # noqa: E402  (this folder)


def report(name, dt, flops):
    print(json.dumps({"part": name, "ms": round(dt * 1e3, 2), "gflop": round(flops / 1e9, 3),
                      "gflop_per_s": round(flops / dt / 1e9, 1),
                      "xla_flags": os.environ.get("XLA_FLAGS", "")}))


def timed(name, fn, args, reps):
    """Median wall time of the jitted fn(*args) and its FLOP rate; prints one JSON line."""
    f = jax.jit(fn)
    jax.block_until_ready(f(*args))
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(f(*args))
        times.append(time.perf_counter() - t)
    report(name, statistics.median(times), compiled_flops(f, *args))


def grad_of(apply):
    """fn(params, x) -> gradient of sum(apply(params, x)^2) w.r.t. params and x."""
    return jax.grad(lambda p, x: jnp.sum(apply(p, x) ** 2), argnums=(0, 1))


def attention_core(q, k, v):
    """[B, H, N, hd] each -> [B, H, N, hd]: the core of `models/vit.Attention`."""
    logits = jnp.einsum("bhqd,bhkd->bhqk", q, k) * (q.shape[-1] ** -0.5)
    return jnp.einsum("bhqk,bhkd->bhqd", jax.nn.softmax(logits, axis=-1), v)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--tokens", type=int, default=129, help="1 + patches (129 at 256x128)")
    p.add_argument("--width", type=int, default=384)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--reps", type=int, default=7)
    a = p.parse_args()
    b, n, d, h = a.batch, a.tokens, a.width, a.heads
    hd = d // h
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((b, n, d)), jnp.float32)

    block = Block(d, h)
    timed("block fwd+bwd", grad_of(block.apply), (block.init(jax.random.PRNGKey(0), x), x),
          a.reps)
    mlp = Mlp(4 * d)
    timed("mlp fwd+bwd", grad_of(mlp.apply), (mlp.init(jax.random.PRNGKey(0), x), x), a.reps)
    qkv = tuple(jnp.asarray(rng.standard_normal((b, h, n, hd)), jnp.float32) for _ in range(3))
    core_grad = jax.grad(lambda q, k, v: jnp.sum(attention_core(q, k, v) ** 2), argnums=(0, 1, 2))
    timed("attention core fwd+bwd", core_grad, qkv, a.reps)
    s = jnp.asarray(rng.standard_normal((b, h, n, n)), jnp.float32)
    q, k, _ = qkv
    for name, eq, args in (("q k^T (bhqd,bhkd->bhqk)", "bhqd,bhkd->bhqk", (q, k)),
                           ("p v (bhqk,bhkd->bhqd)", "bhqk,bhkd->bhqd", (s, k)),
                           ("p^T dO (bhqk,bhqd->bhkd)", "bhqk,bhqd->bhkd", (s, q))):
        timed(name, lambda u, w, eq=eq: jnp.einsum(eq, u, w), args, a.reps)
    peak = matmul_peak(reps=a.reps)  # the reference train_step.py divides by
    report("matmul 2048^3 (peak)", 2 * 2048 ** 3 / peak, 2 * 2048 ** 3)


if __name__ == "__main__":
    main()
