"""Optimizers and schedules (the one schedule helper of the project)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax


def warmup_cosine(t, *, base: float, total: float, warmup: float, warmup_start: float,
                  final: float, cosine_after_warmup: bool = False, linspace_warmup: bool = False):
    """Linear warm-up from `warmup_start` to `base`, then cosine from `base` to `final` at
    t = total.

    The ramp reaches `base` at t = warmup (timm), or with `linspace_warmup` at t = warmup - 1,
    as DINO/iBOT's `np.linspace(start, base, warmup)` (e.g. warmup 3: start, mid, base). The
    cosine clock starts at t = 0 (timm's CosineLRScheduler, used for fine-tuning) or, with
    `cosine_after_warmup`, at t = warmup (DINO/iBOT's cosine_scheduler). `t` is in any unit
    (epochs, steps); scalar or array.
    """
    t = jnp.asarray(t, jnp.float32)
    span = max(warmup - 1, 1) if linspace_warmup else max(warmup, 1e-12)
    ramp = warmup_start + jnp.minimum(t / span, 1.0) * (base - warmup_start)
    start = warmup if cosine_after_warmup else 0.0
    frac = jnp.clip((t - start) / max(total - start, 1e-12), 0.0, 1.0)
    cos = final + 0.5 * (base - final) * (1.0 + jnp.cos(math.pi * frac))
    return jnp.where(t < warmup, ramp, cos)


def finetune_lr_schedule(optim_cfg, steps_per_epoch: int, peak: float | None = None
                         ) -> optax.Schedule:
    """The fine-tune LR of a parameter group whose peak is `peak` (default optim.base_lr).

    cosine (PersonViT / TransReID: timm's CosineLRScheduler driven by do_train): the scheduler
    is stepped with scheduler.step(epoch) at the END of epoch e = 1..E, so epoch e trains at
    _get_lr(e - 1): t = the 0-based epoch. Linear warm-up over `warmup_epochs` from
    warmup_factor x base_lr, then cosine to final_lr_factor x base_lr at t = epochs. The start
    and the end are the same for every group (timm's warmup_lr_init / lr_min are scalars); only
    the peak is the group's, so biases at bias_lr_factor x base warm up from the same start on a
    steeper ramp. `per_epoch_schedule=False` evaluates the same curve at t = step /
    steps_per_epoch (a per-step ramp). schedule='step' (Cluster Contrast's StepLR, the usl
    stage): peak x step_gamma ** (epoch // step_epochs), no warm-up.
    """
    o = optim_cfg
    peak = o.base_lr if peak is None else peak

    def step_decay(count):
        epoch = jnp.floor(count / steps_per_epoch)
        return peak * o.step_gamma ** jnp.floor(epoch / o.step_epochs)

    def schedule(count):
        t = count / steps_per_epoch
        if o.per_epoch_schedule:
            t = jnp.floor(t)
        return warmup_cosine(t, base=peak, total=o.epochs, warmup=o.warmup_epochs,
                             warmup_start=o.warmup_factor * o.base_lr,
                             final=o.final_lr_factor * o.base_lr)

    return step_decay if o.get("schedule", "cosine") == "step" else schedule


def is_bias(path) -> bool:
    """True for parameters named `bias` (TransReID: `"bias" in key`)."""
    last = path[-1]
    return getattr(last, "key", getattr(last, "name", str(last))) == "bias"


def bias_mask(params):
    return jax.tree_util.tree_map_with_path(lambda p, _: is_bias(p), params)


def decay_mask(params):
    """True for matrices / embeddings; False for biases and norm scales (1-D parameters)."""
    return jax.tree_util.tree_map_with_path(lambda p, x: x.ndim > 1 and not is_bias(p), params)


def layer_decay_scales(params, depth: int, decay: float):
    """Layer-wise LR decay (BEiT / iBOT fine-tuning): a tree of LR factors decay ** (depth + 1 -
    layer), layer 0 = the embeddings (patch_embed, cls_token, pos_embed, mask / SIE tokens),
    layer i + 1 = backbone block i, layer depth + 1 = everything after the blocks (final norm,
    BNNeck, JPM). `params`: {'backbone': ..., 'neck': ...} (may be abstract)."""
    def layer(path) -> int:
        keys = [getattr(p, "key", "") for p in path]
        if not keys or keys[0] != "backbone" or len(keys) < 2:
            return depth + 1
        if keys[1].startswith("blocks_"):
            return int(keys[1].split("_")[1]) + 1
        return depth + 1 if keys[1] == "norm" else 0
    return jax.tree_util.tree_map_with_path(
        lambda path, _: float(decay ** (depth + 1 - layer(path))), params)


def is_token(path) -> bool:
    """True for the learned tokens and position embedding (cls_token, pos_embed, mask_token,
    SIE's camera embedding): DeiT-style AdamW leaves them out of weight decay."""
    last = path[-1]
    name = getattr(last, "key", getattr(last, "name", str(last)))
    return name in ("cls_token", "pos_embed", "mask_token", "sie_embed")


def make_finetune_optimizer(optim_cfg, steps_per_epoch: int, lr_scales=None
                            ) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The fine-tune optimizer and the LR schedule of its weights (for logging).

    Biases are their own parameter group, at `bias_lr_factor` x the peak LR (PersonViT's
    make_optimizer), on the schedule of `finetune_lr_schedule`; each parameter is scaled by
    `lr_scales` x its group's LR when given (a tree of floats, e.g. `layer_decay_scales`).

    sgd   (PersonViT): as torch.optim.SGD, coupled L2 weight decay added to the gradient before
          momentum (biases: `weight_decay_bias`).
    adamw (fast-reid / torchreid style; used for the from-scratch synthetic run): decoupled
          weight decay on matrices only.
    `decay_tokens=False` leaves cls_token / pos_embed out of weight decay (DeiT); `clip_grad`
    > 0 clips the gradient's global norm first (0: off, as PersonViT).
    """
    o = optim_cfg
    schedule = finetune_lr_schedule(o, steps_per_epoch)
    bias_schedule = finetune_lr_schedule(o, steps_per_epoch, o.bias_lr_factor * o.base_lr)
    keep_tokens = o.decay_tokens

    def without_tokens(mask):  # decay_tokens=False drops cls_token / pos_embed from a mask
        return jax.tree_util.tree_map_with_path(
            lambda p, m: m and (keep_tokens or not is_token(p)), mask)

    def decayed(params, want_bias: bool):
        return without_tokens(jax.tree.map(lambda b: b == want_bias, bias_mask(params)))

    if o.name == "sgd":
        direction = optax.chain(
            optax.masked(optax.add_decayed_weights(o.weight_decay),
                         lambda params: decayed(params, False)),
            optax.masked(optax.add_decayed_weights(o.weight_decay_bias),
                         lambda params: decayed(params, True)),
            optax.trace(decay=o.momentum, nesterov=False))
    elif o.name == "adamw":
        direction = optax.chain(
            optax.scale_by_adam(b1=o.momentum, b2=0.999),
            optax.add_decayed_weights(o.weight_decay,
                                      lambda params: without_tokens(decay_mask(params))))
    else:
        raise ValueError(f"config.optim.name={o.name!r}: expected 'sgd' or 'adamw'")
    clip = optax.clip_by_global_norm(o.clip_grad) if o.clip_grad else optax.identity()
    group = lambda params: jax.tree.map(lambda b: "bias" if b else "weight", bias_mask(params))
    parts = [clip, direction, optax.multi_transform(
        {"weight": optax.scale_by_learning_rate(schedule),
         "bias": optax.scale_by_learning_rate(bias_schedule)}, group)]
    if lr_scales is not None:
        parts.append(optax.stateless(
            lambda updates, params=None: jax.tree.map(lambda u, f: u * f, updates, lr_scales)))
    return optax.chain(*parts), schedule


def add_scheduled_weight_decay(schedule: optax.Schedule, mask) -> optax.GradientTransformation:
    """Decoupled weight decay whose coefficient follows `schedule(step)`, on params where the
    bool pytree `mask` is True (optax's add_decayed_weights takes a constant only)."""

    def init(params):
        return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

    def update(updates, state, params):
        wd = schedule(state.count)
        updates = jax.tree.map(lambda u, p, m: u + wd * p if m else u, updates, params, mask)
        return updates, optax.ScaleByScheduleState(count=optax.safe_increment(state.count))

    return optax.GradientTransformation(init, update)


def pretrain_schedules(optim_cfg, loss_cfg, mim_start_epoch: int, batch_size: int,
                       steps_per_epoch: int) -> dict:
    """iBOT's schedules as functions of the step: {lr, weight_decay, ema_momentum (per
    iteration, utils.cosine_scheduler), teacher_temp, teacher_patch_temp (per epoch, iBOTLoss)}.

    LR: base_lr x batch / 256, warm-up np.linspace(0, peak, W iterations) then cosine to min_lr
    over the other iterations; weight decay and EMA momentum: cosine from step 0. Teacher
    temperatures: np.linspace(warmup, final, E epochs) then constant; the patch one holds its
    warm-up value for the `mim_start_epoch` epochs before masked prediction starts (iBOT's
    pred_start_epoch), then warms up the same way.
    """
    o, l, spe = optim_cfg, loss_cfg, steps_per_epoch
    total = o.epochs * spe
    lr = lambda s: warmup_cosine(s, base=o.base_lr * batch_size / 256, total=total,
                                 warmup=o.warmup_epochs * spe, warmup_start=0.0, final=o.min_lr,
                                 cosine_after_warmup=True, linspace_warmup=True)
    wd = lambda s: warmup_cosine(s, base=o.weight_decay, total=total, warmup=0, warmup_start=0.0,
                                 final=o.weight_decay_end)
    ema = lambda s: warmup_cosine(s, base=o.ema_momentum, total=total, warmup=0,
                                  warmup_start=0.0, final=o.ema_momentum_end)

    def temp(epoch, warm, final):
        return warmup_cosine(epoch, base=final, total=o.epochs,
                             warmup=l.warmup_teacher_temp_epochs, warmup_start=warm, final=final,
                             linspace_warmup=True)

    epoch = lambda s: jnp.asarray(s) // spe
    return {
        "lr": lr, "weight_decay": wd, "ema_momentum": ema,
        "teacher_temp": lambda s: temp(epoch(s), l.warmup_teacher_temp, l.teacher_temp),
        "teacher_patch_temp": lambda s: temp(jnp.maximum(epoch(s) - mim_start_epoch, 0),
                                             l.warmup_teacher_patch_temp, l.teacher_patch_temp),
    }


def clip_per_tensor(max_norm: float) -> optax.GradientTransformation:
    """iBOT/DINO's utils.clip_gradients: each parameter's gradient scaled by
    max_norm / (||g|| + 1e-6) where that is below 1, independently of the others."""

    def clip(g):
        coef = max_norm / (jnp.linalg.norm(g.astype(jnp.float32).ravel()) + 1e-6)
        return jnp.where(coef < 1.0, g * coef.astype(g.dtype), g)

    return optax.stateless(lambda updates, params=None: jax.tree.map(clip, updates))


def make_pretrain_optimizer(optim_cfg, params, schedules: dict, frozen_mask,
                            frozen_steps: int) -> optax.GradientTransformation:
    """iBOT's AdamW step (torch.optim.AdamW, betas 0.9 / 0.999, eps 1e-8) at the LR and weight
    decay of `schedules`; weight decay on matrices and embeddings only (get_params_groups).

    Clipping (`clip_mode`): per_tensor (iBOT's utils.clip_gradients) or global_norm; 0 = off.
    Parameters where the bool pytree `frozen_mask` is True (the head's last layer) are left out
    for the first `frozen_steps` steps as iBOT's cancel_gradients_last_layer leaves them out
    (p.grad = None): no update, no weight decay, and their Adam moments and step count (hence
    bias correction) start only when they unfreeze.
    """
    o = optim_cfg
    if o.clip_mode not in ("per_tensor", "global_norm"):
        raise ValueError(f"config.optim.clip_mode={o.clip_mode!r}: expected 'per_tensor' "
                         f"(iBOT) or 'global_norm'")
    clip = optax.identity()
    if o.clip_grad:
        clip = (clip_per_tensor(o.clip_grad) if o.clip_mode == "per_tensor"
                else optax.clip_by_global_norm(o.clip_grad))
    adam = lambda: optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-8)
    after_freeze = lambda count: count >= frozen_steps
    labels = jax.tree.map(lambda f: "frozen_first" if f else "always", frozen_mask)
    return optax.chain(
        clip,
        # A frozen leaf's Adam state stands still (conditionally_mask: zero update, state kept).
        optax.multi_transform({"frozen_first": optax.conditionally_mask(adam(), after_freeze),
                               "always": adam()}, labels),
        add_scheduled_weight_decay(schedules["weight_decay"], decay_mask(params)),
        optax.scale_by_learning_rate(schedules["lr"]),
        # ... and so does the leaf itself: no weight decay either while frozen.
        optax.masked(optax.conditionally_transform(optax.set_to_zero(),
                                                   lambda count: count < frozen_steps),
                     frozen_mask))


# Gradient accumulation: `accum_steps` micro-batches scanned inside the one jitted train step.
#
# Not optax.MultiSteps: that applies one update every k CALLS, so each call (and each loop
# step, checkpoint, schedule tick, EMA teacher update and centre update) would see a
# micro-batch. Here a step is still one global batch and one optimizer update; only the
# forward/backward is split, so activation memory is that of one micro-batch.
# ---------------------------------------------------------------------------------------------


def split_microbatches(x, accum_steps: int, group: int = 1):
    """[B, ...] -> [A, B / A, ...]: micro-batch a takes the groups of `group` consecutive rows
    whose group index is a (mod A).

    Example, B = 8, A = 2, group = 2 (P x K batch, K = 2): rows [0 1 | 2 3 | 4 5 | 6 7] ->
    micro-batch 0 = [0 1 4 5], micro-batch 1 = [2 3 6 7]: whole identities in each. The
    assignment depends on the global row index only (same on any mesh), and a device holding a
    multiple of A groups keeps its rows (no data moves between devices).
    """
    b = x.shape[0]
    if b % (accum_steps * group):
        raise ValueError(f"batch of {b} rows cannot be split into {accum_steps} micro-batches "
                         f"of whole groups of {group}")
    x = x.reshape((b // (accum_steps * group), accum_steps, group) + x.shape[1:])
    return jnp.swapaxes(x, 0, 1).reshape((accum_steps, b // accum_steps) + x.shape[3:])


def accumulate_gradients(grad_fn, params, carry, batch: dict, rng, accum_steps: int,
                         group: int = 1):
    """The step's gradient as the mean over `accum_steps` micro-batches.

    grad_fn(params, carry, micro_batch, rng) -> (grads, carry, aux) runs once per micro-batch
    (`lax.scan`, so the program holds one copy of the forward/backward); `carry` is threaded
    through in order (e.g. BatchNorm running statistics), `grads` and the pytree `aux` (metrics,
    float scalars/arrays) are averaged. Micro-batch a gets rng fold_in(rng, a). accum_steps = 1
    calls grad_fn on the whole batch with `rng` itself (no scan).

    Equal to one big batch when the loss is a mean of per-image terms over equal-sized micro-
    batches (pretraining); not for terms that couple the images of a batch (batch-hard triplet
    mining, BatchNorm statistics), which then see one micro-batch at a time.
    """
    if accum_steps == 1:
        return grad_fn(params, carry, batch, rng)
    micro = jax.tree.map(lambda x: split_microbatches(x, accum_steps, group), batch)
    first = jax.tree.map(lambda x: x[0], micro)
    g_shape, _, aux_shape = jax.eval_shape(grad_fn, params, carry, first, rng)
    zeros = lambda tree: jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), tree)

    def body(acc, xs):
        g_sum, aux_sum, carry = acc
        index, mb = xs
        g, carry, aux = grad_fn(params, carry, mb, jax.random.fold_in(rng, index))
        add = lambda s, v: s + v.astype(jnp.float32)
        return (jax.tree.map(add, g_sum, g), jax.tree.map(add, aux_sum, aux), carry), None

    (g_sum, aux_sum, carry), _ = jax.lax.scan(
        body, (zeros(g_shape), zeros(aux_shape), carry), (jnp.arange(accum_steps), micro))
    mean = lambda tree, like: jax.tree.map(lambda s, l: (s / accum_steps).astype(l.dtype),
                                           tree, like)
    return mean(g_sum, g_shape), carry, mean(aux_sum, aux_shape)


def check_accum_steps(batch_size: int, accum_steps: int, group: int, num_devices: int,
                      what: str, min_groups: int = 1) -> int:
    """Micro-batch size, after checking that `config.optim.accum_steps` splits `what` (a batch
    of `batch_size` in groups of `group`) into equal micro-batches of at least `min_groups`
    whole groups that the devices share evenly."""
    if accum_steps < 1:
        raise ValueError(f"config.optim.accum_steps={accum_steps}: expected >= 1")
    if batch_size % (accum_steps * group):
        raise ValueError(f"config.optim.accum_steps={accum_steps}: {what} = {batch_size} is not "
                         f"{accum_steps} micro-batches of whole groups of {group}")
    if batch_size // (accum_steps * group) < min_groups:
        raise ValueError(f"config.optim.accum_steps={accum_steps}: a micro-batch of {what} "
                         f"would hold {batch_size // (accum_steps * group)} groups of {group}; "
                         f"at least {min_groups} are needed")
    micro = batch_size // accum_steps
    if micro % num_devices:
        raise ValueError(f"config.optim.accum_steps={accum_steps}: the micro-batch of {micro} "
                         f"is not divisible by the {num_devices} devices of the mesh")
    return micro
