r"""Label-free ReID fine-tuning (USL) and domain adaptation (UDA): Cluster Contrast (Dai et al.,
arXiv 2103.11568) with TransReID-SSL's ViT recipe (cluster-contrast-reid/market_usl.sh,
msmt_usl.sh, market_uda.sh): no identity label of the train split is read.

USL, from a self-supervised backbone (a pretrain workdir: its teacher):
  python -m personvit_jax.main --config=configs/usl.py:dataset=market1501,model=vit_small \
      --workdir=runs/market_usl --config.init_from=runs/pretrain_vits
UDA: the same, from a model fine-tuned WITH labels on another dataset:
  python -m personvit_jax.main --config=configs/usl.py:dataset=market1501 \
      --workdir=runs/msmt2market --config.init_from=runs/msmt_vits
CPU-sized run on the built-in synthetic person set (from scratch, minutes on 2 cores):
  python -m personvit_jax.main --config=configs/usl.py:synthetic --workdir=runs/usl
CPU-sized UDA: the synthetic set's second domain (other people, cameras and scenes), from the
quick start's fine-tune (runs/synthetic, trained on the first domain):
  python -m personvit_jax.main --config=configs/usl.py:synthetic,uda,init_from=runs/synthetic \
      --workdir=runs/uda

`arg`: `dataset=NAME` (as configs/finetune.py: its train split is used WITHOUT labels, its query
and gallery to evaluate), `model=NAME` (vit_tiny, vit_small, vit_base), `init_from=PATH` (the
starting model, also settable as --config.init_from) and the flags `synthetic` and `uda` (with
`synthetic` only: the second synthetic domain as the target, the recipe's SGD for a trained
start, camera-centred clustering).
"""

import ml_collections

from personvit_jax.config_args import (add_training_bookkeeping, cpu_sized_reid, mesh_config,
                                      parse_config_arg)


