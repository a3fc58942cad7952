r"""Features of a folder of images, and nearest-neighbour look-ups against them.

  # every image under FOLDER (recursive, sorted) -> F.npz (features, names, settings)
  python -m personvit_jax.tools.extract --checkpoint=DIR --images=FOLDER --output=F.npz
  # the K gallery images nearest to one query image: printed, and drawn as a rank list
  python -m personvit_jax.tools.extract --checkpoint=DIR --gallery=F.npz --query=IMG --top=K
  python -m personvit_jax.tools.extract --checkpoint=DIR --images=FOLDER --query=IMG --top=K
  # an SIE (camera-embedding) model: one camera for all, or each image's from a CSV
  python -m personvit_jax.tools.extract --checkpoint=DIR --images=FOLDER --output=F.npz \
      --labels=CSV  # rows 'name,pid,camid', names relative to FOLDER (or --camera_id=N)
  # Market-1501 metrics of two feature files (no model): ids and cameras from --labels=CSV,
  # else those saved at extraction (--labels there), else Market-style names (0002_c1s1_...jpg)
  python -m personvit_jax.tools.extract --query_features=Q.npz --gallery=G.npz [--labels=CSV]

Preprocessing is the official test one: resize to the checkpoint's image size (its saved
config; else 256x128), bilinear, normalised with its mean/std (else 0.5 / 0.5, PersonViT and
TransReID). Model, feature and batch options come from configs/evaluate.py and can be changed
like any config field: `--config.eval.flip=True`, `--config.eval.neck_feat=after`,
`--config.eval.batch_size=64`, `--config.model.name=vit_small` (checkpoints without a config.json).
Nothing is overwritten unless --overwrite is given.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import os
import sys
from typing import Optional

import jax
import numpy as np
from absl import flags
from ml_collections import config_flags

from personvit_jax import cli, files, inference, validation
from personvit_jax.config_args import config_path
from personvit_jax.data.augment import load_rgb
from personvit_jax.data import layouts
from personvit_jax.data.layouts import Split, list_images
from personvit_jax.evaluation import RetrievalEvaluator, distances, visualize
from personvit_jax.evaluation.features import extract_features, progress_printer
from personvit_jax.training import sharding

_EVAL_CONFIG = config_path("evaluate")


def define_flags(fv: flags.FlagValues) -> None:
    config_flags.DEFINE_config_file("config", _EVAL_CONFIG, "Evaluate config (model, eval and "
                                    "data overrides).", flag_values=fv, lock_config=True)
    flags.DEFINE_string("checkpoint", None, "Run workdir, checkpoints/ folder, step folder or "
                        "converted checkpoint folder.", flag_values=fv)
    flags.DEFINE_string("images", None, "Folder of .jpg/.jpeg/.png images (recursive).",
                        flag_values=fv)
    flags.DEFINE_string("output", None, "Write the folder's features to this .npz.",
                        flag_values=fv)
    flags.DEFINE_string("gallery", None, "A .npz written by --output, searched by --query.",
                        flag_values=fv)
    flags.DEFINE_string("query", None, "An image to look up in the gallery.", flag_values=fv)
    flags.DEFINE_integer("top", 10, "Nearest gallery images to print and draw.", flag_values=fv)
    flags.DEFINE_string("draw", None, "PNG for the query's rank list (default: <query "
                        "name>_top<K>.png in the current folder).", flag_values=fv)
    flags.DEFINE_boolean("overwrite", False, "Replace existing output files.", flag_values=fv)
    flags.DEFINE_integer("camera_id", None, "Camera id (0-based) of all the images, for models "
                         "with SIE camera embeddings (per image: --labels).", flag_values=fv)
    flags.DEFINE_string("query_features", None, "A .npz written by --output: evaluate it as the "
                        "query set against --gallery (Market-1501 metrics; no model needed).",
                        flag_values=fv)
    flags.DEFINE_string("labels", None, "CSV of 'name,pid,camid' rows (camid 0-based; names "
                        "relative to --images, as the files store them). With --images: each "
                        "image's camera for SIE models, and pids / camids saved in --output. "
                        "With --query_features / --gallery: their labels (pid -1 = junk, left "
                        "out); default: Market-style file names.", flag_values=fv)


def folder_split(root: str, labels: Optional[dict] = None) -> Split:
    """Every image under `root` (recursive, sorted): pids and camera ids from `labels`
    ({name relative to root: (pid, camid)}, every image listed), else none."""
    split = Split.from_paths(os.path.basename(os.path.normpath(root)), list_images(root))
    if labels is None:
        return split
    names = [os.path.relpath(p, root) for p in split.paths]
    pids, camids = feature_file_labels(root, names, labels)
    return dataclasses.replace(split, pids=pids, camids=camids, has_camera_ids=True)


def embed_split(config, split: Split, label: str, camera_id: Optional[int] = None
                ) -> tuple[np.ndarray, dict]:
    """Features [N, D] of `split` with the checkpoint's test preprocessing (+ settings used).
    A model with SIE camera embeddings needs camera ids (0-based): `camera_id` for every image,
    else the split's own (from --labels)."""
    validation.check_eval_block(config)
    mesh = sharding.make_mesh(config.mesh)
    e = config.eval
    sharding.check_batch_divisible(e.batch_size, mesh, "config.eval.batch_size")
    loaded = inference.load_model(config.checkpoint, config.model, config.data)
    if loaded.uses_cameras:
        if camera_id is not None:
            split = dataclasses.replace(split, camids=np.full(len(split), camera_id, np.int32))
        elif not split.has_camera_ids:
            raise ValueError(f"{loaded.checkpoint}: the model has SIE camera embeddings "
                             f"({loaded.num_cameras} cameras): pass --camera_id=N (0-based) for "
                             "all the images, or --labels=CSV of 'name,pid,camid' for each")
        loaded.check_camera_ids(split.camids, "--camera_id" if camera_id is not None
                                else "--labels")
    repl = sharding.replicated(mesh)
    embed = functools.partial(
        sharding.jit_embed(loaded.embed_fn(e.neck_feat, e.normalize, e.flip), repl, mesh),
        jax.device_put(loaded.variables, repl))
    p = loaded.preprocessing
    feats = extract_features(embed, split, p, mesh, e.batch_size, config.data.num_workers,
                             config.data.prefetch, progress=progress_printer(label))
    settings = {"feature_space": loaded.feature_space(e.neck_feat, e.normalize, e.flip),
                "checkpoint": loaded.checkpoint, "kind": loaded.kind,
                "model": loaded.model_config.name, "image_size": np.asarray(p.image_size),
                "mean": np.asarray(p.mean), "std": np.asarray(p.std), "flip": bool(e.flip),
                "neck_feat": e.neck_feat, "normalize": bool(e.normalize),
                "camera_id": -1 if camera_id is None else int(camera_id)}
    return feats, settings


