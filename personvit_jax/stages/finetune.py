"""Supervised ReID fine-tuning: ViT + BNNeck, ID + triplet loss, P x K batches.

`train(config, workdir)` reads top to bottom in phases: workdir & logging, data, mesh, model &
optimizer, train state & shardings, steps, checkpoint (resume > init_from > scratch), train loop,
final evaluation. Importable from notebooks; `personvit_jax.main` calls it for stage=finetune.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging

from personvit_jax import datasets, inference, reid_state, validation
from personvit_jax.data import pipeline
from personvit_jax.evaluation import RetrievalEvaluator
from personvit_jax.losses import reid_loss
from personvit_jax.models.reid import reid_model_from_config
from personvit_jax.training import checkpointing, loop, optim, sharding
from personvit_jax.training.logging import MetricLogger
from personvit_jax.workdir import holds_workdir_lock


@holds_workdir_lock
def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Runs (or resumes) fine-tuning in `workdir`; returns the final evaluation summary."""
    # ------------------------------------------------------------------ workdir & logging
    # One run per workdir: @holds_workdir_lock took its lock before anything here was read.
    validation.check_finetune_config(config)
    is_main = jax.process_index() == 0
    workdir = validation.prepare_workdir(config, workdir, is_main)

    # ------------------------------------------------------------------ data
    splits = datasets.load_splits(config.data.name, config.data.data_dir,
                                  config.data.synthetic.to_dict())
    # Label-efficiency runs train on a seeded fraction of the identities (1.0 = all).
    train_split = pipeline.subset_identities(splits["train"], config.data.train_id_fraction,
                                             config.data.subset_seed)
    num_classes = train_split.num_ids
    validation.check_finetune_data(config, num_classes)
    batch_size = config.data.num_ids_per_batch * config.data.num_instances
    steps_per_epoch = max(1, len(train_split) // batch_size)
    total_steps = config.optim.epochs * steps_per_epoch
    logging.info("%s: %d train images / %d ids, %d query, %d gallery; %d steps/epoch, %d steps",
                 config.data.name, len(train_split), num_classes, len(splits["query"]),
                 len(splits["gallery"]), steps_per_epoch, total_steps)
    train_ds = pipeline.train_iterator(train_split, config.data, total_steps, config.seed,
                                       jax.process_index(), jax.process_count())
    data_iter = iter(train_ds)

    # ------------------------------------------------------------------ mesh
    mesh = sharding.make_mesh(config.mesh)
    sharding.check_batch_divisible(batch_size, mesh, "train batch (P x K)")
    sharding.check_batch_divisible(config.eval.batch_size, mesh, "config.eval.batch_size")
    # Micro-batches of whole identities, >= 2 each (the batch-hard triplet needs negatives).
    optim.check_accum_steps(batch_size, config.optim.accum_steps, config.data.num_instances,
                            mesh.devices.size, "train batch (P x K)", min_groups=2)

    # ------------------------------------------------------------------ model & optimizer
    num_cams = pipeline.num_cameras(config.data.name, splits, config.model.sie)
    model = reid_model_from_config(config, num_classes, num_cams)
    h, w = config.data.image_size
    lr_scales = None
    if config.optim.layer_decay != 1.0:
        abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                                     jnp.zeros((1, h, w, 3)),
                                                     jnp.zeros((1,), jnp.int32)))["params"]
        lr_scales = optim.layer_decay_scales(abstract, model.backbone.depth,
                                             config.optim.layer_decay)
    tx, lr_schedule = optim.make_finetune_optimizer(config.optim, steps_per_epoch, lr_scales)
    use_cams = config.model.sie

    # ------------------------------------------------------------------ train state & shardings
    # Parameters and optimizer state replicated or FSDP-sharded by sharding.STATE_RULES.
    state, state_sh = sharding.init_sharded(
        lambda: reid_state.init_train_state(model, tx, config, (h, w)), mesh, config.mesh)

    # ------------------------------------------------------------------ steps
    train_step = sharding.jit_train_step(make_train_step(model, tx, lr_schedule, config),
                                         state_sh, mesh)

    e = config.eval
    variables_sh = {"params": state_sh["params"], "batch_stats": state_sh["batch_stats"]}
    embed = sharding.jit_embed(
        inference.reid_embed_fn(model, e.neck_feat, e.normalize, e.flip, use_cams),
        variables_sh, mesh)
    evaluator = RetrievalEvaluator(
        splits["query"], splits["gallery"],
        inference.Preprocessing(tuple(config.data.image_size), tuple(config.data.mean),
                                tuple(config.data.std)),
        mesh, e.batch_size, metric=e.metric, max_rank=e.max_rank,
        num_workers=config.data.num_workers, prefetch=config.data.prefetch)

    def run_eval(state) -> dict[str, Any]:
        variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
        return evaluator.run(functools.partial(embed, variables)).summary

    # ------------------------------------------------------------------ checkpoint
    # Init order: 1) resume from this workdir, 2) config.init_from, 3) scratch (as initialised).
    ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"),
                                      max_to_keep=config.keep_checkpoints,
                                      save_interval_steps=config.checkpoint_every_steps)

    state = checkpointing.restore_or_initialize(
        ckpt, state, data_iter, reid_state.backbone_init(
            config, tx, state_sh, f"BNNeck and ID classifier start fresh for the {num_classes} ids")
        if config.init_from else None, log=logging.info, warn=logging.warning)

    # ------------------------------------------------------------------ train loop
    logger = MetricLogger(workdir, total_steps, batch_size)
    eval_every = config.eval.every_epochs * steps_per_epoch
    state, step, preempted = loop.run(state, data_iter, train_step, mesh=mesh, ckpt=ckpt,
                                      logger=logger, total_steps=total_steps,
                                      log_every=config.log_every_steps,
                                      eval_every=eval_every, eval_fn=run_eval, eval_prefix="eval",
                                      nonfinite=config.nonfinite)
    if preempted:  # SIGTERM: checkpoint saved; rerunning the command resumes
        return loop.close_preempted(logger, ckpt, step)

    # ------------------------------------------------------------------ final evaluation
    return loop.finish(state, step, eval_fn=run_eval, eval_prefix="eval", logger=logger,
                       ckpt=ckpt, workdir=workdir, results={"dataset": config.data.name})


