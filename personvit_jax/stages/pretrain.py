"""Self-supervised pretraining (iBOT, as PersonViT): a student ViT + head learns to match an EMA
teacher on the CLS token of other views and on the patch tokens it sees masked.

`train(config, workdir)` reads top to bottom: workdir, data, mesh, model & optimizer, train
state, step, checkpoint (resume > init_from > scratch), train loop with a retrieval monitor of
the teacher's CLS feature, final monitor. The teacher backbone is what fine-tuning starts from.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from personvit_jax import datasets, inference, losses, validation
from personvit_jax.data import color_augment, pipeline
from personvit_jax.evaluation import RetrievalEvaluator
from personvit_jax.evaluation.features import effective_rank
from personvit_jax.models import init_from
from personvit_jax.models.pretrain import pretrain_model_from_config
from personvit_jax.models.vit import grid_size
from personvit_jax.training import checkpointing, loop, optim, sharding
from personvit_jax.training.logging import MetricLogger
from personvit_jax.workdir import holds_workdir_lock


@holds_workdir_lock
def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Runs (or resumes) pretraining in `workdir`; returns the last monitor summary."""
    # ------------------------------------------------------------------ workdir
    # One run per workdir: @holds_workdir_lock took its lock before anything here was read.
    validation.check_pretrain_config(config)
    is_main = jax.process_index() == 0
    workdir = validation.prepare_workdir(config, workdir, is_main)

    # ------------------------------------------------------------------ data
    images = datasets.unlabeled_images(config.data, os.path.join(workdir, "image_index.txt"))
    validation.check_pretrain_data(config, len(images))
    batch_size = config.data.batch_size
    steps_per_epoch = len(images) // batch_size
    total_steps = config.optim.epochs * steps_per_epoch
    mask_grid = grid_size(config.data.global_size, config.model.patch_size,
                          config.model.patch_stride)
    logging.info("pretraining on %d images: %d steps/epoch, %d steps; %s global + %d x %s local "
                 "crops", len(images), steps_per_epoch, total_steps, config.data.global_size,
                 config.data.num_local_crops, config.data.local_size)
    num_centres = validation.check_camera_centres(config, images)  # 1 = DINO's one centre
    data_iter = iter(pipeline.pretrain_iterator(
        images, config.data, config.mask, mask_grid, batch_size, total_steps, config.seed,
        jax.process_index(), jax.process_count(),
        with_camids=bool(config.loss.get("camera_centres", False))))
    monitor = datasets.load_splits(config.monitor.dataset, config.monitor.data_dir,
                                   config.data.synthetic.to_dict())

    # ------------------------------------------------------------------ mesh
    mesh = sharding.make_mesh(config.mesh)
    sharding.check_batch_divisible(batch_size, mesh, "config.data.batch_size")
    sharding.check_batch_divisible(config.monitor.batch_size, mesh, "config.monitor.batch_size")
    optim.check_accum_steps(batch_size, config.optim.accum_steps, 1, mesh.devices.size,
                            "config.data.batch_size")

    # ------------------------------------------------------------------ model & optimizer
    student = pretrain_model_from_config(config, student=True)
    teacher = pretrain_model_from_config(config, student=False)
    h, w = config.data.global_size
    abstract_params = jax.eval_shape(
        lambda: student.init(jax.random.PRNGKey(0), jnp.zeros((1, h, w, 3)))["params"])
    tx, schedules = make_optimizer(config, abstract_params, batch_size, steps_per_epoch)

    # ------------------------------------------------------------------ train state
    # Student, teacher and optimizer state replicated or FSDP-sharded by sharding.STATE_RULES.
    state, state_sh = sharding.init_sharded(
        lambda: init_pretrain_state(student, tx, config, num_centres), mesh, config.mesh)

    # ------------------------------------------------------------------ steps
    train_step = sharding.jit_train_step(
        make_pretrain_step(student, teacher, tx, schedules, config), state_sh,
        mesh)

    # The teacher's CLS feature, L2-normalised, retrieved on a labelled query/gallery set.
    embed = sharding.jit_embed(inference.backbone_embed_fn(teacher.backbone),
                               {"params": state_sh["teacher"]["backbone"]}, mesh)
    evaluator = RetrievalEvaluator(
        monitor["query"], monitor["gallery"],
        inference.Preprocessing(tuple(config.data.global_size), tuple(config.data.mean),
                                tuple(config.data.std)),
        mesh, config.monitor.batch_size, camera_bias=True,  # scene / colour-cast shortcut
        num_workers=config.data.num_workers, prefetch=config.data.prefetch)

    def run_monitor(state) -> dict[str, Any]:
        r = evaluator.run(functools.partial(embed, {"params": state["teacher"]["backbone"]}))
        return {**r.summary, "effective_rank": effective_rank(r.gallery_features)}

    # ------------------------------------------------------------------ checkpoint
    # Init order: 1) resume from this workdir, 2) config.init_from, 3) scratch.
    ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"),
                                      max_to_keep=config.keep_checkpoints,
                                      save_interval_steps=config.checkpoint_every_steps)

    def load_init(state):  # student and teacher both start from config.init_from
        source = inference.init_source(config.init_from)
        params = jax.device_get(state["student"])
        params = init_from.merge_backbone(params, source.backbone, config.model.pos_grid,
                                          config.init_from, source.pos_grid, log=logging.info)
        params = dict(params, head=init_from.transfer_head(params["head"], source.teacher_head,
                                                           config.init_from, log=logging.info))
        params = jax.tree.map(np.asarray, params)  # host copies: the two trees must not
        # share device buffers (the jitted step donates both)
        return jax.device_put(dict(state, student=params, teacher=jax.tree.map(np.copy, params),
                                   opt_state=tx.init(params)), state_sh)

    state = checkpointing.restore_or_initialize(
        ckpt, state, data_iter, load_init if config.init_from else None, log=logging.info,
        warn=logging.warning)

    # ------------------------------------------------------------------ train loop
    logger = MetricLogger(workdir, total_steps, batch_size)
    monitor_every = config.monitor.every_epochs * steps_per_epoch
    state, step, preempted = loop.run(state, data_iter, train_step, mesh=mesh, ckpt=ckpt,
                                      logger=logger, total_steps=total_steps,
                                      log_every=config.log_every_steps,
                                      eval_every=monitor_every, eval_fn=run_monitor,
                                      eval_prefix="monitor",
                                      nonfinite=config.nonfinite)
    if preempted:  # SIGTERM: checkpoint saved; rerunning the command resumes
        return loop.close_preempted(logger, ckpt, step)

    # ------------------------------------------------------------------ final monitor
    return loop.finish(state, step, eval_fn=run_monitor, eval_prefix="monitor", logger=logger,
                       ckpt=ckpt, workdir=workdir,
                       results={"dataset": config.monitor.dataset, "feature": "teacher CLS"})


