r"""Train-step speed: one JSON line with step time, img/s, achieved FLOP/s and its fraction of a
matmul peak measured on the same backend (and MFU on GPU/TPU when the device peak is known).

  python benchmarks/train_step.py --stage=finetune --model=vit_small --batch=64

Uses the stage's own train step (same jit, shardings and donation) on random 256x128 images.
"""

import argparse
import importlib.util
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

from personvit_jax.models.reid import reid_model_from_config  # noqa: E402
from personvit_jax.stages import finetune  # noqa: E402
from personvit_jax.training import optim, sharding  # noqa: E402

# Dense peak FLOP/s per device for MFU (bf16 / fp32-as-TF32 where the hardware has it).
DEVICE_PEAK = {"NVIDIA H100 80GB HBM3": 989e12, "NVIDIA A100-SXM4-80GB": 312e12,
               "NVIDIA A100-SXM4-40GB": 312e12, "TPU v4": 275e12, "TPU v5 lite": 197e12,
               "TPU v5p": 459e12}


def load_config(name, arg):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "configs", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(arg)


def matmul_peak(n=2048, reps=5) -> float:
    """Median FLOP/s of an n x n x n float32 matmul on the default device."""
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n))
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        f(a).block_until_ready()
        times.append(time.perf_counter() - t)
    return 2 * n ** 3 / statistics.median(times)


def bench_finetune(args):
    config = load_config("finetune", f"model={args.model}")
    config.data.num_instances = 4
    config.data.num_ids_per_batch = args.batch // 4
    h, w = config.data.image_size
    mesh = sharding.make_mesh()
    repl, batch_sh = sharding.replicated(mesh), sharding.batch_sharded(mesh)
    model = reid_model_from_config(config, num_classes=751)
    tx, schedule = optim.make_finetune_optimizer(config.optim, steps_per_epoch=200)
    state = jax.jit(lambda: finetune.init_train_state(model, tx, config, (h, w)),
                    out_shardings=repl)()
    state_sh = jax.tree.map(lambda _: repl, state)
    step = jax.jit(finetune.make_train_step(model, tx, schedule, config),
                   in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, repl),
                   donate_argnums=0)
    rng = np.random.default_rng(0)
    batch = sharding.to_global({
        "images": rng.standard_normal((args.batch, h, w, 3), np.float32),
        "labels": np.repeat(np.arange(args.batch // 4), 4).astype(np.int32),
        "camids": np.zeros(args.batch, np.int32)}, mesh)
    compiled = step.lower(state, batch).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
    return step, state, batch, flops, f"{h}x{w}"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--stage", choices=["finetune"], default="finetune")
    p.add_argument("--model", choices=["vit_tiny", "vit_small", "vit_base"], default="vit_small")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=5, help="timed steps (after 2 warm-up steps)")
    args = p.parse_args()
    if args.batch % 4:
        p.error("--batch must be a multiple of K = 4")

    step, state, batch, flops, size = bench_finetune(args)
    for _ in range(2):
        state, m = step(state, batch)
    jax.block_until_ready(state)
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        state, m = step(state, batch)
        jax.block_until_ready(state)
        times.append(time.perf_counter() - t)
    dt = statistics.median(times)
    peak = matmul_peak()
    dev = jax.devices()[0]
    device_peak = DEVICE_PEAK.get(dev.device_kind)
    print(json.dumps({
        "stage": args.stage, "model": args.model, "batch": args.batch, "image_size": size,
        "backend": jax.default_backend(), "device_kind": dev.device_kind,
        "num_devices": jax.device_count(), "dtype": "float32",
        "step_time_s": round(dt, 4), "img_per_s": round(args.batch / dt, 2),
        "flops_per_step": flops, "achieved_flop_per_s": flops / dt,
        "matmul_peak_flop_per_s": peak, "fraction_of_matmul_peak": round(flops / dt / peak, 3),
        "mfu": round(flops / dt / (device_peak * jax.device_count()), 3) if device_peak else None,
        "timed_steps": args.steps}))


if __name__ == "__main__":
    main()
