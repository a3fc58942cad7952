"""The pretraining stage: multi-crop pipeline, sharding invariance, exact resume, hand-off."""

import os
import shutil

import ml_collections
import jax
import numpy as np
import pytest

from conftest import assert_trees, tiny_finetune_config
from personvit_jax.config_args import load_config
from personvit_jax.data import color_augment, layouts, pipeline
from personvit_jax.stages import finetune, pretrain
from personvit_jax.training.checkpointing import load_state_tree


def _aug(**kw):
    c = dict(global_size=(64, 32), local_size=(32, 16), global_scale=(0.4, 1.0),
             local_scale=(0.05, 0.4), num_local_crops=3, grayscale_prob=0.2, solarize_prob=0.2,
             mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), num_workers=0, prefetch=1,
             color_jitter={"prob": 0.8, "brightness": 0.4, "contrast": 0.4, "saturation": 0.2,
                           "hue": 0.1})
    c.update(kw)
    return ml_collections.ConfigDict(c)


MASK = ml_collections.ConfigDict({"ratio": 0.3, "ratio_var": 0.2, "masked_fraction": 0.5,
                                  "min_block": 0, "min_aspect": 0.3, "start_epoch": 0})


def test_pretrain_batches_deterministic_and_process_independent(tiny_splits):
    images = tiny_splits["train"]  # read from its TFDS records
    make = lambda p=0, n=1: list(pipeline.pretrain_iterator(images, _aug(), MASK, (8, 4), 8, 3,
                                                            0, p, n))
    one, again = make(), make()
    halves = [make(p, 2) for p in range(2)]
    b = one[0]
    assert b["global"].shape == (8, 2, 64, 32, 3) and b["local"].shape == (8, 3, 32, 16, 3)
    assert b["global"].dtype == b["local"].dtype == np.uint8  # colour ops run in the step
    assert b["global_color"].shape == (8, 2, color_augment.NUM_PARAMS) and \
        b["local_color"].shape == (8, 3, color_augment.NUM_PARAMS)
    assert b["masks"].shape == (8, 2, 32) and b["masks"].dtype == bool
    for s in range(3):
        for k in ("global", "local", "global_color", "local_color", "masks", "indices"):
            np.testing.assert_array_equal(one[s][k], again[s][k])
            np.testing.assert_array_equal(one[s][k], np.concatenate([halves[0][s][k],
                                                                     halves[1][s][k]]))
    # an epoch visits distinct images
    spe = len(images) // 8
    seen = np.concatenate([pipeline.PretrainBatchLoader(images, _aug(), MASK, (8, 4), 8, 0,
                                                        slice(None)).batch_indices(s)
                           for s in range(spe)])
    assert len(set(seen)) == len(seen) == spe * 8


def test_background_swap_batches_are_deterministic_and_process_independent(tiny_splits):
    """data.background_swap on: the loader gives each view a donor image of the set, drawn
    from the view's own generator, so the batch is the same however it is split."""
    images = tiny_splits["train"]
    swap = _aug(background_swap={"prob": 1.0, "margin": 0.25})
    make = lambda aug, p=0, n=1: pipeline.PretrainBatchLoader(
        images, aug, MASK, (8, 4), 8, 0, pipeline.process_slice(8, p, n))(1)
    on, off = make(swap), make(_aug())
    halves = [make(swap, p, 2) for p in range(2)]
    for k in ("global", "local"):
        np.testing.assert_array_equal(on[k], np.concatenate([halves[0][k], halves[1][k]]))
        assert (on[k] != off[k]).any()
    np.testing.assert_array_equal(on["indices"], off["indices"])


def test_no_masks_before_mask_start_epoch(tiny_splits):
    """iBOT's pred_start_epoch: every student crop unmasked in the epochs before it."""
    mask = ml_collections.ConfigDict(dict(MASK, start_epoch=1, masked_fraction=1.0))
    loader = pipeline.PretrainBatchLoader(tiny_splits["train"], _aug(num_local_crops=0), mask,
                                          (8, 4), 8, 0,
                                          slice(None))
    spe = loader.steps_per_epoch
    assert not any(loader(s)["masks"].any() for s in range(spe))
    assert all(loader(s)["masks"].any(axis=-1).all() for s in range(spe, spe + 2))


def test_image_folder_index_cached_and_errors(tmp_path, tiny_splits):
    root = tmp_path / "lup"
    train = tiny_splits["train"]  # read from its TFDS records
    for i in range(5):
        d = root / f"sub{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{i}.jpg").write_bytes(train.records[i]["image"])
    cache = str(tmp_path / "index.txt")
    paths = layouts.image_folder_index(str(root), cache)
    assert len(paths) == 5 and paths == sorted(paths)
    (root / "new.jpg").write_bytes(train.records[0]["image"])
    assert layouts.image_folder_index(str(root), cache) == paths  # cached, not re-listed
    with pytest.raises(FileNotFoundError, match="--config.data.root"):
        layouts.image_folder_index(str(tmp_path / "missing"), str(tmp_path / "i2.txt"))


def test_no_dataset_stops_at_once_naming_the_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config("pretrain")
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "data" / "unlabeled_folder")):
        pretrain.train(cfg, str(tmp_path / "w"))


