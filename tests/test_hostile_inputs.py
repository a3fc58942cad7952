"""Hostile inputs (hypothesis, few examples each so the suite stays fast): random bytes as images,
random CSV rows, random values of every validated config field, and truncated or garbled weight
files, checkpoints and TFDS records. Each ends in a correct result or in one of cli.USER_ERRORS
raised by this package (one line `error: ...` on the command line) naming the file or key at
fault; never a crash inside a library, a hang, or a partial output."""

import io
import os
import random
import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from conftest import (WEIGHT_FIXTURES, tiny_finetune_config, tiny_pretrain_config,
                      user_error_line)
from personvit_jax import cli, validation
from personvit_jax import datasets
from personvit_jax.data import augment, builders, layouts
from personvit_jax.tools.weights_io import read_weights
from personvit_jax.training import checkpointing

FEW = settings(max_examples=20, deadline=None, derandomize=True,
               suppress_health_check=[HealthCheck.function_scoped_fixture])


def _jpeg_bytes(seed: int = 0) -> bytes:
    buf = io.BytesIO()
    x = np.random.default_rng(seed).integers(0, 255, (16, 8, 3), dtype=np.uint8)
    Image.fromarray(x).save(buf, format="JPEG")
    return buf.getvalue()


def _damaged(data: bytes, draw_cut: int, flips: list) -> bytes:
    """`data` cut at a fraction of its length, then bytes overwritten at (position, value)."""
    out = bytearray(data[: draw_cut % (len(data) + 1)])
    for pos, value in flips:
        if out:
            out[pos % len(out)] = value
    return bytes(out)


damage = st.tuples(st.integers(0, 1 << 30),
                   st.lists(st.tuples(st.integers(0, 1 << 30), st.integers(0, 255)), max_size=8))


# ---------------------------------------------------------------------------- images
image_bytes = st.one_of(
    st.binary(max_size=512),
    st.builds(lambda d: _damaged(_jpeg_bytes(), *d), damage),  # a real JPEG, cut or garbled
    st.builds(lambda b: b"\x89PNG\r\n\x1a\n" + b, st.binary(max_size=256)))


@FEW
@given(data=image_bytes)
def test_random_image_bytes_decode_or_name_the_file(data, tmp_path):
    path = str(tmp_path / "img.jpg")
    with open(path, "wb") as f:
        f.write(data)
    try:
        assert builders.read_image_bytes(path, jpeg_only=True) == data
        with Image.open(io.BytesIO(data)) as im:
            assert im.format == "JPEG"
    except builders.CorruptImageError as e:
        user_error_line(e, path)
    try:
        assert augment.load_rgb(path).mode == "RGB"
    except augment.CorruptImageError as e:
        user_error_line(e, path)


def test_extract_stops_at_a_garbled_image_naming_it(tmp_path):
    """End to end, once (it builds a model): the tool stops with the file named and writes no
    output."""
    import jax
    import jax.numpy as jnp

    from personvit_jax.config_args import load_config
    from personvit_jax.models.vit import vit_from_config
    from personvit_jax.tools import extract
    from personvit_jax.tools.convert import write_checkpoint

    cfg = tiny_finetune_config("unused")
    params = vit_from_config(cfg.model).init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 32, 3)))
    write_checkpoint(str(tmp_path / "ckpt"), {"params": {"backbone": params["params"]}}, cfg)
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.jpg").write_bytes(_jpeg_bytes())
    (images / "b.jpg").write_bytes(_damaged(_jpeg_bytes(1), 200, [(150, 0), (160, 7)]))
    config = load_config("evaluate")
    config.checkpoint, config.eval.batch_size = str(tmp_path / "ckpt"), 8
    out = tmp_path / "f.npz"
    with pytest.raises(cli.USER_ERRORS) as failed:
        extract.extract_folder(config, str(images), str(out))
    user_error_line(failed.value, images / "b.jpg")
    assert not out.exists() and not [n for n in os.listdir(tmp_path) if ".tmp-" in n]


