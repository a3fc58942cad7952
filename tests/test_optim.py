"""Schedules and the fine-tune optimizer against hand-computed values."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from personvit_jax.training.optim import (clip_per_tensor, finetune_lr_schedule, layer_decay_scales,
                                          make_finetune_optimizer, pretrain_schedules,
                                          warmup_cosine)


def _optim_cfg(**kw):
    c = dict(name="sgd", base_lr=4e-4, momentum=0.9, weight_decay=1e-4, weight_decay_bias=1e-4,
             bias_lr_factor=2.0, epochs=120, warmup_epochs=20, warmup_factor=0.01,
             final_lr_factor=0.002, per_epoch_schedule=True, decay_tokens=True, clip_grad=0.0)
    c.update(kw)
    return ml_collections.ConfigDict(c)


def test_finetune_lr_schedule_per_epoch():
    """PersonViT's do_train: epoch e (1-based) trains at timm's _get_lr(e - 1), i.e. the
    0-based epoch t; the first epoch at warmup_lr_init."""
    sched = finetune_lr_schedule(_optim_cfg(), steps_per_epoch=10)
    lr0, init = 4e-4, 4e-6
    assert float(sched(0)) == pytest.approx(init)
    assert float(sched(9)) == float(sched(0))  # constant within an epoch
    assert float(sched(10)) == pytest.approx(init + (lr0 - init) / 20)
    assert float(sched(19 * 10)) == pytest.approx(init + 19 * (lr0 - init) / 20)
    t = 20  # first cosine epoch (0-based 20)
    cos = 0.002 * lr0 + 0.5 * (lr0 - 0.002 * lr0) * (1 + math.cos(math.pi * t / 120))
    assert float(sched(20 * 10)) == pytest.approx(cos, rel=1e-5)
    last = 0.002 * lr0 + 0.5 * (lr0 - 0.002 * lr0) * (1 + math.cos(math.pi * 119 / 120))
    assert float(sched(119 * 10 + 5)) == pytest.approx(last, rel=1e-5)  # last epoch


def test_finetune_bias_group_shares_start_and_end():
    """timm's scheduler warms every group from the same warmup_lr_init to its own peak and
    cools every group to the same lr_min: biases (2 x base) start at 0.01 x base, not 0.02 x."""
    cfg = _optim_cfg(epochs=10, warmup_epochs=4)
    weights = finetune_lr_schedule(cfg, 1)
    biases = finetune_lr_schedule(cfg, 1, peak=2 * cfg.base_lr)
    init, lr_min = 0.01 * cfg.base_lr, 0.002 * cfg.base_lr
    assert float(biases(0)) == pytest.approx(init) == float(weights(0))
    assert float(biases(2)) == pytest.approx(init + 2 * (2 * cfg.base_lr - init) / 4)
    assert float(biases(4)) == pytest.approx(2 * cfg.base_lr * 0.5 * (1 + math.cos(math.pi * 0.4))
                                             + lr_min * 0.5 * (1 - math.cos(math.pi * 0.4)))
    assert float(biases(10)) == pytest.approx(lr_min) == pytest.approx(float(weights(10)))


def test_finetune_per_step_warmup_ramps_from_the_start():
    cfg = _optim_cfg(per_epoch_schedule=False, warmup_epochs=2, warmup_factor=0.0)
    sched = finetune_lr_schedule(cfg, steps_per_epoch=10)
    assert float(sched(0)) == 0.0
    assert float(sched(5)) == pytest.approx(cfg.base_lr * 5 / 20)
    assert float(sched(20)) == pytest.approx(cfg.base_lr, rel=1e-3)  # cosine clock from t = 0


def test_warmup_cosine_serves_ibot_schedules():
    # EMA momentum 0.996 -> 1 (cosine, no warm-up)
    ema = lambda s: float(warmup_cosine(s, base=0.996, total=1000, warmup=0, warmup_start=0,
                                        final=1.0))
    assert ema(0) == pytest.approx(0.996) and ema(1000) == pytest.approx(1.0)
    assert ema(500) == pytest.approx(0.998)
    # teacher temperature 0.04 -> 0.07 linearly over 30 epochs, then constant
    temp = lambda e: float(warmup_cosine(e, base=0.07, total=300, warmup=30, warmup_start=0.04,
                                         final=0.07))
    assert temp(0) == pytest.approx(0.04) and temp(15) == pytest.approx(0.055)
    assert temp(30) == pytest.approx(0.07) and temp(299) == pytest.approx(0.07)
    # weight decay 0.04 -> 0.4 cosine
    wd = lambda s: float(warmup_cosine(s, base=0.04, total=100, warmup=0, warmup_start=0,
                                       final=0.4))
    assert wd(0) == pytest.approx(0.04) and wd(50) == pytest.approx(0.22) and wd(100) == pytest.approx(0.4)


def test_sgd_matches_torch_update_rule():
    """torch.optim.SGD: buf = m * buf + (g + wd * p); p -= lr_group * buf; biases lr x 2."""
    cfg = _optim_cfg(per_epoch_schedule=False, warmup_epochs=0, epochs=1000, base_lr=0.1,
                     final_lr_factor=1.0, weight_decay=0.01, weight_decay_bias=0.02)
    tx, sched = make_finetune_optimizer(cfg, steps_per_epoch=1)
    params = {"dense": {"kernel": jnp.array([[1.0, -2.0]]), "bias": jnp.array([0.5])}}
    grads = [{"dense": {"kernel": jnp.array([[0.3, 0.1]]), "bias": jnp.array([-0.2])}},
             {"dense": {"kernel": jnp.array([[-0.1, 0.4]]), "bias": jnp.array([0.1])}}]
    state = tx.init(params)
    p_ref = jax.tree.map(np.asarray, params)
    buf = jax.tree.map(np.zeros_like, p_ref)
    for step, g in enumerate(grads):
        upd, state = tx.update(g, state, params)
        params = optax.apply_updates(params, upd)
        lr = float(sched(step))
        for name, wd, factor in (("kernel", 0.01, 1.0), ("bias", 0.02, 2.0)):
            d = np.asarray(g["dense"][name]) + wd * p_ref["dense"][name]
            buf["dense"][name] = 0.9 * buf["dense"][name] + d
            p_ref["dense"][name] = p_ref["dense"][name] - factor * lr * buf["dense"][name]
    for name in ("kernel", "bias"):
        np.testing.assert_allclose(params["dense"][name], p_ref["dense"][name], rtol=1e-6)


def test_adamw_decays_matrices_only_and_rejects_unknown():
    cfg = _optim_cfg(name="adamw", bias_lr_factor=1.0, weight_decay=0.5, warmup_epochs=0,
                     final_lr_factor=1.0, per_epoch_schedule=False)
    tx, _ = make_finetune_optimizer(cfg, steps_per_epoch=1)
    params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2), "scale": jnp.ones(2)}
    zero = jax.tree.map(jnp.zeros_like, params)
    upd, _ = tx.update(zero, tx.init(params), params)
    assert float(jnp.abs(upd["kernel"]).max()) > 0  # decoupled decay with zero gradient
    assert float(jnp.abs(upd["bias"]).max()) == 0 and float(jnp.abs(upd["scale"]).max()) == 0
    with pytest.raises(ValueError, match="'lamb'"):
        make_finetune_optimizer(_optim_cfg(name="lamb"), 1)


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_decay_tokens_switch_and_clipping(name):
    """decay_tokens=False: no weight decay on cls_token / pos_embed (DeiT); clip_grad clips
    the global norm before anything else."""
    cfg = _optim_cfg(name=name, bias_lr_factor=1.0, weight_decay=0.5, weight_decay_bias=0.0,
                     warmup_epochs=0, final_lr_factor=1.0, per_epoch_schedule=False,
                     decay_tokens=False, clip_grad=0.0)
    params = {"kernel": jnp.ones((2, 2)), "cls_token": jnp.ones((1, 1, 2)),
              "pos_embed": jnp.ones((1, 3, 2))}
    zero = jax.tree.map(jnp.zeros_like, params)
    tx, _ = make_finetune_optimizer(cfg, steps_per_epoch=1)
    upd, _ = tx.update(zero, tx.init(params), params)
    assert float(jnp.abs(upd["kernel"]).max()) > 0
    assert float(jnp.abs(upd["cls_token"]).max()) == 0 == float(jnp.abs(upd["pos_embed"]).max())
    cfg.decay_tokens = True
    tx, _ = make_finetune_optimizer(cfg, steps_per_epoch=1)
    upd, _ = tx.update(zero, tx.init(params), params)
    assert float(jnp.abs(upd["cls_token"]).max()) > 0
    # clipping: SGD without decay or momentum moves by lr x the clipped gradient
    cfg = _optim_cfg(name="sgd", momentum=0.0, weight_decay=0.0, weight_decay_bias=0.0,
                     base_lr=1.0, bias_lr_factor=1.0, warmup_epochs=0, final_lr_factor=1.0,
                     per_epoch_schedule=False, clip_grad=1.0)
    tx, _ = make_finetune_optimizer(cfg, steps_per_epoch=1)
    grads = {"kernel": jnp.full((2, 2), 3.0)}  # global norm 6
    upd, _ = tx.update(grads, tx.init(grads), grads)
    np.testing.assert_allclose(upd["kernel"], -jnp.full((2, 2), 0.5), rtol=1e-6)


def _cosine_scheduler(base, final, epochs, niter, warmup_epochs=0, start=0.0):
    """iBOT / DINO utils.cosine_scheduler, per iteration (reference)."""
    w = warmup_epochs * niter
    warm = np.linspace(start, base, w) if warmup_epochs > 0 else np.array([])
    iters = np.arange(epochs * niter - w)
    return np.concatenate([warm, final + 0.5 * (base - final) *
                           (1 + np.cos(np.pi * iters / len(iters)))])


@pytest.mark.parametrize("epochs,spe,warmup,temp_warmup,mim_start", [
    (300, 7, 10, 30, 0), (12, 5, 3, 4, 2), (6, 3, 1, 1, 0)])
def test_pretrain_schedules_are_ibots(epochs, spe, warmup, temp_warmup, mim_start):
    """Every value of a whole run against iBOT's arrays: LR warm-up np.linspace(0, peak, W)
    (peak at W - 1), cosine after it; weight decay and momentum cosine; teacher temperatures per
    epoch, the patch one shifted by pred_start_epoch (iBOTLoss with mim_start_epoch)."""
    o = ml_collections.ConfigDict(dict(base_lr=5e-4, min_lr=1e-6, epochs=epochs,
                                       warmup_epochs=warmup, weight_decay=0.04,
                                       weight_decay_end=0.4, ema_momentum=0.996,
                                       ema_momentum_end=1.0))
    l = ml_collections.ConfigDict(dict(warmup_teacher_temp=0.04, teacher_temp=0.07,
                                       warmup_teacher_patch_temp=0.03, teacher_patch_temp=0.06,
                                       warmup_teacher_temp_epochs=temp_warmup))
    sched = pretrain_schedules(o, l, mim_start, batch_size=64, steps_per_epoch=spe)
    steps = np.arange(epochs * spe)
    ref = {"lr": _cosine_scheduler(5e-4 * 64 / 256, 1e-6, epochs, spe, warmup),
           "weight_decay": _cosine_scheduler(0.04, 0.4, epochs, spe),
           "ema_momentum": _cosine_scheduler(0.996, 1.0, epochs, spe)}
    temp = np.concatenate([np.linspace(0.04, 0.07, temp_warmup),
                           np.ones(epochs - temp_warmup) * 0.07])
    temp2 = np.concatenate([np.ones(mim_start) * 0.03, np.linspace(0.03, 0.06, temp_warmup),
                            np.ones(epochs - temp_warmup - mim_start) * 0.06])
    ref["teacher_temp"], ref["teacher_patch_temp"] = temp[steps // spe], temp2[steps // spe]
    for name, values in ref.items():
        np.testing.assert_allclose(np.asarray(sched[name](steps)), values, rtol=2e-6,
                                   atol=1e-12, err_msg=name)


def test_clip_per_tensor_is_ibots():
    """utils.clip_gradients: each tensor scaled by clip / (norm + 1e-6) when that is < 1."""
    g = {"a": jnp.array([3.0, 4.0]), "b": jnp.array([0.3, 0.4]), "c": jnp.zeros(3)}
    out, _ = clip_per_tensor(1.0).update(g, optax.EmptyState())
    np.testing.assert_allclose(out["a"], np.array([3.0, 4.0]) / (5.0 + 1e-6), rtol=1e-7)
    np.testing.assert_array_equal(out["b"], g["b"])  # norm 0.5: untouched
    np.testing.assert_array_equal(out["c"], g["c"])


def test_layer_decay_scales_and_their_use():
    """decay ** (depth + 1 - layer): embeddings lowest, last block decay ** 1, neck and final
    norm 1; the fine-tune update of each parameter is scaled by it."""
    params = {"backbone": {"cls_token": jnp.ones((1, 1, 2)), "pos_embed": jnp.ones((1, 3, 2)),
                           "patch_embed": {"kernel": jnp.ones((2, 2))},
                           "blocks_0": {"w": jnp.ones(2)}, "blocks_1": {"w": jnp.ones(2)},
                           "norm": {"scale": jnp.ones(2)}},
              "neck": {"classifier": {"kernel": jnp.ones((2, 3))}}}
    s = layer_decay_scales(params, depth=2, decay=0.5)
    assert s["backbone"]["cls_token"] == s["backbone"]["patch_embed"]["kernel"] == 0.125
    assert s["backbone"]["blocks_0"]["w"] == 0.25 and s["backbone"]["blocks_1"]["w"] == 0.5
    assert s["backbone"]["norm"]["scale"] == s["neck"]["classifier"]["kernel"] == 1.0
    cfg = _optim_cfg(per_epoch_schedule=False, warmup_epochs=0, base_lr=0.1, final_lr_factor=1.0,
                     weight_decay=0.0, weight_decay_bias=0.0, bias_lr_factor=1.0)
    grads = jax.tree.map(jnp.ones_like, params)
    plain, _ = make_finetune_optimizer(cfg, 1)
    decayed, _ = make_finetune_optimizer(cfg, 1, s)
    u0, _ = plain.update(grads, plain.init(params), params)
    u1, _ = decayed.update(grads, decayed.init(params), params)
    jax.tree.map(lambda a, b, f: np.testing.assert_allclose(b, a * f, rtol=1e-6), u0, u1, s)