def refuse_existing(path: str, overwrite: bool) -> None:
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} exists: choose another path or pass --overwrite")


def extract_folder(config, root: str, output: str | None = None, overwrite: bool = False,
                   camera_id: Optional[int] = None, labels: Optional[dict] = None
                   ) -> tuple[np.ndarray, list[str]]:
    """Features and image paths of the folder; saved to `output` (.npz) when given. `labels`
    ({name: (pid, camid)}, read_labels): each image's camera for an SIE model, and the pids /
    camids saved beside the features."""
    if camera_id is not None and labels is not None:
        raise ValueError("--camera_id and --labels both give camera ids: pass one")
    if output:
        refuse_existing(output, overwrite)
    split = folder_split(root, labels)
    feats, settings = embed_split(config, split, "images", camera_id)
    root = os.path.abspath(root)
    if output:
        labelled = {"pids": split.pids, "camids": split.camids} if labels is not None else {}
        files.save_npz(output, {"features": feats, "names": np.asarray(
            [os.path.relpath(p, root) for p in split.paths]), "root": root, **labelled,
            **settings})
        print(f"wrote {feats.shape[0]} x {feats.shape[1]} features to {output}")
    return feats, split.paths


def load_gallery(path: str) -> tuple[np.ndarray, list[str], dict]:
    """(features, absolute image paths, the settings it was made with) of a .npz written by
    this tool."""
    try:
        with np.load(path) as z:
            feats, names, root = z["features"], z["names"], str(z["root"])
            settings = {k: z[k].tolist() for k in z.files if k not in ("features", "names")}
    except (OSError, KeyError, ValueError) as e:
        raise ValueError(f"{path}: not a features file written by personvit_jax.tools.extract "
                         f"(needs features, names, root): {e}") from e
    return feats, [os.path.join(root, str(n)) for n in names], settings


