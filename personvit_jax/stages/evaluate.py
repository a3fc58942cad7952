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

import json
import os
import shutil
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from personvit_jax.data import layouts, pipeline
from personvit_jax.evaluation import ranking, visualize
from personvit_jax.evaluation.features import (checkpoint_embedder, extract_features,
                                               progress_printer, save_npz, write_text)
from personvit_jax.training import checkpointing, sharding

OUTPUTS = ("eval_results.json", "features.npz", "ranks", "eval_config.json")


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Runs the evaluation; returns the contents of eval_results.json."""
    # ------------------------------------------------------------------ outputs
    workdir = os.path.abspath(os.path.expanduser(workdir))
    if not config.checkpoint:
        raise ValueError("config.checkpoint is empty: pass --config.checkpoint=RUN_WORKDIR (or a "
                         "checkpoints/ folder, a step folder, a converted checkpoint folder)")
    existing = [n for n in OUTPUTS if os.path.exists(os.path.join(workdir, n))]
    if existing and not config.overwrite:
        raise FileExistsError(f"{workdir} already holds {existing}: choose another --workdir or "
                              "pass --config.overwrite=True to replace them")
    is_main = jax.process_index() == 0

    # ------------------------------------------------------------------ data
    splits = pipeline.load_splits(config.data.name, config.data.data_dir,
                                  config.data.synthetic.to_dict())
    query, gallery = splits["query"], splits["gallery"]

    # ------------------------------------------------------------------ checkpoint -> embed
    mesh = sharding.make_mesh(config.mesh)
    sharding.check_batch_divisible(config.eval.batch_size, mesh, "config.eval.batch_size")
    step_dir = checkpointing.resolve_checkpoint(config.checkpoint)
    fn, data_cfg, model_cfg, kind = checkpoint_embedder(config, mesh)
    logging.info("evaluating %s (%s, %s) at %s, mean %s std %s", step_dir, kind, model_cfg.name,
                 data_cfg.image_size, data_cfg.mean, data_cfg.std)

    # ------------------------------------------------------------------ features
    feats = {}
    for name, split in (("query", query), ("gallery", gallery)):
        feats[name] = extract_features(fn, split, data_cfg, mesh, config.eval.batch_size,
                                       progress=progress_printer(name) if is_main else None)

    # ------------------------------------------------------------------ metrics
    e = config.eval
    qf, gf = feats["query"], feats["gallery"]
    args = (qf, gf, query.pids, gallery.pids, query.camids, gallery.camids)
    per_query = ranking.evaluate_per_query(*args, metric=e.metric)
    results = {"dataset": config.data.name, "checkpoint": step_dir, "kind": kind,
               "metric": e.metric, "neck_feat": e.neck_feat, "flip": bool(e.flip),
               **ranking.summarize(ranking.aggregate(per_query, e.max_rank)),
               **ranking.camera_bias(qf, gf, query.camids, gallery.camids, metric=e.metric)}
    if e.rerank:
        rr = {"k1": e.k1, "k2": e.k2, "lambda_value": e.lambda_value}
        reranked = ranking.evaluate(*args, metric=e.metric, rerank=rr, max_rank=e.max_rank)
        results["rerank"] = {**rr, **ranking.summarize(reranked)}
    logging.info("results: %s", json.dumps(results))
    if not is_main:
        return results

    # ------------------------------------------------------------------ files
    os.makedirs(workdir, exist_ok=True)
    names = {"query": image_names(query, config.data), "gallery": image_names(gallery, config.data)}
    save_npz(os.path.join(workdir, "features.npz"), {
        "query_features": qf, "gallery_features": gf, "query_pids": query.pids,
        "gallery_pids": gallery.pids, "query_camids": query.camids,
        "gallery_camids": gallery.camids, "query_names": np.asarray(names["query"]),
        "gallery_names": np.asarray(names["gallery"])})
    resolved = ml_collections.ConfigDict(config.to_dict())
    resolved.model, resolved.data.image_size = model_cfg, data_cfg.image_size
    resolved.data.mean, resolved.data.std = data_cfg.mean, data_cfg.std
    write_text(os.path.join(workdir, "eval_config.json"), resolved.to_json_best_effort(indent=2))
    ranks_dir = os.path.join(workdir, "ranks")
    if os.path.isdir(ranks_dir):
        shutil.rmtree(ranks_dir)  # only reached with config.overwrite
    chosen = chosen_queries(query, config.ranks)
    dist_fn = ranking.feature_distance_rows(qf, gf, e.metric, ranking.DEFAULT_CHUNK)
    visualize.write_rank_lists(ranks_dir, query, gallery, dist_fn, per_query, chosen,
                               config.ranks.top_k, config.ranks.num_worst)
    write_text(os.path.join(workdir, "eval_results.json"), json.dumps(results, indent=2))
    return results


def image_names(split, data_cfg) -> list[str]:
    """Image names for features.npz: paths relative to the dataset folder for a raw folder, the
    names recorded at build time for a TFDS build."""
    if split.records is not None:
        return list(split.paths)
    root = layouts.dataset_root(data_cfg.name, data_cfg.data_dir)
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