def make_train_step(model, tx, lr_schedule, config):
    """(state, batch) -> (state, metrics): one SGD/AdamW step on ID + triplet loss (unjitted;
    the caller jits it with its shardings). batch: images [B, H, W, 3], labels [B], camids [B]
    in P x K order (K consecutive rows per identity)."""
    use_cams = config.model.sie
    loss_kw = dict(id_weight=config.loss.id_weight, triplet_weight=config.loss.triplet_weight,
                   label_smoothing=config.loss.label_smoothing,
                   triplet_margin=_triplet_margin(config.loss))
    accum_steps = config.optim.accum_steps

    def grad_fn(params, batch_stats, batch, rng):
        def loss_fn(params):
            out, new_vars = model.apply(
                {"params": params, "batch_stats": batch_stats}, batch["images"],
                batch["camids"] if use_cams else None, train=True, mutable=["batch_stats"],
                rngs={"dropout": rng})
            loss, metrics = reid_loss(out, batch["labels"], **loss_kw)
            return loss, (metrics, new_vars["batch_stats"])

        grads, (metrics, batch_stats) = jax.grad(loss_fn, has_aux=True)(params)
        return grads, batch_stats, metrics

    def train_step(state, batch):
        # One key per step from (seed, step): drop path is the same on resume and on any mesh.
        rng = jax.random.fold_in(state["rng"], state["step"])
        # accum_steps > 1: micro-batches of whole identities (groups of K rows); the triplet
        # mines and BatchNorm normalises within each, its running stats update once per
        # micro-batch; gradients and metrics are micro-batch means; one optimizer update.
        grads, batch_stats, metrics = optim.accumulate_gradients(
            grad_fn, state["params"], state["batch_stats"], batch, rng, accum_steps,
            group=config.data.num_instances)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        metrics["lr"] = lr_schedule(state["step"])
        metrics["grad_norm"] = optax.tree.norm(grads)
        params = jax.tree.map(jnp.add, state["params"], updates)
        new_state = dict(state, step=state["step"] + 1, params=params, batch_stats=batch_stats,
                         opt_state=opt_state)
        return loop.guard_nonfinite(state, new_state, metrics)

    return train_step


def _triplet_margin(loss_cfg):
    """None = soft margin; else the hinge margin (values checked by validation)."""
    return None if loss_cfg.triplet == "soft" else float(loss_cfg.margin)
