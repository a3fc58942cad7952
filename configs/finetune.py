r"""Supervised ReID fine-tuning (the PersonViT / TransReID recipe).

Launch:
  python -m personvit_jax.main --config=configs/finetune.py:dataset=market1501,model=vit_small \
      --workdir=runs/market_vits --config.init_from=runs/pretrain_vits
CPU-sized run on the built-in synthetic person set (generated and built on first use):
  python -m personvit_jax.main --config=configs/finetune.py:synthetic --workdir=runs/synthetic

Real datasets are read from their TFDS build: prepare one first (once), e.g.
  python -m personvit_jax.data.prepare --dataset=market1501 --source=Market-1501-v15.09.15.zip \
      --data_dir=data
then run with --config.data.data_dir=data (the default).

`arg` is a comma-separated list: `dataset=NAME` (market1501, dukemtmc, occluded_duke, msmt17,
msmt17_v2, reid_folder = your own prepared folder, synthetic), `model=NAME` (vit_tiny,
vit_small, vit_base), and the flag `synthetic`, which selects the synthetic set and shrinks
model, images and schedule to minutes on a 2-core CPU.
Any field can be overridden on the command line, e.g. `--config.optim.base_lr=1e-3`.
"""

import ml_collections

from personvit_jax.config_args import (add_training_bookkeeping, cpu_sized_reid, mesh_config,
                                      parse_config_arg)


