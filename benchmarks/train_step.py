r"""Train-step speed: one JSON line with step time, img/s, achieved FLOP/s and its fraction of a
matmul peak measured on the same backend (and MFU on GPU/TPU when the device peak is known).

  python benchmarks/train_step.py --stage=finetune --model=vit_small --batch=64
  python benchmarks/train_step.py --stage=pretrain --model=vit_small --batch=16
  python benchmarks/train_step.py --stage=pretrain --model=vit_base --batch=256 \
      --dtype=bfloat16 --fsdp=-1 --remat --accum=2          # e.g. on an 8-GPU host

Uses the stage's own train step (same sharded state, jit and donation) on random inputs:
fine-tune 256x128 images; pretrain 2 global 256x128 + 8 local 128x64 crops per image, iBOT head
8192. --data/--fsdp give the mesh (as config.mesh), --dtype the compute dtype, --remat block
rematerialisation, --accum gradient-accumulation micro-batches. The batch is global.
MFU is against --peak_tflops (default: the datasheet dense bf16 / TF32 peak of known devices);
`fraction_of_matmul_peak` against an n x n x n matmul timed here (--matmul_n; default 2048 on
CPU, 8192 on an accelerator, where smaller ones leave it partly idle).
"""

import argparse
import ast
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

from personvit_jax import reid_state  # noqa: E402
from personvit_jax.config_args import load_config  # noqa: E402
from personvit_jax.data import color_augment  # noqa: E402
from personvit_jax.models.reid import reid_model_from_config  # noqa: E402
from personvit_jax.models.pretrain import pretrain_model_from_config  # noqa: E402
from personvit_jax.models.vit import VIT_SIZES, attention_implementation, grid_size  # noqa: E402
from personvit_jax.stages import finetune, pretrain  # noqa: E402
from personvit_jax.training import optim, sharding  # noqa: E402

# Dense peak FLOP/s per device for MFU (bf16 / fp32-as-TF32 where the hardware has it).
DEVICE_PEAK = {"NVIDIA H100 80GB HBM3": 989e12, "NVIDIA H200": 989e12,
               "NVIDIA A100-SXM4-80GB": 312e12, "NVIDIA A100-SXM4-40GB": 312e12, "TPU v4": 275e12,
               "TPU v5 lite": 197e12, "TPU v5p": 459e12}


def matmul_peak(dtype="float32", n=2048, reps=5) -> float:
    """Median FLOP/s of an n x n x n matmul in `dtype` on the default device."""
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), dtype)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        f(a).block_until_ready()
        times.append(time.perf_counter() - t)
    return 2 * n ** 3 / statistics.median(times)


def apply_args(config, args):
    """The command-line layout / precision / memory options, as the config fields they set,
    then the --set overrides."""
    config.mesh.data, config.mesh.fsdp = args.data, args.fsdp
    config.model.compute_dtype = args.dtype
    config.model.remat = args.remat
    config.optim.accum_steps = args.accum
    for item in args.set:
        key, _, value = item.partition("=")
        node, *path = config, *key.split(".")
        for name in path[:-1]:
            node = node[name]
        try:
            node[path[-1]] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            node[path[-1]] = value  # a bare string
    return config


def head_dim(model_cfg) -> int:
    """Attention head width of a config's model (0 fields = the standard size)."""
    size = VIT_SIZES[model_cfg.name]
    return (model_cfg.width or size["width"]) // (model_cfg.num_heads or size["num_heads"])


