r"""Evaluate a checkpoint: features -> CMC / mAP / mINP (+ re-ranking), features.npz, rank lists.

Launch:
  python -m personvit_jax.main --config=configs/evaluate.py:dataset=market1501 \
      --config.checkpoint=runs/market_vits --workdir=runs/market_vits_eval
  (+ --config.eval.rerank=True --config.eval.flip=True --config.eval.neck_feat=after ...)

`--config.checkpoint` is a fine-tune or pretrain workdir (its latest checkpoint; a pretrain run
gives the teacher's CLS feature), its `checkpoints/` folder, one step folder, or a converted
checkpoint folder. The architecture and preprocessing come from the run's saved config.json;
any `--config.model.*` / `--config.data.image_size|mean|std` field given here overrides it.
Without a config.json, name the architecture: `--config.model.name=vit_small` (the other fields
then default to configs/finetune.py).

`arg`: `dataset=` market1501 | dukemtmc | occluded_duke | msmt17 | msmt17_v2 | reid_folder (your
own prepared folder) | synthetic | query_gallery (your own query/ and gallery/, no train split and
no build):
  python -m personvit_jax.main --config=evaluate.py:dataset=query_gallery \
      --config.data.root=site_a --config.checkpoint=runs/market_vits --workdir=runs/site_a_eval
"""

import ml_collections
from ml_collections.config_dict import placeholder

from personvit_jax.config_args import load_config, mesh_config, parse_config_arg


def get_config(arg=None):
    args = parse_config_arg(arg, {"dataset": "market1501"}, "configs/evaluate.py")
    finetune = load_config("finetune")
    c = ml_collections.ConfigDict()
    c.stage = "evaluate"  # selects personvit_jax.stages.evaluate.evaluate
    c.checkpoint = ""  # required: run workdir, checkpoints/ folder, step folder or converted dir
    c.overwrite = False  # replace eval_results.json / features.npz / ranks/ already in the workdir

    # ---------------------------------------------------------------- data
    c.data = d = ml_collections.ConfigDict()
    d.name = args["dataset"]  # market1501 | dukemtmc | occluded_duke | msmt17 | msmt17_v2 |
    #                           reid_folder | synthetic (their builds under data_dir) |
    #                           query_gallery (your own pair, read from the files under root)
    d.data_dir = "data"  # folder holding the dataset's folder
    # query_gallery: <root>/query/ and <root>/gallery/ of Market-named images (0001_c1_x.jpg)
    # or <pid>/ folders; or any images labelled by the CSV `labels` (path,pid,camid rows,
    # paths relative to root). No train split, no build.
    d.root = ""
    d.labels = ""
    d.image_size = placeholder(tuple)  # (height, width); None = the checkpoint's (else 256x128)
    d.mean = placeholder(tuple)  # normalisation; None = the checkpoint's (else 0.5, PersonViT)
    d.std = placeholder(tuple)
    d.num_workers = 0  # Grain worker processes for decoding (0 = threads only)
    d.prefetch = 2  # batches prepared ahead
    d.synthetic = finetune.data.synthetic  # generator arguments (dataset=synthetic)

    # ---------------------------------------------------------------- model
    # None = the checkpoint's saved config.json. Set a field to override it.
    c.model = m = ml_collections.ConfigDict()
    for key, value in finetune.model.items():
        m[key] = placeholder(type(value))
    # Architecture assumed for a checkpoint without config.json once model.name is given.
    c.default_model = finetune.model

    # ---------------------------------------------------------------- evaluation
    c.eval = e = ml_collections.ConfigDict()
    e.batch_size = 128  # global batch for feature extraction (divisible by the devices)
    e.neck_feat = "before"  # feature before ('before') or after ('after') the BNNeck
    e.normalize = True  # L2-normalise features
    e.flip = False  # flip test-time augmentation (mean of the image and its mirror)
    e.metric = "euclidean"  # euclidean | cosine
    e.max_rank = 50  # CMC length
    e.rerank = False  # also report k-reciprocal re-ranking (Zhong et al. 2017)
    e.k1 = 20  # re-ranking: k-reciprocal neighbours
    e.k2 = 6  # re-ranking: neighbours of the local query expansion
    e.lambda_value = 0.3  # re-ranking: weight of the original distance

    # ---------------------------------------------------------------- rank-list pictures
    c.ranks = r = ml_collections.ConfigDict()
    r.num_queries = 8  # ranks/<query>.png for this many queries spread over the query set
    r.queries = ""  # or a comma-separated list of query file names (e.g. 0001_c1s1_001051_00.jpg)
    r.top_k = 10  # gallery images per rank list
    r.num_worst = 16  # rows of ranks/worst_queries.png (the queries with the lowest AP)

    # ---------------------------------------------------------------- devices
    c.mesh = mesh_config()
    return c