def test_pretrain_eight_devices_equal_one(tiny_pt_config, tmp_path):
    # One epoch: over more steps, float noise in near-zero gradients outgrows the tolerances.
    for n in (1, 8):
        pretrain.train(tiny_pt_config(**{"mesh.data": n, "optim.epochs": 1}), str(tmp_path / f"d{n}"))
    a, b = load_state_tree(tmp_path / "d1"), load_state_tree(tmp_path / "d8")
    # centres are means over the GLOBAL batch: a per-device mean would differ at once
    assert_trees(a["center"], b["center"], rtol=1e-5, atol=1e-7)
    assert_trees(a["center_patch"], b["center_patch"], rtol=1e-5, atol=1e-7)
    # AdamW moves each parameter by ~lr per step, whatever the gradient's size: float noise in
    # near-zero gradients can show up at lr scale, so parameters are compared at that scale.
    assert_trees(a["teacher"], b["teacher"], atol=1e-6)
    assert_trees(a["student"], b["student"], atol=2e-4)


def test_resume_from_mid_run_checkpoint_is_bit_exact(tiny_pt_config, tmp_path,
                                                     pretrain_reference):
    cfg = tiny_pt_config()
    full = pretrain_reference  # the uninterrupted run of `cfg`
    steps = sorted(int(s) for s in os.listdir(full / "checkpoints") if s.isdigit())
    mid = steps[len(steps) // 2]
    assert 0 < mid < steps[-1]
    # A run that stopped right after checkpoint `mid` (e.g. killed) and is started again.
    part = tmp_path / "part"
    shutil.copytree(full / "checkpoints" / str(mid), part / "checkpoints" / str(mid))
    pretrain.train(cfg, str(part))
    assert_trees(load_state_tree(full), load_state_tree(part))


def test_handoff_finetune_loads_teacher_backbone(tiny_pt_config, tmp_path, pretrain_reference):
    src = pretrain_reference
    pt = load_state_tree(src)
    assert not np.allclose(pt["teacher"]["backbone"]["pos_embed"],
                           pt["student"]["backbone"]["pos_embed"])
    ft_cfg = tiny_finetune_config(tiny_pt_config().data.data_dir, **{
        "optim.epochs": 1, "init_from": str(src), "optim.base_lr": 0.0,
        "optim.warmup_factor": 0.0, "optim.final_lr_factor": 0.0})
    finetune.train(ft_cfg, str(tmp_path / "ft"))
    backbone = load_state_tree(tmp_path / "ft")["params"]["backbone"]
    teacher = dict(pt["teacher"]["backbone"])
    teacher.pop("mask_token")  # pretraining only; the fine-tune ViT has none
    assert_trees(backbone, teacher)


def test_init_from_pretrain_run_continues_with_its_teacher_head(tiny_pt_config, tmp_path,
                                                                pretrain_reference):
    src = pretrain_reference
    dst = tmp_path / "dst"
    pretrain.train(tiny_pt_config(**{"optim.epochs": 1, "init_from": str(src),
                                     "optim.base_lr": 0.0, "optim.min_lr": 0.0}), str(dst))
    a, b = load_state_tree(src), load_state_tree(dst)
    assert_trees(a["teacher"]["head"], b["teacher"]["head"])  # LR 0: loaded head kept as is
    assert_trees(a["teacher"]["backbone"], b["teacher"]["backbone"])
    # A head of another shape is not forced in: it starts fresh (and the log says so).
    other = tmp_path / "other"
    pretrain.train(tiny_pt_config(**{"optim.epochs": 1, "init_from": str(src),
                                     "head.out_dim": 32, "head.patch_out_dim": 32}), str(other))
    head = load_state_tree(other)["teacher"]["head"]["last_layer"]
    assert all(np.shape(x)[-1] == 32 for x in jax.tree.leaves(head))  # fresh, 32 prototypes


def test_camera_centres_keep_one_centre_per_camera(tiny_pt_config, tmp_path, tiny_splits):
    """loss.camera_centres: the state holds one CLS and one patch centre per camera of the
    train split, each moved by its own images (cameras differ); accumulation over 2
    micro-batches gives the whole batch's centres. Data without camera ids is refused."""
    runs = {}
    for accum in (1, 2):  # no drop path: the micro-batches draw no other randomness
        cfg = tiny_pt_config(**{"loss.camera_centres": True, "optim.epochs": 1,
                                "optim.accum_steps": accum, "model.drop_path_rate": 0.0,
                                "mesh.data": 1})
        pretrain.train(cfg, str(tmp_path / f"a{accum}"))
        runs[accum] = load_state_tree(tmp_path / f"a{accum}")
    state = runs[1]
    num_cameras = int(np.max(tiny_splits["train"].camids)) + 1
    assert state["center"].shape == (num_cameras, cfg.head.out_dim)
    assert state["center_patch"].shape == (num_cameras, cfg.head.patch_out_dim)
    spread = np.ptp(state["center"], axis=0).max()
    assert spread > 1e-3, spread  # the cameras' centres moved apart
    assert_trees(runs[2]["center"], state["center"], rtol=1e-4, atol=1e-5)

    folder = tmp_path / "crops"
    folder.mkdir()
    for i in range(16):
        tiny_splits["train"].image(i).save(folder / f"{i}.jpg")
    no_cams = tiny_pt_config(**{"loss.camera_centres": True, "data.name": "folder",
                                "data.root": str(folder)})
    with pytest.raises(ValueError, match=r"config.loss.camera_centres=True: the pretraining "
                                         r"images of data.name='folder' have no camera ids"):
        pretrain.train(no_cams, str(tmp_path / "nocam"))
