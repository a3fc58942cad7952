"""Evaluate a checkpoint on a dataset's query / gallery splits.

`evaluate(config, workdir)` reads top to bottom: outputs (never overwritten unless asked),
data, checkpoint -> embed function (architecture and preprocessing from the run's saved config),
features, metrics (+ re-ranking), files. Writes into `workdir`:
  eval_results.json  mAP, mINP, rank-1/5/10 (and under "rerank" the re-ranked ones)
  features.npz       query/gallery features, pids, camids and image names
  ranks/             <query>.png rank lists and worst_queries.png
  eval_config.json   the resolved config (architecture and preprocessing actually used)
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from personvit_jax import datasets, files, inference, validation
from personvit_jax.data import layouts
from personvit_jax.evaluation import RetrievalEvaluator, distances, visualize
from personvit_jax.training import checkpointing, sharding
from personvit_jax.workdir import holds_workdir_lock

OUTPUTS = ("eval_results.json", "features.npz", "ranks", "eval_config.json")


@holds_workdir_lock
def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Runs the evaluation; returns the contents of eval_results.json."""
    # ------------------------------------------------------------------ outputs
    # One run per output folder: @holds_workdir_lock took its lock (workdir.lock) first.
    workdir = os.path.abspath(os.path.expanduser(workdir))
    if not config.checkpoint:
        raise ValueError("config.checkpoint is empty: pass --config.checkpoint=RUN_WORKDIR (or a "
                         "checkpoints/ folder, a step folder, a converted checkpoint folder)")
    checkpointing.resolve_checkpoint(config.checkpoint)  # a wrong path fails before any data
    existing = [n for n in OUTPUTS if os.path.exists(os.path.join(workdir, n))]
    if existing and not config.overwrite:
        raise FileExistsError(f"{workdir} already holds {existing}: choose another --workdir or "
                              "pass --config.overwrite=True to replace them")
    validation.check_eval_block(config)
    is_main = jax.process_index() == 0

    # ------------------------------------------------------------------ data
    splits = datasets.evaluation_splits(config.data)
    query, gallery = splits["query"], splits["gallery"]

    # ------------------------------------------------------------------ checkpoint -> embed
    mesh = sharding.make_mesh(config.mesh)
    e = config.eval
    sharding.check_batch_divisible(e.batch_size, mesh, "config.eval.batch_size")
    loaded = inference.load_model(config.checkpoint, config.model, config.data)
    for split in (query, gallery):
        loaded.check_camera_ids(split.camids, f"{config.data.name} {split.name}")
    repl = sharding.replicated(mesh)
    embed = functools.partial(
        sharding.jit_embed(loaded.embed_fn(e.neck_feat, e.normalize, e.flip), repl, mesh),
        jax.device_put(loaded.variables, repl))
    logging.info("evaluating %s", inference.describe(loaded))

    # ------------------------------------------------------------------ features -> metrics
    evaluator = RetrievalEvaluator(
        query, gallery, loaded.preprocessing, mesh, e.batch_size, metric=e.metric,
        max_rank=e.max_rank, camera_bias=True,
        rerank={"k1": e.k1, "k2": e.k2, "lambda_value": e.lambda_value} if e.rerank else None,
        num_workers=config.data.num_workers, prefetch=config.data.prefetch)
    r = evaluator.run(embed, progress=is_main)
    qf, gf = r.query_features, r.gallery_features
    results = {"dataset": config.data.name, "checkpoint": loaded.checkpoint, "kind": loaded.kind,
               "metric": e.metric, "neck_feat": e.neck_feat, "flip": bool(e.flip), **r.summary}
    logging.info("results: %s", json.dumps(results))
    if not is_main:
        return results

    # ------------------------------------------------------------------ files
    os.makedirs(workdir, exist_ok=True)
    names = {"query": image_names(query, config.data), "gallery": image_names(gallery, config.data)}
    files.save_npz(os.path.join(workdir, "features.npz"), {
        "query_features": qf, "gallery_features": gf, "query_pids": query.pids,
        "gallery_pids": gallery.pids, "query_camids": query.camids,
        "gallery_camids": gallery.camids, "query_names": np.asarray(names["query"]),
        "gallery_names": np.asarray(names["gallery"])})
    resolved = ml_collections.ConfigDict(config.to_dict())
    p = loaded.preprocessing
    resolved.model, resolved.data.image_size = loaded.model_config, p.image_size
    resolved.data.mean, resolved.data.std = p.mean, p.std
    files.write_text(os.path.join(workdir, "eval_config.json"),
                     resolved.to_json_best_effort(indent=2))
    ranks_dir = os.path.join(workdir, "ranks")
    if os.path.isdir(ranks_dir):
        shutil.rmtree(ranks_dir)  # only reached with config.overwrite
    chosen = chosen_queries(query, config.ranks)
    dist_fn = distances.feature_distance_rows(qf, gf, e.metric, distances.DEFAULT_CHUNK)
    visualize.write_rank_lists(ranks_dir, query, gallery, dist_fn, r.per_query, chosen,
                               config.ranks.top_k, config.ranks.num_worst)
    files.write_json(os.path.join(workdir, "eval_results.json"), results)
    return results


def image_names(split, data_cfg) -> list[str]:
    """Image names for features.npz: paths relative to the dataset folder for a raw folder, the
    names recorded at build time for a TFDS build."""
    if split.records is not None:
        return list(split.paths)
    root = (data_cfg.root if data_cfg.name == "query_gallery"
            else layouts.dataset_root(data_cfg.name, data_cfg.data_dir))
    return [os.path.relpath(p, root) for p in split.paths]


def chosen_queries(query, ranks_cfg) -> list[int]:
    """Query indices for rank-list pictures: the named files, else `num_queries` spread evenly."""
    if ranks_cfg.queries:
        by_name = {os.path.basename(p): i for i, p in enumerate(query.paths)}
        wanted = [n.strip() for n in ranks_cfg.queries.split(",") if n.strip()]
        missing = [n for n in wanted if n not in by_name]
        if missing:
            raise ValueError(f"config.ranks.queries: {missing} are not query images (e.g. "
                             f"{os.path.basename(query.paths[0])})")
        return [by_name[n] for n in wanted]
    n = min(ranks_cfg.num_queries, len(query))
    return sorted(set(np.linspace(0, len(query) - 1, n).round().astype(int).tolist())) if n else []