def get_config(arg=None):
    args = parse_config_arg(arg, {"dataset": "market1501", "model": "vit_small",
                                  "init_from": "", "synthetic": False, "uda": False},
                            "configs/usl.py")
    if args["uda"] and not args["synthetic"]:
        raise ValueError("configs/usl.py: the flag 'uda' is the synthetic second-domain preset "
                         "('synthetic,uda'); for a real target give dataset=NAME,init_from=PATH")
    if args["synthetic"]:
        args["dataset"] = "synthetic"
    c = ml_collections.ConfigDict()
    c.stage = "usl"  # selects personvit_jax.stages.usl.train
    c.seed = 0  # seeds parameter init, drop path, P x K sampling and augmentation
    # The starting model: a pretrain workdir/checkpoint (its TEACHER backbone: USL) or a
    # fine-tune one (its backbone: UDA); BNNeck fresh. '' = from scratch. Ignored on resume.
    c.init_from = args["init_from"]

    # ---------------------------------------------------------------- data
    c.data = d = ml_collections.ConfigDict()
    d.name = args["dataset"]  # the target: its train split unlabeled, query/gallery to evaluate
    d.data_dir = "data"  # where data.prepare wrote the builds (as configs/finetune.py)
    d.image_size = (256, 128)  # (height, width)
    d.num_ids_per_batch = 32  # P: pseudo identities (clusters) per batch (256 / 8)
    d.num_instances = 8  # K: images per cluster, K - 1 from other cameras than the first's
    d.flip_prob = 0.5  # train transform as Cluster Contrast: flip, pad 10 + crop, erasing 0.5
    d.pad = 10
    d.erasing_prob = 0.5
    d.color_jitter = ml_collections.ConfigDict(  # off (not in the recipe)
        {"prob": 0.0, "brightness": 0.15, "contrast": 0.15, "saturation": 0.1, "hue": 0.1})
    d.mean = (0.5, 0.5, 0.5)  # TransReID-SSL's --self-norm (PersonViT's normalisation)
    d.std = (0.5, 0.5, 0.5)
    d.num_workers = 0  # Grain worker processes (0 = threads only)
    d.prefetch = 2  # batches prepared ahead
    # Only for dataset=synthetic (see configs/finetune.py); style_seed = another camera domain
    # (UDA's target: --config.data.synthetic.style_seed=1 --config.data.synthetic.seed=1).
    d.synthetic = ml_collections.ConfigDict({
        "seed": 0, "num_train_ids": 450, "num_test_ids": 150, "images_per_id": (4, 8),
        "num_distractors": 300, "num_junk": 100,
        "style_seed": ml_collections.config_dict.placeholder(int)})

    # ---------------------------------------------------------------- clustering (every epoch)
    c.cluster = cl = ml_collections.ConfigDict()
    cl.eps = 0.6  # DBSCAN radius on the Jaccard distance (Market 0.6, MSMT17 0.7)
    cl.min_samples = 4  # DBSCAN core-point neighbourhood (Cluster Contrast: 4)
    cl.k1 = 30  # Jaccard distance: k-reciprocal neighbourhood size
    cl.k2 = 6  # Jaccard distance: query-expansion neighbourhood size
    # Cluster the features minus their camera's mean (clustering.centre_per_camera; not in
    # Cluster Contrast): the centres and the training use the model's own features.
    cl.camera_centred = False

    # ---------------------------------------------------------------- cluster memory
    c.memory = mem = ml_collections.ConfigDict()
    mem.temp = 0.05  # InfoNCE temperature
    mem.momentum = 0.2  # centre <- 0.2 * centre + 0.8 * feature (then renormalised)
    mem.hard = True  # update each centre with its batch's hardest (least similar) instance

    # ---------------------------------------------------------------- model
    c.model = m = ml_collections.ConfigDict()
    m.name = args["model"]  # vit_tiny | vit_small | vit_base
    m.depth = 0  # 0 = the standard 12
    m.width = 0  # 0 = the standard width of `name`
    m.num_heads = 0  # 0 = the standard number of `name`
    m.patch_size = 16
    m.patch_stride = 16  # overlapping patches when < patch_size
    m.pos_grid = (16, 8)  # stored position-embedding grid (resized for other inputs)
    m.pos_interp = "bilinear"
    m.drop_path_rate = 0.3  # TransReID-SSL's --drop-path-rate default
    m.sie = False  # no camera embedding (not in the recipe; refused here)
    m.jpm = False  # no JPM (refused here)
    m.jpm_groups = 4
    m.jpm_shift = 5
    m.jpm_shuffle_groups = 2
    m.jpm_rearrange = True
    m.sie_coef = 3.0
    m.compute_dtype = "float32"  # float32 | bfloat16 (as configs/finetune.py)
    m.remat = False

    # ---------------------------------------------------------------- optimisation
    c.optim = o = ml_collections.ConfigDict()
    o.name = "sgd"  # the recipe's SGD, momentum 0.9, coupled L2 decay (adamw also accepted)
    o.base_lr = 3.5e-4
    o.momentum = 0.9
    o.weight_decay = 5e-4
    o.weight_decay_bias = 5e-4
    o.decay_tokens = True  # weight decay on cls_token / pos_embed too (as configs/finetune.py)
    o.clip_grad = 0.0  # global-norm clipping (0 = off, as the recipe)
    o.bias_lr_factor = 1.0
    o.epochs = 50  # clustering rounds; each followed by iters_per_epoch steps
    o.iters_per_epoch = 200  # steps between two clusterings (--iters 200)
    o.schedule = "step"  # 'step': x step_gamma every step_epochs (StepLR); 'cosine' as finetune
    o.step_epochs = 20
    o.step_gamma = 0.1
    o.warmup_epochs = 0  # used by schedule='cosine' only, as the four below
    o.warmup_factor = 0.01
    o.final_lr_factor = 0.002
    o.per_epoch_schedule = True
    o.layer_decay = 1.0  # no layer-wise decay (not in the recipe)

    # ---------------------------------------------------------------- evaluation
    c.eval = e = ml_collections.ConfigDict()
    e.at_start = True  # evaluate the starting model first (source-only, for UDA)
    e.every_epochs = 10  # --eval-step 10; the end is always evaluated
    e.batch_size = 128  # global batch of evaluation AND of the clustering's feature pass
    e.neck_feat = "after"  # Cluster Contrast clusters and retrieves with the BN'd feature
    e.normalize = True
    e.flip = False
    e.metric = "euclidean"
    e.max_rank = 50

    # ---------------------------------------------------------------- devices, bookkeeping
    c.mesh = mesh_config()
    add_training_bookkeeping(c)

    if args["synthetic"]:
        cpu_sized_reid(c)  # the fine-tune synthetic model and batch (8 clusters x 4), AdamW
        m.drop_path_rate = 0.1
        # Identities of 4-8 images (Market's have ~17): smaller Jaccard neighbourhoods and a
        # tighter radius, else DBSCAN merges several identities per cluster from the start.
        cl.k1 = 20
        cl.eps = 0.5
        o.epochs = 16
        o.iters_per_epoch = 200
        o.step_epochs = 10
        e.every_epochs = 4
        c.log_every_steps = 50
        c.checkpoint_every_steps = 200
    if args["uda"]:
        # The target: other people (seed 1) seen by other cameras in other scenes (style_seed 1).
        d.synthetic.seed = 1
        d.synthetic.style_seed = 1
        # A trained start: the recipe's SGD 3.5e-4 (AdamW 1e-3 from scratch wrecks it).
        o.name, o.base_lr, o.weight_decay, o.weight_decay_bias = "sgd", 3.5e-4, 5e-4, 5e-4
        # The source's features group one person's images per camera (many of its clusters
        # hold one camera): cluster them camera-centred, with neighbourhoods the size of these
        # identities (4-8 images; Market's k1 30 is for ~17 per identity).
        cl.camera_centred = True
        cl.k1, cl.k2 = 6, 3
        o.epochs = 8
        e.every_epochs = 2
    return c
