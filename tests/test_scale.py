"""Scale-out: FSDP equals replicated (both stages), checkpoints move between layouts, bf16 stays
close to float32 with float32 state, remat changes nothing, gradient accumulation (pretraining:
equal to the whole batch; fine-tuning: mean of the micro-batch steps, whole identities each),
and 2 processes x 2 devices through `personvit_jax.main` end where 1 process ends."""

import os
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from conftest import (REPO, assert_trees, assert_trees_close_in_norm, tiny_finetune_config,
                      tiny_pretrain_config)
from personvit_jax import reid_state, workdir
from personvit_jax.config_args import load_config
from personvit_jax.data import color_augment
from personvit_jax.models.pretrain import pretrain_model_from_config
from personvit_jax.models.reid import reid_model_from_config
from personvit_jax.models.vit import grid_size
from personvit_jax.stages import finetune, pretrain
from personvit_jax.training import checkpointing, optim, sharding
from personvit_jax.training.checkpointing import load_state_tree

NUM_IDS = 8
FSDP_MIN = 1024  # small enough that the tiny model's matrices are split


def _mesh_cfg(data, fsdp):
    return {"mesh.data": data, "mesh.fsdp": fsdp, "mesh.fsdp_min_size": FSDP_MIN}


# ---------------------------------------------------------------------------- step builders
# Each setup returns (config, mesh, init() -> fresh sharded state, jitted step); they are
# cached by overrides so that every test reuses the compiled programs of the reference runs.
_SETUPS, _RUNS = {}, {}


def _cached(setup):
    def cached(over):
        key = (setup.__name__, tuple(sorted(over.items())))
        if key not in _SETUPS:
            _SETUPS[key] = setup(over)
        return _SETUPS[key]
    return cached


@_cached
def _finetune_setup(over):
    cfg = tiny_finetune_config("unused", **{"model.drop_path_rate": 0.0, "optim.name": "sgd",
                                            "optim.base_lr": 1e-2, **over})
    mesh = sharding.make_mesh(cfg.mesh)
    model = reid_model_from_config(cfg, NUM_IDS)
    tx, schedule = optim.make_finetune_optimizer(cfg.optim, steps_per_epoch=4)
    init_fn = lambda: reid_state.init_train_state(model, tx, cfg, cfg.data.image_size)
    _, state_sh = sharding.init_sharded(init_fn, mesh, cfg.mesh)
    step = sharding.jit_train_step(finetune.make_train_step(model, tx, schedule, cfg),
                                   state_sh, mesh)
    return cfg, mesh, jax.jit(init_fn, out_shardings=state_sh), step