# ---------------------------------------------------------------------------- CSV rows
cell = st.one_of(st.integers(-3, 3).map(str), st.text(max_size=8),
                 st.sampled_from(["train/1/a.jpg", "query/2/b.jpg", "gallery/2/c.jpg",
                                  "test/1/d.jpg", "train/../x.jpg", "nowhere/e.jpg", "-1"]))


@FEW
@given(rows=st.lists(st.lists(cell, max_size=4), max_size=6),
       raw=st.one_of(st.none(), st.binary(max_size=64)))
def test_random_csv_rows_load_or_name_the_csv(rows, raw, tmp_path):
    root = tmp_path / "root"
    for rel in ("train/1/a.jpg", "query/2/b.jpg", "gallery/2/c.jpg", "test/1/d.jpg"):
        os.makedirs(root / os.path.dirname(rel), exist_ok=True)
        (root / rel).write_bytes(_jpeg_bytes())
    csv_path = tmp_path / "labels.csv"
    if raw is None:
        csv_path.write_text("\n".join(",".join(r) for r in rows), encoding="utf-8")
    else:
        csv_path.write_bytes(raw)
    try:
        splits = layouts.load_custom_layout(str(root), str(csv_path))
    except cli.USER_ERRORS as e:
        user_error_line(e, csv_path)
        return
    assert splits["train"].pids.size and set(splits) >= {"train"}
    for split in splits.values():
        assert all(os.path.isfile(p) for p in split.paths)
        assert (split.pids != -1).all()


# ---------------------------------------------------------------------------- config fields
def _values_like(value):
    """Values of the type ml_collections accepts for a field holding `value`."""
    if isinstance(value, bool):
        return st.booleans()
    if isinstance(value, int):
        return st.integers(-5, 300)
    if isinstance(value, float):
        return st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                         st.floats(-0.5, 1.5))
    if isinstance(value, str):
        return st.one_of(st.text(max_size=6), st.sampled_from(["sgd", "adamw", "soft", "after",
                                                                "cosine", "vit_tiny", "stop"]))
    if isinstance(value, (tuple, list)):
        item = st.integers(-4, 300) if all(isinstance(v, int) for v in value) else \
            st.floats(-0.5, 1.5)
        return st.lists(item, min_size=0, max_size=3).map(tuple)
    raise TypeError(value)


FINETUNE_FIELDS = [
    "model.name", "model.compute_dtype", "model.pos_interp", "model.drop_path_rate", "nonfinite",
    "model.patch_size", "model.patch_stride", "optim.epochs", "log_every_steps",
    "checkpoint_every_steps", "keep_checkpoints", "data.image_size", "data.num_instances",
    "data.num_ids_per_batch", "data.pad", "data.flip_prob", "data.erasing_prob",
    "data.color_jitter.prob", "optim.name", "loss.triplet", "eval.neck_feat", "eval.metric",
    "eval.batch_size"]
PRETRAIN_FIELDS = [
    "data.global_size", "data.local_size", "data.global_scale", "data.local_scale",
    "data.num_local_crops", "data.color_jitter.prob", "data.grayscale_prob",
    "data.solarize_prob", "mask.masked_fraction", "data.color_jitter.channel_gain", "mask.ratio",
    "mask.ratio_var", "mask.start_epoch", "mask.min_block", "optim.clip_mode", "head.out_dim",
    "head.patch_out_dim", "model.patch_stride", "data.crop_ratio", "data.sensor_jitter.prob",
    "data.sensor_jitter.min_resolution", "data.sensor_jitter.max_noise",
    "data.background_swap.prob", "data.background_swap.margin"]


def _get(cfg, dotted):
    for part in dotted.split("."):
        cfg = cfg[part]
    return cfg


def _check_random_field(stage, make_config, check, data):
    field = data.draw(st.sampled_from(stage))
    cfg = make_config("unused")
    value = data.draw(_values_like(_get(cfg, field)))
    node, leaf = cfg, field.split(".")[-1]
    for part in field.split(".")[:-1]:
        node = node[part]
    try:
        node[leaf] = value
    except (TypeError, ValueError):  # ml_collections' own type check, as on the command line
        return
    try:
        check(cfg)
    except cli.USER_ERRORS as e:
        assert "config." in user_error_line(e)  # names the key at fault