def bench_finetune(args):
    config = apply_args(load_config("finetune", f"model={args.model}"), args)
    config.data.num_instances = 4
    config.data.num_ids_per_batch = args.batch // 4
    h, w = config.data.image_size
    mesh = sharding.make_mesh(config.mesh)
    optim.check_accum_steps(args.batch, args.accum, 4, mesh.devices.size, "--batch",
                            min_groups=2)
    model = reid_model_from_config(config, num_classes=751)
    tx, schedule = optim.make_finetune_optimizer(config.optim, steps_per_epoch=200)
    state, state_sh = sharding.init_sharded(
        lambda: reid_state.init_train_state(model, tx, config, (h, w)), mesh, config.mesh)
    step = sharding.jit_train_step(finetune.make_train_step(model, tx, schedule, config),
                                   state_sh, mesh)
    rng = np.random.default_rng(0)
    batch = sharding.to_global({
        "images": rng.standard_normal((args.batch, h, w, 3), np.float32),
        "labels": np.repeat(np.arange(args.batch // 4), 4).astype(np.int32),
        "camids": np.zeros(args.batch, np.int32)}, mesh)
    return step, state, batch, _flops(step, state, batch), f"{h}x{w}", config


def bench_pretrain(args):
    config = apply_args(load_config("pretrain", f"model={args.model}"), args)
    config.data.batch_size = args.batch
    d = config.data
    (h, w), (lh, lw) = d.global_size, d.local_size
    mesh = sharding.make_mesh(config.mesh)
    optim.check_accum_steps(args.batch, args.accum, 1, mesh.devices.size, "--batch")
    student = pretrain_model_from_config(config, student=True)
    teacher = pretrain_model_from_config(config, student=False)
    params = jax.eval_shape(lambda: student.init(jax.random.PRNGKey(0),
                                                 jnp.zeros((1, h, w, 3)))["params"])
    tx, schedules = pretrain.make_optimizer(config, params, args.batch, 1000)
    state, state_sh = sharding.init_sharded(
        lambda: pretrain.init_pretrain_state(student, tx, config), mesh, config.mesh)
    step = sharding.jit_train_step(
        pretrain.make_pretrain_step(student, teacher, tx, schedules, config), state_sh, mesh)
    rng = np.random.default_rng(0)
    n = grid_size(d.global_size, config.model.patch_size, config.model.patch_stride)
    # uint8 views and colour parameters drawn as the pipeline draws them (the colour
    # augmentation runs in the step)
    colors = lambda v, blur: np.stack([[color_augment.draw_params(rng, d, blur, 0.2)
                                        for _ in range(v)] for _ in range(args.batch)])
    batch = sharding.to_global({
        "global": rng.integers(0, 256, (args.batch, 2, h, w, 3), np.uint8),
        "local": rng.integers(0, 256, (args.batch, d.num_local_crops, lh, lw, 3), np.uint8),
        "global_color": colors(2, 1.0), "local_color": colors(d.num_local_crops, 0.5),
        "masks": rng.random((args.batch, 2, n[0] * n[1])) < 0.15}, mesh)
    size = f"2x{h}x{w}+{d.num_local_crops}x{lh}x{lw}"
    return step, state, batch, _flops(step, state, batch), size, config


def compiled_flops(jitted, *args) -> float:
    """FLOPs of one call of a jitted function, from XLA's cost analysis of the compiled
    program (one device's share when it is partitioned; nan if the backend gives none)."""
    cost = jitted.lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", float("nan"))) if cost else float("nan")


def _flops(step, state, batch) -> float:
    """FLOPs of one step over all devices (with --remat, including the recomputed forward
    passes). Compiles the step (the jitted call below reuses this executable)."""
    n_devices = jax.tree.leaves(state)[0].sharding.mesh.devices.size
    return compiled_flops(step, state, batch) * n_devices


def step_mesh(state):
    """The (data, fsdp) mesh the state lives on."""
    return jax.tree.leaves(state)[0].sharding.mesh.shape


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--stage", choices=["finetune", "pretrain"], default="finetune")
    p.add_argument("--model", choices=["vit_tiny", "vit_small", "vit_base"], default="vit_small")
    p.add_argument("--batch", type=int, default=None,
                   help="images per step (default: 64 fine-tune, 16 pretrain)")
    p.add_argument("--steps", type=int, default=5, help="timed steps (after 2 warm-up steps)")
    p.add_argument("--data", type=int, default=-1, help="mesh `data` axis (-1 = the rest)")
    p.add_argument("--fsdp", type=int, default=1, help="mesh `fsdp` axis (-1 = the rest)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="compute dtype (parameters and optimizer state stay float32)")
    p.add_argument("--remat", action="store_true", help="rematerialise transformer blocks")
    p.add_argument("--accum", type=int, default=1, help="gradient-accumulation micro-batches")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. --set model.depth=2 --set 'data.image_size=(64,32)'"
                        " (tiny runs; the JSON line then describes the changed model)")
    p.add_argument("--peak_tflops", type=float, default=None,
                   help="per-device peak for `mfu` (default: DEVICE_PEAK of the device, "
                        "e.g. the H100/H200 datasheet's 989 dense bf16)")
    p.add_argument("--matmul_n", type=int, default=None,
                   help="size of the matmul whose speed is the measured peak (default: 2048 on "
                        "CPU, 8192 elsewhere)")
    args = p.parse_args()
    if args.batch is None:
        args.batch = 64 if args.stage == "finetune" else 16
    if args.stage == "finetune" and args.batch % 4:
        p.error("--batch must be a multiple of K = 4")

    bench = bench_finetune if args.stage == "finetune" else bench_pretrain
    t = time.perf_counter()
    step, state, batch, flops, size, config = bench(args)
    setup_s = time.perf_counter() - t  # state init + step compilation
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
    dev = jax.devices()[0]
    n_dev = jax.tree.leaves(state)[0].sharding.mesh.devices.size
    # Fake CPU devices share the same cores: the CPU peak is that of the whole host.
    cpu = jax.default_backend() == "cpu"
    n = args.matmul_n or (2048 if cpu else 8192)
    peak = matmul_peak(args.dtype, n=n) * (1 if cpu else n_dev)
    device_peak = args.peak_tflops * 1e12 if args.peak_tflops else DEVICE_PEAK.get(dev.device_kind)
    print(json.dumps({
        "stage": args.stage, "model": args.model, "batch": args.batch, "image_size": size,
        "backend": jax.default_backend(), "device_kind": dev.device_kind,
        "num_devices": jax.device_count(), "mesh": dict(step_mesh(state)), "dtype": args.dtype,
        "remat": args.remat, "accum_steps": args.accum,
        "step_time_s": round(dt, 4), "img_per_s": round(args.batch / dt, 2),
        "flops_per_step": flops, "achieved_flop_per_s": flops / dt,
        "achieved_tflop_per_s": round(flops / dt / 1e12, 2),
        "matmul_peak_flop_per_s": peak, "matmul_n": n, "flops_include_remat": args.remat,
        "fraction_of_matmul_peak": round(flops / dt / peak, 3),
        "peak_flop_per_s": device_peak,
        "mfu": round(flops / dt / (device_peak * n_dev), 3) if device_peak else None,
        "attention": attention_implementation(jnp.dtype(args.dtype), head_dim(config.model)),
        "setup_s": round(setup_s, 1), "timed_steps": args.steps,
        **({"overrides": args.set} if args.set else {})}))


if __name__ == "__main__":
    main()