def init_pretrain_state(student, tx, config, num_centres: int = 1) -> dict:
    """{step, student, teacher (= student at start), opt_state, center [C, K],
    center_patch [C, K], rng}; C = 1 (DINO's one centre) or the cameras (loss.camera_centres)."""
    h, w = config.data.global_size
    params = student.init(jax.random.PRNGKey(config.seed), jnp.zeros((1, h, w, 3)))["params"]
    k, kp = config.head.out_dim, config.head.patch_out_dim
    return {"step": jnp.zeros((), jnp.int32), "student": params, "teacher": params,
            "opt_state": tx.init(params), "center": jnp.zeros((num_centres, k)),
            "center_patch": jnp.zeros((num_centres, kp)),
            "rng": jax.random.fold_in(jax.random.PRNGKey(config.seed), 1)}


def camera_stats(t_cls_gbk, t_patch_gbnk, camids_b, num_cameras: int) -> dict:
    """Per camera: the sums [C, K] of its images' mean teacher outputs (over crops; over crops
    and patches) and its image counts [C], for `losses.update_camera_centres`."""
    cls_sums, counts = losses.camera_sums(jnp.mean(t_cls_gbk, axis=0), camids_b, num_cameras)
    patch_sums, _ = losses.camera_sums(jnp.mean(t_patch_gbnk, axis=(0, 2)), camids_b,
                                       num_cameras)
    return {"cls_sums": cls_sums, "patch_sums": patch_sums, "camera_counts": counts}