def _finetune_batch(seed, batch=16, k=4):
    rng = np.random.default_rng(seed)
    return {"images": rng.standard_normal((batch, 64, 32, 3)).astype(np.float32),
            "labels": np.repeat(rng.permutation(NUM_IDS)[:batch // k], k).astype(np.int32),
            "camids": np.zeros(batch, np.int32)}


@_cached
def _pretrain_setup(over):
    cfg = tiny_pretrain_config("unused", **{"model.drop_path_rate": 0.0, **over})
    mesh = sharding.make_mesh(cfg.mesh)
    student = pretrain_model_from_config(cfg, student=True)
    teacher = pretrain_model_from_config(cfg, student=False)
    h, w = cfg.data.global_size
    abstract = jax.eval_shape(lambda: student.init(jax.random.PRNGKey(0),
                                                   jnp.zeros((1, h, w, 3)))["params"])
    tx, schedules = pretrain.make_optimizer(cfg, abstract, cfg.data.batch_size, 4)
    init_fn = lambda: pretrain.init_pretrain_state(student, tx, cfg)
    _, state_sh = sharding.init_sharded(init_fn, mesh, cfg.mesh)
    step = sharding.jit_train_step(
        pretrain.make_pretrain_step(student, teacher, tx, schedules, cfg), state_sh, mesh)
    return cfg, mesh, jax.jit(init_fn, out_shardings=state_sh), step


def _pretrain_batch(seed, cfg):
    rng = np.random.default_rng(seed)
    b, d = cfg.data.batch_size, cfg.data
    n = np.prod(grid_size(d.global_size, cfg.model.patch_size, cfg.model.patch_stride))
    colors = lambda v, blur: np.stack([[color_augment.draw_params(rng, d, blur, 0.2)
                                        for _ in range(v)] for _ in range(b)])
    return {"global": rng.integers(0, 256, (b, 2, *d.global_size, 3), np.uint8),
            "local": rng.integers(0, 256, (b, d.num_local_crops, *d.local_size, 3), np.uint8),
            "global_color": colors(2, 1.0), "local_color": colors(d.num_local_crops, 0.5),
            "masks": rng.random((b, 2, n)) < 0.3}


def _run(stage, over, steps=2):
    """(final state on the host, last metrics, final state on device) of `steps` steps."""
    key = (stage, tuple(sorted(over.items())), steps)
    if key not in _RUNS:
        setup, make_batch = STAGES[stage]
        cfg, mesh, init, step = setup(over)
        state = init()
        for s in range(steps):
            state, metrics = step(state, sharding.to_global(make_batch(s, cfg), mesh))
        _RUNS[key] = jax.device_get(state), jax.device_get(metrics), state
    return _RUNS[key]


REF = {"mesh.data": 2}  # the reference layout: 2 devices, replicated state


STAGES = {"finetune": (_finetune_setup, lambda s, cfg: _finetune_batch(s)),
          "pretrain": (_pretrain_setup, _pretrain_batch)}


# ---------------------------------------------------------------------------- mesh and rules
def test_mesh_shape_and_errors():
    cfg = lambda **kw: tiny_finetune_config("unused", **{f"mesh.{k}": v for k, v in kw.items()}
                                            ).mesh
    assert sharding.mesh_shape(cfg(data=-1, fsdp=4), 8) == (2, 4)
    assert sharding.mesh_shape(cfg(data=2, fsdp=-1), 8) == (2, 4)
    assert sharding.mesh_shape(cfg(data=1, fsdp=1), 8) == (1, 1)
    with pytest.raises(ValueError, match="config.mesh.fsdp=3 does not divide the 8"):
        sharding.mesh_shape(cfg(data=-1, fsdp=3), 8)
    with pytest.raises(ValueError, match="both -1"):
        sharding.mesh_shape(cfg(data=-1, fsdp=-1), 8)
    with pytest.raises(ValueError, match="4 x 4 = 16 devices, but only 8"):
        sharding.mesh_shape(cfg(data=4, fsdp=4), 8)
    mesh = sharding.make_mesh(cfg(data=2, fsdp=4))
    assert dict(mesh.shape) == {"data": 2, "fsdp": 4}
    assert sharding.batch_sharded(mesh).spec == P(("data", "fsdp"))


def test_state_rules():
    spec = lambda name, shape, f=4: sharding.state_spec(name, shape, f, min_size=FSDP_MIN)
    assert spec("params/backbone/blocks_0/attn/qkv/kernel", (64, 192)) == P(None, "fsdp")
    assert spec("opt_state/0/mu/backbone/blocks_0/mlp/fc2/kernel", (256, 64)) == P("fsdp", None)
    assert spec("params/backbone/blocks_0/mlp/fc1/bias", (256,)) == P()  # small
    assert spec("params/backbone/pos_embed", (1, 33, 4096)) == P()  # rule: replicated
    assert spec("center", (1, 8192)) == P()
    assert spec("params/neck/classifier/kernel", (64, 751)) == P("fsdp", None)  # 751 % 4 != 0
    assert spec("params/x/kernel", (33, 751)) == P()  # no divisible axis
    assert spec("params/backbone/blocks_0/attn/qkv/kernel", (64, 192), f=1) == P()


# ---------------------------------------------------------------------------- layouts
@pytest.mark.parametrize("stage", ["finetune", "pretrain"])
def test_fsdp_equals_replicated(stage):
    repl, _, _ = _run(stage, REF)
    fsdp, metrics, live = _run(stage, _mesh_cfg(2, 4))
    owner = "params" if stage == "finetune" else "student"
    kernel = live[owner]["backbone"]["blocks_0"]["mlp"]["fc1"]["kernel"]
    assert kernel.sharding.spec == P(None, "fsdp")  # really split: [64, 256] over 4 devices
    assert len({s.data.shape for s in kernel.addressable_shards}) == 1
    assert kernel.addressable_shards[0].data.shape == (64, 64)
    assert np.isfinite(metrics["loss"])
    if stage == "finetune":  # SGD: bit-close, as 8 devices vs 1
        assert_trees(repl["params"], fsdp["params"], rtol=2e-4, atol=2e-6)
        assert_trees(repl["batch_stats"], fsdp["batch_stats"], rtol=2e-4, atol=2e-6)
    else:  # AdamW moves parameters by ~lr whatever the gradient: compared at that scale
        assert_trees(repl["center"], fsdp["center"], rtol=1e-5, atol=1e-7)
        assert_trees(repl["teacher"], fsdp["teacher"], atol=1e-6)
        assert_trees(repl["student"], fsdp["student"], atol=2e-4)


def test_checkpoint_moves_between_fsdp_and_replicated(tmp_path):
    layouts = {"fsdp": _run("finetune", _mesh_cfg(2, 4))[2], "repl": _run("finetune", REF)[2]}
    for src, dst in (("fsdp", "repl"), ("repl", "fsdp")):
        ckpt = checkpointing.Checkpointer(str(tmp_path / src))
        ckpt.save(0, layouts[src], force=True)
        ckpt.close()
        ckpt = checkpointing.Checkpointer(str(tmp_path / src))
        restored = ckpt.restore(0, checkpointing.abstract_state(layouts[dst]))
        ckpt.close()
        assert_trees(jax.device_get(restored), jax.device_get(layouts[src]))
        for r, t in zip(jax.tree.leaves(restored), jax.tree.leaves(layouts[dst])):
            assert r.sharding == t.sharding  # restored onto the target layout


# ---------------------------------------------------------------------------- precision, remat
@pytest.mark.parametrize("stage", ["finetune", "pretrain"])
def test_bfloat16_step_close_to_float32_with_float32_state(stage):
    f32, m32, _ = _run(stage, REF)
    bf16, m16, _ = _run(stage, {**REF, "model.compute_dtype": "bfloat16"})
    for leaf in jax.tree.leaves(bf16):  # params, optimizer, EMA teacher, centres, BN stats
        assert leaf.dtype in (np.float32, np.int32, np.uint32), leaf.dtype
    assert m16["loss"] == pytest.approx(m32["loss"], rel=2e-2)
    assert m16["grad_norm"] == pytest.approx(m32["grad_norm"], rel=5e-2)
    # the update direction agrees: cosine of the parameter changes over the whole model
    owner = "params" if stage == "finetune" else "student"
    init = jax.device_get(STAGES[stage][0](REF)[2]())
    delta = lambda s: np.concatenate([np.ravel(a - b) for a, b in zip(
        jax.tree.leaves(s[owner]), jax.tree.leaves(init[owner]))])
    d32, d16 = delta(f32), delta(bf16)
    assert np.dot(d32, d16) / (np.linalg.norm(d32) * np.linalg.norm(d16)) > 0.99


def test_remat_gives_the_same_step():
    plain, _, _ = _run("finetune", REF)
    remat, _, _ = _run("finetune", {**REF, "model.remat": True})
    # Remat recomputes the forward pass inside the backward one: only the summation order of
    # some reductions changes. Measured: every array within 2.3e-5 of the plain run in relative
    # norm, while single near-cancelling gradient elements moved up to 1.5e-4 (relative).
    assert_trees_close_in_norm(plain, remat, rel=1e-4, atol=1e-6)


def test_remat_vit_same_gradient_with_drop_path():
    """The pretraining student's case: remat blocks with drop path (rngs inside remat)."""
    from personvit_jax.models.vit import ViT

    x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 32, 16, 3)), jnp.float32)
    grads = []
    for remat in (False, True):
        vit = ViT(width=64, depth=2, num_heads=2, patch_size=8, patch_stride=8, pos_grid=(4, 2),
                  drop_path_rate=0.5, use_mask_token=True, remat=remat)
        params = vit.init(jax.random.PRNGKey(0), x)["params"]
        loss = lambda p: jnp.sum(vit.apply({"params": p}, x, train=True,
                                           rngs={"dropout": jax.random.PRNGKey(1)})["cls"] ** 2)
        grads.append(jax.jit(jax.grad(loss))(params))
    assert_trees(grads[0], grads[1], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------- accumulation
def test_split_microbatches_keeps_identities_whole():
    labels = np.repeat(np.arange(8), 4)  # P x K = 8 x 4
    micro = np.asarray(optim.split_microbatches(jnp.asarray(labels), 2, group=4))
    assert micro.shape == (2, 16)
    np.testing.assert_array_equal(micro[0], np.repeat([0, 2, 4, 6], 4))
    np.testing.assert_array_equal(micro[1], np.repeat([1, 3, 5, 7], 4))
    with pytest.raises(ValueError, match="whole groups of 4"):
        optim.split_microbatches(jnp.asarray(labels), 3, group=4)
    with pytest.raises(ValueError, match="accum_steps=8.*at least 2"):
        optim.check_accum_steps(32, 8, 4, 4, "train batch (P x K)", min_groups=2)
    with pytest.raises(ValueError, match="micro-batch of 4 is not divisible by the 8"):
        optim.check_accum_steps(16, 4, 1, 8, "config.data.batch_size")


def test_pretrain_accumulation_equals_the_whole_batch():
    whole, m1, _ = _run("pretrain", REF)
    accum, m2, _ = _run("pretrain", {**REF, "optim.accum_steps": 2})
    assert m1["loss"] == pytest.approx(m2["loss"], rel=1e-5)
    assert_trees(whole["center"], accum["center"], rtol=1e-5, atol=1e-7)  # whole-batch mean
    assert_trees(whole["center_patch"], accum["center_patch"], rtol=1e-5, atol=1e-7)
    assert_trees(whole["teacher"], accum["teacher"], atol=1e-6)
    assert_trees(whole["student"], accum["student"], atol=2e-4)


def test_finetune_accumulation_is_the_mean_of_micro_batch_steps():
    """One SGD step from a fresh state is linear in the gradient, so the accumulated step over
    micro-batches A and B must land at the mean of the steps on A alone and on B alone (each
    micro-batch has its own triplet mining and BatchNorm statistics: NOT one double batch)."""
    batch = _finetune_batch(0, batch=32)
    _, mesh, init, step = _finetune_setup({**REF, "optim.accum_steps": 2})
    accum, _ = step(init(), sharding.to_global(batch, mesh))
    singles = []
    for a in range(2):
        part = {k: np.asarray(optim.split_microbatches(jnp.asarray(v), 2, group=4)[a])
                for k, v in batch.items()}
        assert len(np.unique(part["labels"])) == 4  # whole identities: 4 ids x K = 4
        _, mesh, init, step = _finetune_setup(REF)
        singles.append(jax.device_get(step(init(), sharding.to_global(part, mesh))[0]["params"]))
    mean = jax.tree.map(lambda x, y: (x + y) / 2, *singles)
    assert_trees(jax.device_get(accum["params"]), mean, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------- multi-process
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _flags(over: dict) -> list[str]:
    fmt = lambda v: f"({','.join(map(str, v))})" if isinstance(v, (tuple, list)) else str(v)
    return [f"--config.{k}={fmt(v)}" for k, v in over.items()]


def _run_two_processes(config_arg, workdir, over, timeout=420, returncode=0):
    """2 processes x 2 fake CPU devices through `python -m personvit_jax.main` (gloo); each
    must exit with `returncode`. Returns their stderr."""
    port = _free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=2")
    procs = [subprocess.Popen(
        [sys.executable, "-m", "personvit_jax.main", f"--config={config_arg}",
         f"--workdir={workdir}", f"--coordinator_address=127.0.0.1:{port}",
         "--num_processes=2", f"--process_id={i}"] + _flags(over),
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for i in range(2)]
    try:
        errs = [p.communicate(timeout=timeout)[1] for p in procs]
    finally:
        for p in procs:  # a child left waiting for its peer would hang forever
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, err in zip(procs, errs):
        assert p.returncode == returncode, err[-4000:]
    return errs


def _tiny_overrides(stage, make_config, data_dir, extra):
    """The keys the tiny test config sets, as command-line overrides of the stage's config."""
    base, tiny = load_config(stage, "synthetic"), make_config(data_dir, **extra)
    flat = lambda c, pre="": {f"{pre}{k}": v for key, val in c.items() for k, v in (
        flat(val, f"{key}.").items() if hasattr(val, "items") else [(key, val)])}
    b = flat(base.to_dict())
    return {k: v for k, v in flat(tiny.to_dict()).items() if b.get(k) != v or k.endswith("dir")}


@pytest.mark.parametrize("stage", ["finetune", "pretrain"])
def test_two_processes_equal_one(stage, tiny_data_dir, tmp_path):
    make_config, module = {"finetune": (tiny_finetune_config, finetune),
                           "pretrain": (tiny_pretrain_config, pretrain)}[stage]
    extra = {"optim.epochs": 1, "mesh.data": 2, "mesh.fsdp": 2, "mesh.fsdp_min_size": FSDP_MIN,
             "checkpoint_every_steps": 2}
    if stage == "finetune":
        extra.update({"optim.name": "sgd", "optim.base_lr": 1e-2})
    over = _tiny_overrides(stage, make_config, tiny_data_dir, extra)
    # 1 process, the same 2 x 2 mesh on 4 of its 8 devices
    module.train(make_config(tiny_data_dir, **extra), str(tmp_path / "one"))
    _run_two_processes(f"configs/{stage}.py:synthetic", tmp_path / "two", over)
    one, two = load_state_tree(tmp_path / "one"), load_state_tree(tmp_path / "two")
    assert int(one["step"]) == int(two["step"]) > 0
    if stage == "finetune":
        assert_trees(one["params"], two["params"], rtol=2e-4, atol=2e-6)
    else:
        assert_trees(one["center"], two["center"], rtol=1e-5, atol=1e-7)
        assert_trees(one["teacher"], two["teacher"], atol=1e-6)
        assert_trees(one["student"], two["student"], atol=2e-4)
    assert (tmp_path / "two" / "eval_results.json").exists()


def test_two_processes_stop_together_on_a_workdir_in_use(tmp_path):
    """Process 0 is refused the lock and says so to process 1: both exit 2, in one line each."""
    work = tmp_path / "w"
    with workdir.locked(str(work)):
        errs = _run_two_processes("configs/finetune.py:synthetic", work, {}, returncode=2)
    for err in errs:
        assert "Traceback" not in err
        assert err.strip().splitlines()[-1].startswith(f"error: workdir {work} is in use by "
                                                       "another run (")
