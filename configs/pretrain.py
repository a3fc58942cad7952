r"""Self-supervised pretraining (iBOT recipe on person crops, as PersonViT).

Launch (LUPerson or any folder tree of person crops, built once as a TFDS dataset; the build
streams, resumes, and can be split over processes with --num_shards/--shard_index):
  python -m personvit_jax.data.prepare --dataset=unlabeled_folder --source=/path/to/LUPerson \
      --data_dir=data
  python -m personvit_jax.main --config=configs/pretrain.py:model=vit_small --workdir=runs/pt_vits
CPU-sized run on the built-in synthetic person set (its train images, labels unused):
  python -m personvit_jax.main --config=configs/pretrain.py:synthetic --workdir=runs/pt_synthetic
CPU-sized run on a synthetic unlabeled pool (new people; a small LUPerson) plus those images
(benchmarks/pretrain_payoff.py runs all of it and the label-efficiency fine-tunes):
  python -m personvit_jax.synthetic --pool --out=data/synthetic_pool_folder --num_images=10000
  python -m personvit_jax.data.prepare --dataset=unlabeled_folder \
      --source=data/synthetic_pool_folder --data_dir=data/synthetic_pool
  python -m personvit_jax.main --config=configs/pretrain.py:synthetic_pool --workdir=runs/pt_pool
Then fine-tune from the TEACHER backbone:
  python -m personvit_jax.main --config=configs/finetune.py:synthetic --workdir=runs/ft \
      --config.init_from=runs/pt_synthetic

`arg`: `model=` vit_tiny | vit_small | vit_base, and the flags `synthetic`, `synthetic_pool`,
`sanity` (= `synthetic` on the set's sanity mode: plain backgrounds, ideal cameras, people that
differ only by garments; the monitor scores the same kind of set):
  python -m personvit_jax.main --config=configs/pretrain.py:sanity --workdir=runs/pt_sanity
"""

import ml_collections

from personvit_jax.config_args import add_training_bookkeeping, mesh_config, parse_config_arg