@FEW
@given(data=st.data())
def test_random_finetune_field_values_pass_or_name_the_key(data):
    _check_random_field(FINETUNE_FIELDS, tiny_finetune_config, validation.check_finetune_config,
                        data)


@FEW
@given(data=st.data())
def test_random_pretrain_field_values_pass_or_name_the_key(data):
    _check_random_field(PRETRAIN_FIELDS, tiny_pretrain_config, validation.check_pretrain_config,
                        data)


# ---------------------------------------------------------------------------- weight files
WEIGHT_FILES = ["personvit.npz", "timm.safetensors", "ibot.pth", "personvit_module.pth"]


@FEW
@given(name=st.sampled_from(WEIGHT_FILES), cut_flips=damage)
def test_damaged_weight_files_read_or_name_the_file(name, cut_flips, tmp_path):
    src = os.path.join(WEIGHT_FIXTURES, name)
    with open(src, "rb") as f:
        data = f.read()
    bad = _damaged(data, *cut_flips)
    path = tmp_path / name
    path.write_bytes(bad)
    try:
        tree = read_weights(str(path))
    except cli.USER_ERRORS as e:
        user_error_line(e, path)
        return
    assert isinstance(tree, dict)  # a flip that hit padding or metadata text still reads


# ---------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    tree = {"params": {"w": np.arange(12, dtype=np.float32).reshape(3, 4),
                       "b": np.ones(5, np.int32)}, "step": np.int32(7)}
    ckpt = checkpointing.Checkpointer(str(root / "checkpoints"), async_save=False)
    ckpt.save(7, tree, force=True)
    ckpt.close()
    return root, tree


@FEW
@given(cut_flips=damage, which=st.integers(0, 1 << 20))
def test_damaged_checkpoints_read_or_name_the_folder(small_checkpoint, cut_flips, which,
                                                     tmp_path_factory):
    root, tree = small_checkpoint
    copy = tmp_path_factory.mktemp("damaged")
    shutil.copytree(root, copy, dirs_exist_ok=True)
    state = copy / "checkpoints" / "7" / "state"
    files = sorted(p for p in state.rglob("*") if p.is_file())
    victim = files[which % len(files)]
    victim.write_bytes(_damaged(victim.read_bytes(), *cut_flips))
    try:
        got = checkpointing.load_state_tree(str(copy))
    except cli.USER_ERRORS as e:
        user_error_line(e, state)
        return
    # Read back: only bytes no reader looks at were hit (or a flip kept the value).
    assert sorted(got) == sorted(tree) and got["params"]["w"].shape == (3, 4)


# ---------------------------------------------------------------------------- TFDS records
@settings(max_examples=8, deadline=None, derandomize=True)
@given(cut_flips=damage, split=st.sampled_from(["train", "query", "gallery"]))
def test_damaged_records_load_or_name_the_dataset(tiny_data_dir, cut_flips, split,
                                                  tmp_path_factory):
    from conftest import TINY_SYNTHETIC

    copy = str(tmp_path_factory.mktemp("records"))
    shutil.copytree(tiny_data_dir, copy, dirs_exist_ok=True)
    [record_file] = [os.path.join(r, n) for r, _, ns in os.walk(copy) for n in ns
                     if f"-{split}.array_record" in n]
    with open(record_file, "rb") as f:
        data = f.read()
    with open(record_file, "wb") as f:
        f.write(_damaged(data, *cut_flips))
    try:
        splits = datasets.load_splits("synthetic", copy, TINY_SYNTHETIC)
    except cli.USER_ERRORS as e:
        user_error_line(e, os.path.join(copy, "synthetic"))
        return
    for s in splits.values():  # read back: each record decodes, or names the image
        for i in random.Random(0).sample(range(len(s)), min(3, len(s))):
            s.records[i]
