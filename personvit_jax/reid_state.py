"""The ReID train state {step, params, batch_stats, opt_state, rng} of the labelled (finetune)
and label-free (usl) stages: a fresh one, and the step that loads config.init_from's backbone
into it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from absl import logging

from personvit_jax import inference
from personvit_jax.models import init_from


def init_train_state(model, tx, config, image_hw) -> dict:
    """Fresh train state: {step, params, batch_stats, opt_state, rng} (jit it with shardings)."""
    variables = model.init({"params": jax.random.PRNGKey(config.seed)},
                           jnp.zeros((1, *image_hw, 3)), jnp.zeros((1,), jnp.int32))
    return {"step": jnp.zeros((), jnp.int32), "params": variables["params"],
            "batch_stats": variables["batch_stats"], "opt_state": tx.init(variables["params"]),
            "rng": jax.random.fold_in(jax.random.PRNGKey(config.seed), 1)}


def backbone_init(config, tx, state_sh, fresh: str):
    """state -> state with the backbone of config.init_from (a pretrain run's teacher, or a
    ReID run's backbone) and a fresh optimizer state; the BNNeck (and any classifier) stay as
    initialised, which the log says in `fresh`."""

    def load(state):
        source = inference.init_source(config.init_from)
        params = init_from.merge_backbone(jax.device_get(state["params"]), source.backbone,
                                          config.model.pos_grid, config.init_from,
                                          source.pos_grid, log=logging.info)
        logging.info("init_from: %s of %s%s", fresh, config.data.name,
                     f" (the checkpoint's classifier had {source.num_classes} ids; not loaded)"
                     if source.num_classes else "")
        return jax.device_put(dict(state, params=params, opt_state=tx.init(params)), state_sh)

    return load
