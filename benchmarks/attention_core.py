r"""The ViT's attention core on this backend: each implementation's error against a float32
reference and its forward + backward time, one JSON line per (shape, implementation).

  python benchmarks/attention_core.py --batch=256 --tokens=129 --heads=6 --dtype=bfloat16
  python benchmarks/attention_core.py --batch=2 --tokens=17 --heads=2 --head_dim=8 --reps=1

Implementations: `cudnn` and `xla` (jax.nn.dot_product_attention, as models/vit.py's
`fused_attention` calls it) and `explicit` (the einsum + softmax path the attention maps use).
`auto` is what the model picks here (`attention_implementation`). An implementation that does
not run here (cuDNN on CPU, or a shape it refuses) gets a line with its `error`.

Error: ||out - ref|| / ||ref|| for the output and the q, k, v gradients of sum(out * w), with
ref the explicit core in float32 at full matmul precision on the same (rounded) inputs; float32
lands near 1e-6, bf16 near 1e-3 to 1e-2. Time: median of --reps calls of the jitted forward +
backward after one warm-up, on fresh random inputs (never zeros).
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

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from personvit_jax.models.vit import (attention_implementation, explicit_attention,  # noqa: E402
                                      fused_attention)


def core(name: str):
    """[B, N, H, hd] q, k, v -> [B, N, H, hd] for one implementation name ('auto': the
    model's own choice, with its fallback)."""
    if name == "explicit":
        return lambda q, k, v: explicit_attention(q, k, v)[0]
    return lambda q, k, v: fused_attention(q, k, v, None if name == "auto" else name)


def loss_and_grads(fn, q, k, v, w):
    """(output, (dq, dk, dv)) of sum(fn(q, k, v) * w)."""
    out, vjp = jax.vjp(fn, q, k, v)
    return out, vjp(w.astype(out.dtype))


def rel_err(a, ref) -> float:
    a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(a - ref) / np.linalg.norm(ref))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batch", type=int, default=64, help="sequences (images x crops)")
    p.add_argument("--tokens", type=int, default=129, help="1 + patches (256x128 / 16: 129)")
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--head_dim", type=int, default=64)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16")
    p.add_argument("--impls", default="auto,cudnn,xla,explicit")
    p.add_argument("--reps", type=int, default=20)
    args = p.parse_args()

    shape = (args.batch, args.tokens, args.heads, args.head_dim)
    dtype = jnp.dtype(args.dtype)
    ks = jax.random.split(jax.random.PRNGKey(0), 5)
    q, k, v, w = (jax.random.normal(key, shape, jnp.float32) for key in ks[:4])
    q, k, v = (t.astype(dtype) for t in (q, k, v))
    with jax.default_matmul_precision("highest"):
        ref_out, ref_grads = jax.jit(lambda *a: loss_and_grads(core("explicit"), *a))(
            *(t.astype(jnp.float32) for t in (q, k, v)), w)
    auto = attention_implementation(dtype, args.head_dim)  # before cuDNN's own shape checks
    fresh = [tuple(jax.random.normal(key, shape, jnp.float32).astype(dtype) for key in
                   jax.random.split(kk, 3)) for kk in jax.random.split(ks[4], 3)]
    for name in args.impls.split(","):
        row = {"impl": name, "auto_picks": auto, "backend": jax.default_backend(),
               "device_kind": jax.devices()[0].device_kind, "shape_bnhd": list(shape),
               "dtype": args.dtype}
        try:
            fn = jax.jit(lambda *a, c=core(name): loss_and_grads(c, *a))
            out, grads = fn(q, k, v, w)
            row["rel_err_out"] = rel_err(out, ref_out)
            row.update({f"rel_err_d{n}": rel_err(g, r)
                        for n, g, r in zip("qkv", grads, ref_grads)})
            times = []
            for i in range(args.reps):
                qi, ki, vi = fresh[i % len(fresh)]  # rotate inputs: not one cached buffer
                t = time.perf_counter()
                jax.block_until_ready(fn(qi, ki, vi, w))
                times.append(time.perf_counter() - t)
            row["fwd_bwd_ms"] = round(1e3 * statistics.median(times), 3)
            row["finite"] = bool(np.isfinite(np.asarray(out, np.float32)).all())
        except Exception as e:  # noqa: BLE001 -- reported, e.g. cuDNN on a CPU
            row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