def get_config(arg=None):
    args = parse_config_arg(arg, {"model": "vit_small", "synthetic": False,
                                  "synthetic_pool": False, "sanity": False},
                            "configs/pretrain.py")
    c = ml_collections.ConfigDict()
    c.stage = "pretrain"  # selects personvit_jax.stages.pretrain.train
    c.seed = 0  # seeds init, drop path, epoch permutations, crops and masks
    c.init_from = ""  # start the student AND teacher from this run's backbone ('' = scratch)

    # ---------------------------------------------------------------- data
    c.data = d = ml_collections.ConfigDict()
    # unlabeled_folder: the TFDS build of person crops under `data_dir` (data.prepare);
    # folder: every image under `root`, read from the files (no build; listing cached in the
    # workdir); synthetic or a prepared labelled dataset name: its train split (labels unused)
    d.name = "unlabeled_folder"
    d.root = "data/LUPerson"  # name=folder: person crops (any sub-folder tree of .jpg/.png)
    d.data_dir = "data"  # where data.prepare wrote the builds / the synthetic set is built
    d.synthetic = ml_collections.ConfigDict({  # generator arguments (name=synthetic)
        "seed": 0, "num_train_ids": 450, "num_test_ids": 150, "images_per_id": (4, 8),
        "num_distractors": 300, "num_junk": 100,
        # '' = the full set; 'all' = its sanity mode; or the nuisance parts it removes, e.g.
        # 'background' or 'camera,extras' (synthetic/render.py NUISANCE)
        "sanity": ""})
    # Also the train split of this labelled dataset (labels unused), read from
    # `labelled_data_dir`: a pool plus the fine-tuning set's own images; '' = none
    d.plus_labelled = ""
    d.labelled_data_dir = "data"
    d.batch_size = 64  # global batch (images; each gives 2 global + num_local_crops views)
    d.global_size = (256, 128)  # global crop (height, width)
    d.global_scale = (0.4, 1.0)  # area fraction of a global crop
    d.local_size = (128, 64)  # local crop (height, width)
    d.local_scale = (0.05, 0.4)  # area fraction of a local crop
    # w/h range of every crop box before its resize (DINO / iBOT: 3/4-4/3, near-square boxes
    # stretched to the person aspect; (3/8, 2/3) keeps a 1:2 person's own aspect)
    d.crop_ratio = (3 / 4, 4 / 3)
    d.num_local_crops = 8  # local crops per image
    d.color_jitter = ml_collections.ConfigDict(  # DINO: p 0.8, (0.4, 0.4, 0.2, 0.1)
        {"prob": 0.8, "brightness": 0.4, "contrast": 0.4, "saturation": 0.2, "hue": 0.1,
         # not in DINO: std of log per-channel gains (a camera's white balance); 0 = off
         "channel_gain": 0.0})
    # Not in DINO / iBOT: per view, with probability `prob`, a random camera's sharpness and
    # noise (down to U(min_resolution, 1) of the size and back, noise sigma U(0, max_noise)
    # grey levels), so views of one image do not share their sensor cues; 0 = off
    d.sensor_jitter = ml_collections.ConfigDict(
        {"prob": 0.0, "min_resolution": 0.5, "max_noise": 8.0})
    # Not in DINO / iBOT: per view, with probability `prob`, the image's left and right
    # `margin` x width columns (a detector box centres its person: mostly background) come
    # from another image of the set, so views of one image do not share that background; 0 = off
    d.background_swap = ml_collections.ConfigDict({"prob": 0.0, "margin": 0.25})
    d.grayscale_prob = 0.2  # random grayscale
    d.solarize_prob = 0.2  # solarisation of the second global crop
    d.mean = (0.485, 0.456, 0.406)  # ImageNet normalisation, as iBOT/PersonViT pretraining
    d.std = (0.229, 0.224, 0.225)
    d.num_workers = 0  # Grain worker processes (0 = threads only)
    d.prefetch = 2  # batches prepared ahead

    # ---------------------------------------------------------------- masking (student globals)
    c.mask = k = ml_collections.ConfigDict()
    k.ratio = 0.3  # mean masking ratio of a masked image (iBOT pred_ratio)
    k.ratio_var = 0.2  # ratio drawn from U(ratio - var, ratio + var)
    k.masked_fraction = 0.5  # fraction of crops that are masked at all (others: ratio 0)
    k.min_block = 0  # smallest target block area in patches; 0 = iBOT's (min(gh, gw) // 3) ** 2
    k.start_epoch = 0  # no masked prediction before this epoch (iBOT pred_start_epoch)
    k.min_aspect = 0.3  # block aspect ratio in (min_aspect, 1 / min_aspect)

    # ---------------------------------------------------------------- model
    c.model = m = ml_collections.ConfigDict()
    m.name = args["model"]  # vit_tiny | vit_small | vit_base
    m.depth = 0  # 0 = standard depth (12)
    m.width = 0  # 0 = standard width of `name`
    m.num_heads = 0  # 0 = standard heads of `name`
    m.patch_size = 16  # patch side
    m.patch_stride = 16  # patch stride
    m.pos_grid = (16, 8)  # stored position-embedding grid (= global crop grid)
    # position embedding at another grid (local crops): iBOT's interpolate_pos_encoding
    # (bicubic, scale (new + 0.1) / old) or bilinear (TransReID / PersonViT fine-tuning)
    m.pos_interp = "bicubic"
    m.drop_path_rate = 0.1  # stochastic depth of the STUDENT (teacher: none)
    # Mixed precision: bfloat16 matmuls/activations in the ViT; parameters, optimizer state,
    # the EMA teacher, centres, LayerNorms, softmaxes, the iBOT head and losses stay float32.
    m.compute_dtype = "float32"  # float32 | bfloat16
    m.remat = False  # recompute each block in the backward pass (less memory, ~1/3 more FLOPs)

    # ---------------------------------------------------------------- head
    c.head = h = ml_collections.ConfigDict()
    h.out_dim = 8192  # CLS prototypes
    h.patch_out_dim = 8192  # patch prototypes (== out_dim with a shared head)
    h.hidden_dim = 2048  # MLP hidden width (3 layers, GELU)
    h.bottleneck_dim = 256  # bottleneck before L2 normalisation
    h.shared_head = True  # same head for CLS and patch tokens
    # Fix the weight-norm g of the last layer at 1? iBOT/PersonViT: learned for ViT-S, fixed
    # for ViT-B.
    h.norm_last_layer = args["model"] == "vit_base"
    h.freeze_last_layer_epochs = 1  # no updates of the last layer during the first epoch(s)

    # ---------------------------------------------------------------- loss
    c.loss = l = ml_collections.ConfigDict()
    l.student_temp = 0.1  # student softmax temperature
    l.teacher_temp = 0.07  # teacher temperature after warm-up (CLS)
    l.teacher_patch_temp = 0.07  # teacher temperature after warm-up (patches)
    l.warmup_teacher_temp = 0.04  # CLS teacher temperature at epoch 0
    l.warmup_teacher_patch_temp = 0.04  # patch teacher temperature at epoch 0
    l.warmup_teacher_temp_epochs = 30  # linear teacher-temperature warm-up (both)
    l.center_momentum = 0.9  # EMA momentum of the CLS and patch centres
    # Not in DINO / iBOT: one centre per camera (needs the images' camera ids: a labelled
    # train split or the synthetic set), so no target keeps what its camera adds to every image
    l.camera_centres = False
    l.cls_weight = 1.0  # lambda1: CLS self-distillation
    l.patch_weight = 1.0  # lambda2: masked patch distillation

    # ---------------------------------------------------------------- optimisation
    c.optim = o = ml_collections.ConfigDict()
    o.base_lr = 5e-4  # peak LR for batch 256; scaled by batch_size / 256
    o.min_lr = 1e-6  # cosine end
    o.warmup_epochs = 10  # linear LR warm-up from 0
    o.weight_decay = 0.04  # start of the cosine weight-decay schedule
    o.weight_decay_end = 0.4  # end of it (none on biases and norms)
    o.clip_grad = 3.0  # gradient clipping threshold (0 = off)
    o.clip_mode = "per_tensor"  # iBOT: each parameter's gradient norm; or global_norm
    o.epochs = 300  # training length; an epoch = len(images) // batch_size steps
    o.ema_momentum = 0.996  # teacher EMA momentum at step 0, cosine to `ema_momentum_end`
    o.ema_momentum_end = 1.0
    # Gradient accumulation: each step's batch runs as `accum_steps` micro-batches (every
    # accum_steps-th image), one optimizer / EMA / centre update per step. All losses are means
    # over images, so this equals the whole batch (drop path aside) at 1 / accum_steps of the
    # activation memory.
    o.accum_steps = 1

    # ---------------------------------------------------------------- retrieval monitor
    c.monitor = e = ml_collections.ConfigDict()
    e.dataset = "synthetic"  # labelled query/gallery set for the teacher-CLS retrieval check
    e.data_dir = "data"  # where that set lives
    e.every_epochs = 10  # also at the end; 0 = only at the end
    e.batch_size = 128  # global eval batch

    # ---------------------------------------------------------------- devices, bookkeeping
    c.mesh = mesh_config()
    add_training_bookkeeping(c)

    if args["sanity"]:
        args["synthetic"] = True
        d.synthetic.sanity = "all"  # the training images and the monitor's query / gallery
    if args["synthetic"] or args["synthetic_pool"]:
        # CPU-sized: 128x64 / 64x32 crops, the fine-tune config's 6-block ViT-Tiny, 4 local crops
        d.name = "synthetic"
        d.batch_size = 32
        d.global_size = (128, 64)
        d.local_size = (64, 32)
        d.num_local_crops = 4
        m.name = "vit_tiny"
        m.depth = 6
        m.pos_grid = (8, 4)
        # A short schedule sits on DINO's uniform plateau with many prototypes and a warming
        # teacher: fewer prototypes, a teacher kept at 0.04 (docs/results.md)
        h.out_dim = h.patch_out_dim = 256
        h.hidden_dim = 512
        h.norm_last_layer = False
        l.teacher_temp = l.teacher_patch_temp = 0.04
        l.warmup_teacher_temp = l.warmup_teacher_patch_temp = 0.04
        # Identity on the synthetic set is mostly garment colour: no hue / saturation jitter,
        # grayscale or solarisation (real crops: keep DINO's colour ops above)
        d.color_jitter.saturation = d.color_jitter.hue = 0.0
        d.grayscale_prob = d.solarize_prob = 0.0
        # Its cameras differ in white balance: random per-channel gains teach invariance to that
        d.color_jitter.channel_gain = 0.16
        o.base_lr = 2e-3 * 256 / 32  # 2e-3 at batch 32
        o.ema_momentum = 0.99  # a teacher averaging ~100 steps: 0.996 lags a short run
        o.epochs = 10
        o.warmup_epochs = 1
        l.warmup_teacher_temp_epochs = 3
        e.every_epochs = 5
        c.log_every_steps = 20
        c.checkpoint_every_steps = 100
    if args["synthetic_pool"]:
        # The pool build (commands above) plus the labelled synthetic train images; an epoch
        # is ~4x the synthetic one, so fewer epochs and a monitor every epoch
        d.name = "unlabeled_folder"
        d.data_dir = "data/synthetic_pool"
        d.plus_labelled = "synthetic"
        o.epochs = 4
        e.every_epochs = 1
        c.checkpoint_every_steps = 200
    return c