def check_same_feature_space(gallery: str, gallery_settings: dict, query_settings: dict) -> None:
    """Features are compared only with features of the same model and preprocessing (their
    `feature_space` ids); a file without one predates the check and is refused too."""
    have, want = gallery_settings.get("feature_space"), query_settings["feature_space"]
    if have == want:
        return
    if have is None:
        raise ValueError(f"--gallery={gallery}: the file records no feature_space (written "
                         "before the check): extract the gallery again with this checkpoint")
    diffs = [f"{k} {gallery_settings.get(k)!r} vs {query_settings.get(k)!r}"
             for k in ("checkpoint", "model", "image_size", "mean", "std", "neck_feat", "flip",
                       "normalize")
             if np.asarray(gallery_settings.get(k)).tolist() != np.asarray(
                 query_settings.get(k)).tolist()]
    raise ValueError(f"--gallery={gallery}: its features come from another model or "
                     f"preprocessing (feature_space {have} vs {want}"
                     f"{': ' + '; '.join(diffs) if diffs else ', other weights'}): extract the "
                     f"gallery again with --checkpoint={query_settings.get('checkpoint')}")


def feature_file_labels(path: str, names: list[str], labels: Optional[dict]
                        ) -> tuple[np.ndarray, np.ndarray]:
    """pids, 0-based camids [N] of a features file's images: from `labels` ({name: (pid,
    camid)}) or their Market-style names."""
    if labels is not None:
        missing = [n for n in names if n not in labels]
        if missing:
            raise ValueError(f"{path}: {len(missing)} image(s) not in --labels, e.g. "
                             f"{missing[0]!r}")
        rows = [labels[n] for n in names]
        return (np.asarray([r[0] for r in rows], np.int32),
                np.asarray([r[1] for r in rows], np.int32))
    try:
        rows = [layouts.parse_market_name(n) for n in names]
    except ValueError as e:
        raise ValueError(f"{path}: {e}; or give --labels=CSV") from None
    return (np.asarray([r[0] for r in rows], np.int32),
            np.asarray([r[1] - 1 for r in rows], np.int32))


def read_labels(csv_path: str) -> dict:
    """{name: (pid, camid)} of a 'name,pid,camid' CSV (an optional header)."""
    if not os.path.isfile(csv_path):
        raise FileNotFoundError(f"--labels={csv_path}: no such file")
    out = {}
    with open(csv_path, newline="", encoding="utf-8") as f:
        for line_no, row in enumerate(csv.reader(f), 1):
            if not row or (line_no == 1 and row[:3] == ["name", "pid", "camid"]):
                continue
            try:
                out[row[0].strip()] = (int(row[1]), int(row[2]))
            except (IndexError, ValueError):
                raise ValueError(f"{csv_path}:{line_no}: expected 'name,pid,camid' with "
                                 f"integer pid and camid, got {','.join(row)!r}") from None
    return out


