"""Label-free ReID fine-tuning (USL) and domain adaptation (UDA) by Cluster Contrast.

Every epoch: features of the train images (test transform) -> k-reciprocal Jaccard graph ->
DBSCAN pseudo identities (outliers dropped) -> a memory of cluster centres; then
`optim.iters_per_epoch` steps of InfoNCE against that memory on P x K batches of pseudo
identities, the memory moving with each batch. UDA is the same run started from a model
fine-tuned on another dataset (`init_from`). The train split's identity labels are never read
for training: they only score the clustering (purity, NMI) when the data has them.

`train(config, workdir)` reads top to bottom in phases: workdir & logging, data, mesh, model &
optimizer, train state & shardings, steps, checkpoint (resume > init_from > scratch),
evaluation of the start, epochs (cluster, train), final evaluation. The clustering's result
(labels, memory, cluster count, its epoch) is part of the train state, so a resumed run
continues mid-epoch with the same pseudo identities and the same batches.
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from personvit_jax import clustering, datasets, files, inference, reid_state, validation
from personvit_jax.data import pipeline
from personvit_jax.evaluation import RetrievalEvaluator
from personvit_jax.evaluation.features import extract_features
from personvit_jax.evaluation.rerank import jaccard_graph
from personvit_jax.linalg import l2_normalize
from personvit_jax.losses import cluster_contrast_loss
from personvit_jax.models.reid import reid_model_from_config
from personvit_jax.training import checkpointing, loop, optim, sharding
from personvit_jax.training.logging import MetricLogger
from personvit_jax.workdir import holds_workdir_lock

START_EVAL = "start_eval.json"  # the starting model's evaluation (source-only, for UDA)


@holds_workdir_lock
def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Runs (or resumes) USL / UDA in `workdir`; returns the final evaluation summary."""
    # ------------------------------------------------------------------ workdir & logging
    validation.check_usl_config(config)
    is_main = jax.process_index() == 0
    workdir = validation.prepare_workdir(config, workdir, is_main)

    # ------------------------------------------------------------------ data
    splits = datasets.load_splits(config.data.name, config.data.data_dir,
                                  config.data.synthetic.to_dict())
    hidden = np.asarray(splits["train"].pids)  # monitoring only (clustering.quality)
    camids = np.asarray(splits["train"].camids)  # known without labels: cluster.camera_centred
    images = pipeline.without_labels(splits["train"])  # what training reads
    iters = config.optim.iters_per_epoch
    batch_size = config.data.num_ids_per_batch * config.data.num_instances
    total_steps = config.optim.epochs * iters
    logging.info("%s: %d unlabeled train images, %d query, %d gallery; %d epochs x %d steps",
                 config.data.name, len(images), len(splits["query"]), len(splits["gallery"]),
                 config.optim.epochs, iters)

    # ------------------------------------------------------------------ mesh
    mesh = sharding.make_mesh(config.mesh)
    sharding.check_batch_divisible(batch_size, mesh, "train batch (P x K)")
    sharding.check_batch_divisible(config.eval.batch_size, mesh, "config.eval.batch_size")

    # ------------------------------------------------------------------ model & optimizer
    model = reid_model_from_config(config, num_classes=0)  # BNNeck, no classifier
    h, w = config.data.image_size
    tx, lr_schedule = optim.make_finetune_optimizer(config.optim, iters)

    # ------------------------------------------------------------------ train state & shardings
    # + the clustering: memory [N, D] (row c = centre of cluster c < num_clusters; N = the
    # number of images bounds the cluster count), labels [N], num_clusters, cluster_epoch.
    state, state_sh = sharding.init_sharded(
        lambda: init_usl_state(model, tx, config, (h, w), len(images)), mesh, config.mesh)

    # ------------------------------------------------------------------ steps
    train_step = sharding.jit_train_step(make_usl_step(model, tx, lr_schedule, config),
                                         state_sh, mesh)
    e = config.eval
    variables_sh = {"params": state_sh["params"], "batch_stats": state_sh["batch_stats"]}
    embed = sharding.jit_embed(inference.reid_embed_fn(model, e.neck_feat, e.normalize, e.flip,
                                                       False), variables_sh, mesh)
    preprocessing = inference.Preprocessing(tuple(config.data.image_size),
                                            tuple(config.data.mean), tuple(config.data.std))
    evaluator = RetrievalEvaluator(splits["query"], splits["gallery"], preprocessing, mesh,
                                   e.batch_size, metric=e.metric, max_rank=e.max_rank,
                                   num_workers=config.data.num_workers,
                                   prefetch=config.data.prefetch)

    def bound_embed(state):
        return functools.partial(embed, {"params": state["params"],
                                         "batch_stats": state["batch_stats"]})

    def run_eval(state) -> dict[str, Any]:
        return evaluator.run(bound_embed(state)).summary

    def recluster(state, epoch: int) -> tuple[dict, dict]:
        """Pseudo identities of every train image from the current model, into the state."""
        t0 = time.perf_counter()
        feats = extract_features(bound_embed(state), images, preprocessing, mesh, e.batch_size,
                                 config.data.num_workers, config.data.prefetch)
        labels, stats = pseudo_labels(feats, config.cluster, hidden, camids, log=logging.info)
        num = int(stats["clusters"])
        if num < config.data.num_ids_per_batch:
            raise ValueError(
                f"epoch {epoch}: DBSCAN (config.cluster.eps={config.cluster.eps}, min_samples="
                f"{config.cluster.min_samples}) found {num} clusters and "
                f"{int(stats['outliers'])} outliers among {len(images)} images, fewer clusters "
                f"than config.data.num_ids_per_batch={config.data.num_ids_per_batch} pseudo "
                "identities per batch: raise cluster.eps or lower data.num_ids_per_batch")
        memory = clustering.cluster_centres(feats, labels, len(images))
        state = dict(state, **jax.device_put(
            {"memory": memory, "labels": labels, "num_clusters": np.int32(num),
             "cluster_epoch": np.int32(epoch)},
            {k: state_sh[k] for k in ("memory", "labels", "num_clusters", "cluster_epoch")}))
        return state, dict(stats, seconds=time.perf_counter() - t0)

    # ------------------------------------------------------------------ checkpoint
    # Init order: 1) resume from this workdir, 2) config.init_from, 3) scratch. Batches follow
    # from (seed, step, labels in the state): no iterator position is saved.
    ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"),
                                      max_to_keep=config.keep_checkpoints,
                                      save_interval_steps=config.checkpoint_every_steps)
    state = checkpointing.restore_or_initialize(
        ckpt, state, None, reid_state.backbone_init(config, tx, state_sh,
                                                "the BNNeck starts fresh for the pseudo identities")
        if config.init_from else None, log=logging.info, warn=logging.warning)

    # ------------------------------------------------------------------ evaluation of the start
    logger = MetricLogger(workdir, total_steps, batch_size)
    start_path = os.path.join(workdir, START_EVAL)
    with loop.stop_on_failed_write(ckpt, logger):
        if e.at_start and int(state["step"]) == 0 and not os.path.isfile(start_path):
            start = run_eval(state)  # the starting model's features (source-only for UDA)
            logger.write(0, start, prefix="eval")
            if is_main:
                files.write_json(start_path, start)

    # ------------------------------------------------------------------ epochs: cluster, train
    step = int(state["step"])
    for epoch in range(step // iters, config.optim.epochs):
        if int(state["cluster_epoch"]) != epoch:  # a resumed run keeps its epoch's clusters
            with loop.stop_on_failed_write(ckpt, logger):
                state, stats = recluster(state, epoch)
                logger.write(epoch * iters, stats, prefix="cluster")
        train_images = pipeline.pseudo_labelled(images, np.asarray(state["labels"]))
        data_iter = iter(pipeline.train_iterator(
            train_images, config.data, (epoch + 1) * iters, config.seed, jax.process_index(),
            jax.process_count(), first_step=int(state["step"]), cross_camera=True))
        state, step, preempted = loop.run(
            state, data_iter, train_step, mesh=mesh, ckpt=ckpt, logger=logger,
            total_steps=(epoch + 1) * iters, log_every=config.log_every_steps, eval_every=0,
            eval_fn=run_eval, eval_prefix="eval", nonfinite=config.nonfinite,
            checkpoint_data=False)
        if preempted:  # SIGTERM: checkpoint saved; rerunning the command resumes
            return loop.close_preempted(logger, ckpt, step)
        last = epoch + 1 == config.optim.epochs
        if e.every_epochs and (epoch + 1) % e.every_epochs == 0 and not last:
            with loop.stop_on_failed_write(ckpt, logger):
                logger.write(step, run_eval(state), prefix="eval")

    # ------------------------------------------------------------------ final evaluation
    results = {"dataset": config.data.name, "init_from": config.init_from}
    if os.path.isfile(start_path):
        with open(start_path) as f:
            results["start"] = json.load(f)
    return loop.finish(state, step, eval_fn=run_eval, eval_prefix="eval", logger=logger,
                       ckpt=ckpt, workdir=workdir, results=results)


def pseudo_labels(feats_nd: np.ndarray, cluster_cfg, hidden_n: np.ndarray | None = None,
                  camids_n: np.ndarray | None = None, log=None
                  ) -> tuple[np.ndarray, dict[str, float]]:
    """Cluster ids [N] (-1 = outlier) of features [N, D] by DBSCAN on their Jaccard graph
    (of the per-camera centred features if cluster_cfg.camera_centred; needs `camids_n` [N]),
    and the clustering's statistics (purity / NMI when `hidden_n` holds real identities)."""
    c = cluster_cfg
    if c.camera_centred:
        if camids_n is None:
            raise ValueError("cluster.camera_centred=True needs the images' camera ids")
        feats_nd = clustering.centre_per_camera(feats_nd, camids_n)
    graph = jaccard_graph(feats_nd, c.k1, c.k2, max_distance=c.eps, log=log)
    labels = clustering.dbscan(graph, c.eps, c.min_samples)
    has_ids = hidden_n is not None and len(hidden_n) and (np.asarray(hidden_n) >= 0).all()
    stats = clustering.quality(labels, hidden_n if has_ids else None, camids_n)
    return labels, dict(stats, graph_edges=float(graph.nnz))


def make_usl_step(model, tx, lr_schedule, config):
    """(state, batch) -> (state, metrics): one step of InfoNCE against the cluster memory,
    then the memory's momentum update (unjitted; the caller jits it with its shardings).
    batch: images [B, H, W, 3], labels [B] (cluster ids) in P x K order."""
    m, group = config.memory, config.data.num_instances

    def train_step(state, batch):
        rng = jax.random.fold_in(state["rng"], state["step"])  # drop path: same on resume

        def loss_fn(params):
            out, new_vars = model.apply(
                {"params": params, "batch_stats": state["batch_stats"]}, batch["images"], None,
                train=True, mutable=["batch_stats"], rngs={"dropout": rng})
            feats = out["feats_bn"][:, 0]  # [B, D] Cluster Contrast: the BN'd CLS feature
            loss, acc = cluster_contrast_loss(feats, state["memory"], batch["labels"],
                                              state["num_clusters"], m.temp)
            return loss, (feats, acc, new_vars["batch_stats"])

        (loss, (feats, acc, batch_stats)), grads = jax.value_and_grad(
            loss_fn, has_aux=True)(state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = jax.tree.map(jnp.add, state["params"], updates)
        unit = l2_normalize(feats)
        memory = clustering.update_memory(state["memory"], unit, batch["labels"], m.momentum,
                                          group, m.hard)
        metrics = {"loss": loss, "memory_accuracy": acc, "lr": lr_schedule(state["step"]),
                   "grad_norm": optax.tree.norm(grads)}
        new_state = dict(state, step=state["step"] + 1, params=params, batch_stats=batch_stats,
                         opt_state=opt_state, memory=memory)
        return loop.guard_nonfinite(state, new_state, metrics)

    return train_step


def init_usl_state(model, tx, config, image_hw, num_images: int) -> dict:
    """The fine-tune train state + an empty clustering (cluster_epoch -1: none yet)."""
    state = reid_state.init_train_state(model, tx, config, image_hw)
    dim = state["params"]["neck"]["bottleneck"]["scale"].shape[0]
    return dict(state, memory=jnp.zeros((num_images, dim), jnp.float32),
                labels=jnp.full((num_images,), -1, jnp.int32),
                num_clusters=jnp.zeros((), jnp.int32),
                cluster_epoch=jnp.full((), -1, jnp.int32))