def get_config(arg=None):
    args = parse_config_arg(arg, {"dataset": "market1501", "model": "vit_small",
                                  "synthetic": False}, "configs/finetune.py")
    if args["synthetic"]:
        args["dataset"] = "synthetic"
    c = ml_collections.ConfigDict()
    c.stage = "finetune"  # selects personvit_jax.stages.finetune.train
    c.seed = 0  # seeds parameter init, drop path, P x K sampling and augmentation
    # Initialise from another run before training: a pretrain workdir/checkpoint (its TEACHER
    # backbone is loaded, heads dropped) or a fine-tune one (its backbone). '' = from scratch.
    # Ignored when the workdir already holds a checkpoint (then the run resumes).
    c.init_from = ""

    # ---------------------------------------------------------------- data
    c.data = d = ml_collections.ConfigDict()
    # market1501 | dukemtmc | occluded_duke | msmt17 | msmt17_v2 | reid_folder (read from their
    # TFDS build, see data/prepare.py) | synthetic (generated and built as TFDS records on
    # first use, see personvit_jax/synthetic/build.py)
    d.name = args["dataset"]
    d.data_dir = "data"  # where data.prepare wrote the builds (data/market1501/1.0.0/...); for
    #                      synthetic: where it is generated and built (data/synthetic/...)
    d.image_size = (256, 128)  # (height, width) fed to the network
    d.num_ids_per_batch = 16  # P: identities per batch
    d.num_instances = 4  # K: images per identity; batch = P * K
    d.flip_prob = 0.5  # horizontal flip probability
    d.pad = 10  # zero padding (px) before the random crop back to image_size
    d.erasing_prob = 0.5  # random erasing (area 2%-33%, aspect 0.3-3.3, Gaussian noise pixels)
    # Colour jitter (fast-reid's optional CJ; not in the PersonViT recipe): with probability
    # `prob`, brightness/contrast/saturation factors in [1 - x, 1 + x] and a hue shift.
    d.color_jitter = ml_collections.ConfigDict(
        {"prob": 0.0, "brightness": 0.15, "contrast": 0.15, "saturation": 0.1, "hue": 0.1})
    d.mean = (0.5, 0.5, 0.5)  # normalisation mean (PersonViT: 0.5, not ImageNet's)
    d.std = (0.5, 0.5, 0.5)  # normalisation std
    # Label efficiency: train on this fraction of the train identities (all their images),
    # drawn with `subset_seed`; 1.0 = all
    d.train_id_fraction = 1.0
    d.subset_seed = 0
    d.num_workers = 0  # Grain worker processes for decoding/augmentation (0 = threads only)
    d.prefetch = 2  # batches prepared ahead (memory: a 64 x 256 x 128 batch is 25 MB)
    # Only for dataset=synthetic: arguments of personvit_jax.synthetic.market_args (the others,
    # e.g. height/width/num_cameras/style_seed, keep its defaults); they name the set's build.
    d.synthetic = ml_collections.ConfigDict({
        "seed": 0,  # generator seed (same arguments -> byte-identical files)
        "num_train_ids": 450,  # identities in bounding_box_train
        "num_test_ids": 150,  # identities in query + bounding_box_test
        "images_per_id": (4, 8),  # images per identity, drawn uniformly in this range
        "num_distractors": 300,  # pid 0000 images in the gallery
        "num_junk": 100,  # pid -1 images in the gallery (dropped by the parser)
    })

    # ---------------------------------------------------------------- model
    c.model = m = ml_collections.ConfigDict()
    m.name = args["model"]  # vit_tiny (192-d, 3 heads) | vit_small (384, 6) | vit_base (768, 12)
    m.depth = 0  # number of blocks; 0 = the standard 12
    m.width = 0  # token width; 0 = the standard one of `name` (tests use tiny widths)
    m.num_heads = 0  # attention heads; 0 = the standard number of `name`
    m.patch_size = 16  # patch side in pixels
    m.patch_stride = 16  # patch stride; < patch_size gives TransReID's overlapping patches (12)
    m.pos_grid = (16, 8)  # grid of the stored position embedding (256x128 / 16); resized if the
    #                       input grid differs
    m.pos_interp = "bilinear"  # how it is resized: bilinear as TransReID / PersonViT
    m.drop_path_rate = 0.1  # stochastic depth at the last block (linear from 0 over depth)
    m.sie = False  # TransReID side-information (camera) embedding
    m.jpm = False  # TransReID jigsaw patch module (4 local branches); PersonViT keeps it off
    m.jpm_groups = 4  # JPM local branches
    m.jpm_shift = 5  # JPM: patches rotated by shift - 1 before shuffling (TransReID)
    m.jpm_shuffle_groups = 2  # JPM: interleaved chunks of the rotated patch sequence
    m.jpm_rearrange = True  # JPM: shift and shuffle at all (TransReID's --RE_ARRANGE)
    m.sie_coef = 3.0  # SIE: camera embedding scale (TransReID's SIE_COE)
    # Mixed precision: bfloat16 matmuls/activations in the ViT; parameters, optimizer state,
    # LayerNorms, softmaxes, the BNNeck and the losses stay float32.
    m.compute_dtype = "float32"  # float32 | bfloat16
    m.remat = False  # recompute each block in the backward pass (less memory, ~1/3 more FLOPs)

    # ---------------------------------------------------------------- loss
    c.loss = l = ml_collections.ConfigDict()
    l.id_weight = 1.0  # weight of the ID cross-entropy (on BNNeck logits)
    l.label_smoothing = 0.0  # label smoothing epsilon of the ID loss (PersonViT: off)
    l.triplet_weight = 1.0  # weight of the batch-hard triplet loss (on the pre-BN feature)
    l.triplet = "soft"  # 'soft' = log(1 + exp(d_ap - d_an)); 'margin' = hinge with l.margin
    l.margin = 0.3  # hinge margin, used when triplet='margin'

    # ---------------------------------------------------------------- optimisation
    c.optim = o = ml_collections.ConfigDict()
    o.name = "sgd"  # sgd: momentum + coupled L2 decay (torch.optim.SGD); adamw: decoupled decay
    #                 on matrices only, `momentum` is Adam's beta1
    o.base_lr = 4e-4  # peak learning rate (for batch 64)
    o.momentum = 0.9  # SGD momentum (adamw: beta1)
    o.weight_decay = 1e-4  # on weights (incl. LayerNorm scales, cls token, position embedding)
    o.weight_decay_bias = 1e-4  # on biases
    o.decay_tokens = True  # weight decay on cls_token / pos_embed too (DeiT's AdamW: False)
    o.clip_grad = 0.0  # clip the gradient's global norm to this (0 = off, as PersonViT)
    o.bias_lr_factor = 2.0  # biases learn at 2 x LR
    o.epochs = 120  # training length; an epoch = len(train split) // batch steps
    o.warmup_epochs = 20  # linear warm-up length
    # Every parameter group (weights, biases) warms up from warmup_factor x base_lr to its own
    # peak and cools to final_lr_factor x base_lr (timm's scheduler as PersonViT steps it:
    # epoch e trains at the scheduler's value for e - 1, so epoch 1 at warmup_factor x base_lr)
    o.warmup_factor = 0.01  # warm-up starts at 0.01 x base_lr
    o.final_lr_factor = 0.002  # cosine ends at 0.002 x base_lr
    o.per_epoch_schedule = True  # LR changes once per epoch (as PersonViT); False = every step
    # Layer-wise LR decay (BEiT / iBOT fine-tuning of self-supervised ViTs): block i learns at
    # layer_decay ** (depth - i) x the LR, the embeddings at layer_decay ** (depth + 1); 1 = off
    o.layer_decay = 1.0
    # Gradient accumulation: each step's P x K batch runs as `accum_steps` micro-batches of
    # whole identities (P / accum_steps ids each), one optimizer update per step. The triplet
    # mines and BatchNorm normalises within a micro-batch, so this is NOT a P x K batch of
    # accum_steps x the memory; it lowers activation memory at the same batch.
    o.accum_steps = 1

    # ---------------------------------------------------------------- evaluation
    c.eval = e = ml_collections.ConfigDict()
    e.every_epochs = 0  # evaluate every N epochs during training (0 = only at the end)
    e.batch_size = 128  # global eval batch
    e.neck_feat = "before"  # test feature before ('before') or after ('after') the BNNeck
    e.normalize = True  # L2-normalise test features
    e.flip = False  # flip test-time augmentation (mean of the image and its mirror)
    e.metric = "euclidean"  # euclidean | cosine
    e.max_rank = 50  # CMC length

    # ---------------------------------------------------------------- devices, bookkeeping
    c.mesh = mesh_config()
    add_training_bookkeeping(c)

    if args["synthetic"]:
        cpu_sized_reid(c)  # 128x64, 6-block ViT-Tiny, batch 8 x 4, AdamW from scratch
        o.epochs = 40  # 30 under-trains (mAP still rising 0.45 -> 0.57 over the last 10)
        o.warmup_epochs = 3
        e.every_epochs = 10
        c.log_every_steps = 20
        c.checkpoint_every_steps = 100
    return c
