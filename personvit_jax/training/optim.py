"""Optimizers and schedules (the one schedule helper of the project)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax


def warmup_cosine(t, *, base: float, total: float, warmup: float, warmup_start: float,
                  final: float):
    """Linear warm-up from `warmup_start` to `base` over t in [0, warmup], then cosine from
    `base` (at t = 0 of the cosine clock, as timm's CosineLRScheduler) to `final` at t = total.

    `t` is in any unit (epochs, steps); scalar or array, numpy or jax.
    """
    t = jnp.asarray(t, jnp.float32)
    ramp = warmup_start + t * (base - warmup_start) / max(warmup, 1e-12)
    cos = final + 0.5 * (base - final) * (1.0 + jnp.cos(math.pi * jnp.minimum(t, total) / total))
    return jnp.where(t < warmup, ramp, cos)


def finetune_lr_schedule(optim_cfg, steps_per_epoch: int) -> optax.Schedule:
    """TransReID/PersonViT LR: timm cosine with warm-up, stepped once per epoch with the 1-based
    epoch (TransReID calls scheduler.step(epoch) for epoch = 1..E), or smoothly per step."""
    o = optim_cfg

    def schedule(count):
        if o.per_epoch_schedule:
            t = jnp.floor(count / steps_per_epoch) + 1.0
        else:
            t = count / steps_per_epoch + 1.0
        return warmup_cosine(t, base=o.base_lr, total=o.epochs, warmup=o.warmup_epochs,
                             warmup_start=o.warmup_factor * o.base_lr,
                             final=o.final_lr_factor * o.base_lr)

    return schedule


def is_bias(path) -> bool:
    """True for parameters named `bias` (TransReID: `"bias" in key`)."""
    last = path[-1]
    return getattr(last, "key", getattr(last, "name", str(last))) == "bias"


def bias_mask(params):
    return jax.tree_util.tree_map_with_path(lambda p, _: is_bias(p), params)


def decay_mask(params):
    """True for matrices / embeddings; False for biases and norm scales (1-D parameters)."""
    return jax.tree_util.tree_map_with_path(lambda p, x: x.ndim > 1 and not is_bias(p), params)


def make_finetune_optimizer(optim_cfg, steps_per_epoch: int
                            ) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The fine-tune optimizer; biases learn at `bias_lr_factor` x the LR.

    sgd   (PersonViT): as torch.optim.SGD, coupled L2 weight decay added to the gradient before
          momentum (biases: `weight_decay_bias`).
    adamw (fast-reid / torchreid style; used for the from-scratch synthetic run): decoupled
          weight decay on matrices only.
    """
    o = optim_cfg
    schedule = finetune_lr_schedule(o, steps_per_epoch)
    if o.name == "sgd":
        not_bias = lambda params: jax.tree.map(lambda b: not b, bias_mask(params))
        direction = optax.chain(
            optax.masked(optax.add_decayed_weights(o.weight_decay), not_bias),
            optax.masked(optax.add_decayed_weights(o.weight_decay_bias), bias_mask),
            optax.trace(decay=o.momentum, nesterov=False))
    elif o.name == "adamw":
        direction = optax.chain(optax.scale_by_adam(b1=o.momentum, b2=0.999),
                                optax.add_decayed_weights(o.weight_decay, decay_mask))
    else:
        raise ValueError(f"config.optim.name={o.name!r}: expected 'sgd' or 'adamw'")
    tx = optax.chain(direction, optax.scale_by_learning_rate(schedule),
                     optax.masked(optax.scale(o.bias_lr_factor), bias_mask))
    return tx, schedule