def evaluate_feature_files(query: str, gallery: str, labels_csv: Optional[str] = None,
                           metric: str = "euclidean", rerank: bool = False) -> dict:
    """Market-1501 metrics (with bootstrap intervals; k-reciprocal re-ranked ones under
    "rerank" with `rerank`) of the features in two files written by `extract_folder`, through
    the one retrieval evaluator; they must share a feature space. Junk (pid -1) is left out,
    as the benchmarks' parsers do."""
    labels = read_labels(labels_csv) if labels_csv else None
    sets = []
    for path in (query, gallery):
        feats, paths, settings = load_gallery(path)
        root = str(settings["root"])
        names = [os.path.relpath(p, root) for p in paths]
        if labels is None and "pids" in settings:  # saved at extraction (--labels there)
            pids, camids = (np.asarray(settings[k], np.int32) for k in ("pids", "camids"))
        else:
            pids, camids = feature_file_labels(path, names, labels)
        keep = pids != -1
        sets.append((feats[keep], Split(os.path.basename(path), [p for p, k in zip(paths, keep)
                                                                   if k], pids[keep],
                                        camids[keep]), settings))
    (qf, q_split, q_settings), (gf, g_split, g_settings) = sets
    if "feature_space" not in q_settings:
        raise ValueError(f"--query_features={query}: the file records no feature_space "
                         "(written before the check): extract it again")
    check_same_feature_space(gallery, g_settings, q_settings)
    evaluator = RetrievalEvaluator(q_split, g_split, metric=metric,
                                   rerank=True if rerank else None)
    return evaluator.metrics(qf, gf).summary


def look_up(config, query: str, g_feats: np.ndarray, g_paths: list[str], top: int,
            draw: str, overwrite: bool = False, camera_id: Optional[int] = None,
            gallery: Optional[tuple[str, dict]] = None) -> list[tuple[str, float]]:
    """Prints and draws the `top` gallery images nearest to the image `query`; `gallery`:
    (file, its settings) when the gallery was read from a features file (checked to be of
    the same feature space)."""
    if not os.path.isfile(query):
        raise FileNotFoundError(f"--query={query}: no such image")
    refuse_existing(draw, overwrite)
    q_feats, q_settings = embed_split(config, Split.from_paths("query", [query]), "query",
                                      camera_id)
    if gallery is not None:
        check_same_feature_space(*gallery, q_settings)
    dist = distances.pairwise_distances(q_feats, g_feats, config.eval.metric)[0]
    best = visualize.top_k_rows(dist, top)
    found = [(g_paths[j], float(dist[j])) for j in best]
    for r, (path, d) in enumerate(found, 1):
        print(f"{r:4d}  {d:.4f}  {path}")
    image = visualize.rank_list_image(load_rgb(query), [load_rgb(p) for p, _ in found],
                                      ["unlabeled"] * len(found),
                                      [f"#{r}: {d:.3f}" for r, (_, d) in enumerate(found, 1)],
                                      title=f"{os.path.basename(query)}: {config.eval.metric}")
    visualize.save_png(image, draw)
    print(f"drew {draw}")
    return found


def run(fv: flags.FlagValues) -> int:
    config = fv.config
    if fv.query_features:
        if not fv.gallery:
            raise ValueError("--query_features needs --gallery=G.npz to evaluate against")
        summary = evaluate_feature_files(fv.query_features, fv.gallery, fv.labels,
                                         config.eval.metric, config.eval.rerank)
        print(json.dumps(summary))
        return 0
    if not fv.checkpoint:
        raise ValueError("give --checkpoint=DIR (or --query_features=Q.npz --gallery=G.npz)")
    config.checkpoint = fv.checkpoint
    if not (fv.images or fv.gallery):
        raise ValueError("give --images=FOLDER (to extract) or --gallery=F.npz (to search)")
    if fv.query is None and not fv.output:
        raise ValueError("give --output=F.npz (extract) and/or --query=IMAGE (look up)")
    gallery = None
    if fv.images:
        g_feats, g_paths = extract_folder(config, fv.images, fv.output, fv.overwrite,
                                          fv.camera_id,
                                          read_labels(fv.labels) if fv.labels else None)
    else:
        g_feats, g_paths, g_settings = load_gallery(fv.gallery)
        gallery = (fv.gallery, g_settings)
    if fv.query:
        stem = os.path.splitext(os.path.basename(fv.query))[0]
        look_up(config, fv.query, g_feats, g_paths, fv.top,
                fv.draw or f"{stem}_top{fv.top}.png", fv.overwrite, fv.camera_id, gallery)
    return 0


def main(argv=None) -> int:
    return cli.run_tool("python -m personvit_jax.tools.extract", __doc__, define_flags, run,
                        argv)


if __name__ == "__main__":
    sys.exit(main())
