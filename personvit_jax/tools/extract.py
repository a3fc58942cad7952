r"""Features of a folder of images, and nearest-neighbour look-ups against them.

  # every image under FOLDER (recursive, sorted) -> F.npz (features, names, settings)
  python -m personvit_jax.tools.extract --checkpoint=DIR --images=FOLDER --output=F.npz
  # the K gallery images nearest to one query image: printed, and drawn as a rank list
  python -m personvit_jax.tools.extract --checkpoint=DIR --gallery=F.npz --query=IMG --top=K
  python -m personvit_jax.tools.extract --checkpoint=DIR --images=FOLDER --query=IMG --top=K

Preprocessing is the official test one: resize to the checkpoint's image size (its saved
config; else 256x128), bilinear, normalised with its mean/std (else 0.5 / 0.5, PersonViT and
TransReID). Model, feature and batch options come from configs/evaluate.py and can be changed
like any config field: `--config.eval.flip=True`, `--config.eval.neck_feat=after`,
`--config.eval.batch_size=64`, `--config.model.name=vit_small` (checkpoints without a config.json).
Nothing is overwritten unless --overwrite is given.
"""

from __future__ import annotations

import os

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from personvit_jax.data.augment import load_rgb
from personvit_jax.data.layouts import Split, list_images
from personvit_jax.evaluation import ranking, visualize
from personvit_jax.evaluation.features import (checkpoint_embedder, extract_features,
                                               progress_printer, save_npz)
from personvit_jax.training import sharding

_EVAL_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "configs", "evaluate.py")


def define_flags() -> dict:
    """The command-line flags (defined only when run as a program, so that importing this
    module, e.g. from tests, never clashes with other tools' flags)."""
    f = {"config": config_flags.DEFINE_config_file(
        "config", _EVAL_CONFIG, "Evaluate config (model, eval and data overrides).",
        lock_config=True)}
    f["checkpoint"] = flags.DEFINE_string("checkpoint", None, "Run workdir, checkpoints/ folder, "
                                          "step folder or converted checkpoint folder.")
    f["images"] = flags.DEFINE_string("images", None, "Folder of .jpg/.jpeg/.png images "
                                      "(recursive).")
    f["output"] = flags.DEFINE_string("output", None, "Write the folder's features to this .npz.")
    f["gallery"] = flags.DEFINE_string("gallery", None, "A .npz written by --output, searched by "
                                       "--query.")
    f["query"] = flags.DEFINE_string("query", None, "An image to look up in the gallery.")
    f["top"] = flags.DEFINE_integer("top", 10, "Nearest gallery images to print and draw.")
    f["draw"] = flags.DEFINE_string("draw", None, "PNG for the query's rank list (default: "
                                    "<query name>_top<K>.png in the current folder).")
    f["overwrite"] = flags.DEFINE_boolean("overwrite", False, "Replace existing output files.")
    flags.mark_flag_as_required("checkpoint")
    return f


def folder_split(root: str) -> Split:
    """Every image under `root` (recursive, sorted) as an unlabeled split."""
    return Split.from_paths(os.path.basename(os.path.normpath(root)), list_images(root))


def embed_split(config, split: Split, label: str) -> tuple[np.ndarray, dict]:
    """Features [N, D] of `split` with the checkpoint's test preprocessing (+ settings used)."""
    mesh = sharding.make_mesh(config.mesh)
    sharding.check_batch_divisible(config.eval.batch_size, mesh, "config.eval.batch_size")
    fn, data_cfg, model_cfg, kind = checkpoint_embedder(config, mesh)
    feats = extract_features(fn, split, data_cfg, mesh, config.eval.batch_size,
                             progress=progress_printer(label))
    settings = {"checkpoint": os.path.abspath(config.checkpoint), "kind": kind,
                "model": model_cfg.name, "image_size": np.asarray(data_cfg.image_size),
                "mean": np.asarray(data_cfg.mean), "std": np.asarray(data_cfg.std),
                "flip": bool(config.eval.flip), "neck_feat": config.eval.neck_feat,
                "normalize": bool(config.eval.normalize)}
    return feats, settings


def refuse_existing(path: str, overwrite: bool) -> None:
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} exists: choose another path or pass --overwrite")


def extract_folder(config, root: str, output: str | None = None,
                   overwrite: bool = False) -> tuple[np.ndarray, list[str]]:
    """Features and image paths of the folder; saved to `output` (.npz) when given."""
    if output:
        refuse_existing(output, overwrite)
    split = folder_split(root)
    feats, settings = embed_split(config, split, "images")
    root = os.path.abspath(root)
    if output:
        save_npz(output, {"features": feats, "names": np.asarray(
            [os.path.relpath(p, root) for p in split.paths]), "root": root, **settings})
        print(f"wrote {feats.shape[0]} x {feats.shape[1]} features to {output}")
    return feats, split.paths


def load_gallery(path: str) -> tuple[np.ndarray, list[str]]:
    """(features, absolute image paths) of a .npz written by this tool."""
    try:
        with np.load(path) as z:
            feats, names, root = z["features"], z["names"], str(z["root"])
    except (OSError, KeyError, ValueError) as e:
        raise ValueError(f"{path}: not a features file written by personvit_jax.tools.extract "
                         f"(needs features, names, root): {e}") from e
    return feats, [os.path.join(root, str(n)) for n in names]


def look_up(config, query: str, g_feats: np.ndarray, g_paths: list[str], top: int,
            draw: str, overwrite: bool = False) -> list[tuple[str, float]]:
    """Prints and draws the `top` gallery images nearest to the image `query`."""
    if not os.path.isfile(query):
        raise FileNotFoundError(f"--query={query}: no such image")
    refuse_existing(draw, overwrite)
    q_feats, _ = embed_split(config, Split.from_paths("query", [query]), "query")
    dist = ranking.pairwise_distances(q_feats, g_feats, config.eval.metric)[0]
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


def main(argv, f: dict) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    v = {k: h.value for k, h in f.items()}
    config = v["config"]
    config.checkpoint = v["checkpoint"]
    if not (v["images"] or v["gallery"]):
        raise app.UsageError("give --images=FOLDER (to extract) or --gallery=F.npz (to search)")
    if v["query"] is None and not v["output"]:
        raise app.UsageError("give --output=F.npz (extract) and/or --query=IMAGE (look up)")
    if v["images"]:
        g_feats, g_paths = extract_folder(config, v["images"], v["output"], v["overwrite"])
    else:
        g_feats, g_paths = load_gallery(v["gallery"])
    if v["query"]:
        stem = os.path.splitext(os.path.basename(v["query"]))[0]
        look_up(config, v["query"], g_feats, g_paths, v["top"],
                v["draw"] or f"{stem}_top{v['top']}.png", v["overwrite"])


if __name__ == "__main__":
    _flags = define_flags()
    app.run(lambda argv: main(argv, _flags))