def make_optimizer(config, params, batch_size: int, steps_per_epoch: int):
    """(tx, schedules): iBOT's AdamW with its schedules, the head's last layer frozen for
    `config.head.freeze_last_layer_epochs`. `params` may be abstract (shapes only)."""
    schedules = optim.pretrain_schedules(config.optim, config.loss, config.mask.start_epoch,
                                         batch_size, steps_per_epoch)
    tx = optim.make_pretrain_optimizer(config.optim, params, schedules, last_layer_mask(params),
                                       config.head.freeze_last_layer_epochs * steps_per_epoch)
    return tx, schedules


def last_layer_mask(params):
    """True on the head's last layer(s), which iBOT keeps frozen for the first epoch(s)."""
    is_last = lambda path: any(getattr(p, "key", None) in ("last_layer", "last_layer_patch")
                               for p in path)
    return jax.tree_util.tree_map_with_path(lambda path, _: is_last(path), params)


def make_pretrain_step(student, teacher, tx, schedules, config):
    """(state, batch) -> (state, metrics), unjitted. batch: uint8 views global [B, 2, H, W, 3],
    local [B, L, h, w, 3] and their colour parameters global_color [B, 2, P], local_color
    [B, L, P] (`data.color_augment`, applied here), masks [B, 2, N] (True = masked for the
    student)."""
    l = config.loss
    camera_centres = bool(l.get("camera_centres", False))

    def crop_major(x):  # [B, C, ...] -> [C * B, ...]: crop c of every image is contiguous
        return jnp.swapaxes(x, 0, 1).reshape((-1,) + x.shape[2:])

    accum_steps = config.optim.accum_steps

    def train_step(state, batch):
        step = state["step"]
        t_temp, tp_temp = schedules["teacher_temp"](step), schedules["teacher_patch_temp"](step)

        def grad_fn(params, carry, batch, rng):
            """Gradient and metrics of one (micro-)batch, with the teacher's mean outputs [K]
            over its crops / patches (per camera: sums [C, K] and counts [C]) for the centres."""
            rng_g, rng_l = jax.random.split(rng)
            b, n_local = batch["global"].shape[0], batch["local"].shape[1]
            views = lambda k: crop_major(color_augment.apply(
                batch[k], batch[f"{k}_color"], config.data.mean, config.data.std))
            globals_, locals_, masks = views("global"), views("local"), crop_major(batch["masks"])
            t = teacher.apply({"params": state["teacher"]}, globals_)
            t_cls = t["cls_logits"].reshape(2, b, -1)
            t_patch = t["patch_logits"].reshape(2, b, masks.shape[-1], -1)
            centre, centre_patch = state["center"], state["center_patch"]
            if camera_centres:  # each image's camera centre, subtracted here
                cams = batch["camids"]
                cam_stats = camera_stats(t_cls, t_patch, cams, centre.shape[0])
                t_cls = t_cls - centre[cams][None]
                t_patch = t_patch - centre_patch[cams][None, :, None]
                centre, centre_patch = jnp.zeros_like(centre[:1]), jnp.zeros_like(centre_patch[:1])

            def loss_fn(params):
                sg = student.apply({"params": params}, globals_, mask_bn=masks, train=True,
                                   rngs={"dropout": rng_g})
                s_cls = [sg["cls_logits"].reshape(2, b, -1)]
                if n_local:
                    sl = student.apply({"params": params}, locals_,
                                       train=True, with_patches=False, rngs={"dropout": rng_l})
                    s_cls.append(sl["cls_logits"].reshape(n_local, b, -1))
                s_cls = jnp.concatenate(s_cls)
                s_patch = sg["patch_logits"].reshape(t_patch.shape)
                loss = l.cls_weight * cls_term(s_cls) + l.patch_weight * patch_term(s_patch)
                return loss, ({"loss": loss}, (s_cls, s_patch))

            cls_term = lambda s: losses.cls_distillation(s, t_cls, centre, l.student_temp,
                                                         t_temp)
            patch_term = lambda s: losses.masked_patch_distillation(
                s, t_patch, masks.reshape(2, b, -1), centre_patch, l.student_temp, tp_temp)
            grads, (metrics, (s_cls, s_patch)) = jax.grad(loss_fn, has_aux=True)(params)
            # Each loss's gradient at the student's logits (the head's output): which branch
            # drives the shared head and backbone (a few small extra passes over [V, B, K]).
            cls_loss, cls_dlogits = jax.value_and_grad(cls_term)(jax.lax.stop_gradient(s_cls))
            patch_loss, patch_dlogits = jax.value_and_grad(patch_term)(
                jax.lax.stop_gradient(s_patch))
            mean_k = lambda x: jnp.mean(x.astype(jnp.float32).reshape(-1, x.shape[-1]), axis=0)
            collapse = losses.teacher_entropies(t_cls, centre, t_temp)
            metrics.update(cls_loss=cls_loss, patch_loss=patch_loss,
                           cls_logit_grad_norm=l.cls_weight * jnp.linalg.norm(cls_dlogits),
                           patch_logit_grad_norm=l.patch_weight * jnp.linalg.norm(patch_dlogits),
                           masked_fraction=jnp.mean(masks.astype(jnp.float32)),
                           teacher_entropy_of_mean=collapse["entropy_of_mean"],
                           teacher_mean_entropy=collapse["mean_entropy"],
                           teacher_prototypes_used=losses.prototypes_used(t_cls, centre),
                           teacher_feature_std=losses.feature_std(t["cls_feat"]))
            if camera_centres:
                metrics.update(cam_stats)
            else:
                metrics.update(teacher_cls_mean=mean_k(t_cls), teacher_patch_mean=mean_k(t_patch))
            return grads, carry, metrics

        # accum_steps > 1: micro-batches of every A-th image. Every loss term is a mean over
        # images, so the mean of the micro-batch gradients is the whole batch's gradient, and
        # the mean of the micro-batches' teacher means is the whole batch's (for the centres).
        grads, _, metrics = optim.accumulate_gradients(
            grad_fn, state["student"], None, batch, jax.random.fold_in(state["rng"], step),
            accum_steps)
        if camera_centres:  # averaged over micro-batches, sums / counts stay the means
            centres = {"center": losses.update_camera_centres(
                           state["center"], metrics.pop("cls_sums"), metrics["camera_counts"],
                           l.center_momentum),
                       "center_patch": losses.update_camera_centres(
                           state["center_patch"], metrics.pop("patch_sums"),
                           metrics.pop("camera_counts"), l.center_momentum)}
        else:
            centres = {"center": losses.update_center(
                           state["center"], metrics.pop("teacher_cls_mean")[None],
                           l.center_momentum),
                       "center_patch": losses.update_center(
                           state["center_patch"], metrics.pop("teacher_patch_mean")[None],
                           l.center_momentum)}
        # Clipping, AdamW and the frozen last layer of the first epoch(s): all in `tx`.
        updates, opt_state = tx.update(grads, state["opt_state"], state["student"])
        params = jax.tree.map(jnp.add, state["student"], updates)
        m = schedules["ema_momentum"](step)
        teacher_params = jax.tree.map(lambda tp, sp: m * tp + (1.0 - m) * sp,
                                      state["teacher"], params)
        new_state = dict(state, step=step + 1, student=params, teacher=teacher_params,
                         opt_state=opt_state, **centres)
        metrics.update(lr=schedules["lr"](step), weight_decay=schedules["weight_decay"](step),
                       ema_momentum=m, teacher_temp=t_temp, teacher_patch_temp=tp_temp,
                       grad_norm=optax.tree.norm(grads))
        return loop.guard_nonfinite(state, new_state, metrics)

    return train_step
