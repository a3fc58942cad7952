"""Test setup: 8 fake CPU devices (set before JAX is imported), a tiny synthetic dataset, and
a tiny fine-tune config (ViT depth 2, width 64, 64x32 inputs)."""

import atexit
import json
import os
import shutil
import sys
import tempfile
import zipfile

# PERSONVIT_TESTS_ON_DEVICE=1 (benchmarks/gpu/run.sh's smoke run) leaves JAX its default
# backend, e.g. the GPU: then tests that need the 8 devices do not apply.
if not os.environ.get("PERSONVIT_TESTS_ON_DEVICE"):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               " --xla_force_host_platform_device_count=8").strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

# One persistent XLA compilation cache for the session and the processes its tests start: the
# tests compile the same tiny steps many times over (each stage run, resume, mesh and process
# count), and compiling dominates their run time on CPU. A fresh folder per session, removed
# at exit, so no test ever reads an executable compiled by another checkout.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="personvit_jax_xla_cache_")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Golden converter fixtures, written by tests/fixtures/make_weights_fixtures.py.
WEIGHT_FIXTURES = os.path.join(REPO, "tests", "fixtures", "weights")
sys.path.insert(0, REPO)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from personvit_jax.config_args import load_config  # noqa: E402

TINY_SYNTHETIC = {"seed": 0, "num_train_ids": 8, "num_test_ids": 6, "num_distractors": 10,
                  "num_junk": 5, "images_per_id": (6, 10)}


def apply_overrides(config, overrides: dict):
    """Sets dotted keys, e.g. {"optim.epochs": 1}, like --config.optim.epochs=1."""
    for key, value in overrides.items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config


def block_torch(monkeypatch) -> None:
    """Weight files of every format, `.pth` included, are read without PyTorch: `import torch`
    is made to fail for the test, so a test that passes proves that PyTorch is not needed."""
    monkeypatch.setitem(sys.modules, "torch", None)


def write_torch_zip(path, data_pkl: bytes, storages: dict | None = None, folder: str = "archive",
                    byteorder: bytes | None = b"little") -> str:
    """A zip laid out as torch.save lays it out (`<folder>/data.pkl`, `<folder>/data/<key>`,
    `byteorder`, `version`), written by hand: for files PyTorch would not write (hostile or
    broken ones) and for tests that have no PyTorch. Returns `path` as a string."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{folder}/data.pkl", data_pkl)
        if byteorder is not None:
            zf.writestr(f"{folder}/byteorder", byteorder)
        for key, raw in (storages or {}).items():
            zf.writestr(f"{folder}/data/{key}", raw)
        zf.writestr(f"{folder}/version", b"3\n")
    return str(path)


def open_file_name(fd: int) -> str:
    """The base name of the file open at descriptor `fd` ('' when it has none)."""
    try:
        return os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
        return ""


def fail_fsync(monkeypatch, name_prefix: str) -> None:
    """os.fsync of a file whose name starts with `name_prefix` (e.g. '.eval_results.json.tmp-',
    the temporary file files.atomic_write writes) reports the disk full, as a file system with
    delayed allocation does; every other fsync works."""
    import errno

    fsync = os.fsync

    def failing(fd):
        if open_file_name(fd).startswith(name_prefix):
            raise OSError(errno.ENOSPC, "No space left on device")
        return fsync(fd)

    monkeypatch.setattr(os, "fsync", failing)


def user_error_line(e: BaseException, *names) -> str:
    """The one line `error: ...` the command lines print for `e` (exit status 2), which must be
    a user error raised by the package and name each of `names` (asserted)."""
    import io

    from personvit_jax import cli

    assert cli.is_user_error(e), f"not a user error of ours: {type(e).__name__}: {e}"
    out = io.StringIO()
    assert cli.report(e, out) == cli.EXIT_USER_ERROR
    line = out.getvalue()
    assert line.startswith("error: ") and line.count("\n") == 1, line
    for name in names:
        assert str(name) in line, line
    return line


def assert_trees(a, b, **tol):
    """Same structure; leaves equal bit for bit, or within assert_allclose's `tol`."""
    import jax
    import numpy as np

    la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
    assert [k for k, _ in la] == [k for k, _ in lb]
    for (k, x), (_, y) in zip(la, lb):
        if tol:
            np.testing.assert_allclose(x, y, err_msg=jax.tree_util.keystr(k), **tol)
        else:
            np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(k))


def assert_trees_close_in_norm(a, b, rel: float, atol: float):
    """Same structure; every leaf close to `b` in L2 norm: ||a - b|| <= rel * ||b|| + atol *
    sqrt(size), i.e. relative in norm, with `atol` an RMS floor for leaves that are rounding
    noise themselves (e.g. the gradient of a bias that a following BatchNorm cancels).

    For runs that differ only in float summation order (remat, fused vs unfused kernels): one
    near-cancelling element can then move by more than any elementwise tolerance that would
    still catch a real error, while the leaf as a whole stays within float32 rounding."""
    import jax
    import numpy as np

    la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
    assert [k for k, _ in la] == [k for k, _ in lb]
    for (k, x), (_, y) in zip(la, lb):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        diff = np.linalg.norm(x - y)
        bound = rel * np.linalg.norm(y) + atol * np.sqrt(y.size)
        assert diff <= bound, f"{jax.tree_util.keystr(k)}: ||a - b|| = {diff:.3g} > {bound:.3g}"


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory):
    """A data_dir holding the tiny synthetic set, generated and built as TFDS records once per
    session (what data.name=synthetic does on first use)."""
    from personvit_jax.synthetic import build

    data_dir = str(tmp_path_factory.mktemp("data"))
    build.prepare(data_dir, TINY_SYNTHETIC)
    return data_dir


# A set large enough for learning to show in the retrieval metrics: 48 train identities, 32
# test identities (83 queries), no distractors; ~3 s to generate and build.
LEARN_SYNTHETIC = {"seed": 0, "num_train_ids": 48, "num_test_ids": 32, "num_distractors": 0,
                   "num_junk": 0, "images_per_id": (6, 8)}


@pytest.fixture(scope="session")
def learn_data_dir(tmp_path_factory):
    from personvit_jax.synthetic import build

    data_dir = str(tmp_path_factory.mktemp("learn_data"))
    build.prepare(data_dir, LEARN_SYNTHETIC)
    return data_dir


def load_step_fixture(folder: str) -> tuple[dict, dict]:
    """(settings.json, the arrays of step.npz) of a training-step fixture folder."""
    with open(os.path.join(folder, "settings.json")) as f:
        settings = json.load(f)
    with np.load(os.path.join(folder, "step.npz")) as f:
        return settings, {k: f[k] for k in f.files}


def shuffle_train_labels(load_splits):
    """A `datasets.load_splits` whose train split has its identity labels permuted (seeded):
    the same images, labels that no longer follow them."""
    from personvit_jax.data import pipeline

    def shuffled(*a, **kw):
        splits = load_splits(*a, **kw)
        train = splits["train"]
        perm = np.random.default_rng(0).permutation(len(train))
        return dict(splits, train=pipeline.select_rows(train, np.arange(len(train)),
                                                       train.pids[perm]))

    return shuffled


def tiny_reid_sizes(c, num_ids_per_batch: int) -> None:
    """64x32 inputs, P x 4 batches, a 2-block 64-wide ViT with 8-px patches (4 x 8 grid)."""
    c.data.image_size = (64, 32)
    c.data.num_ids_per_batch = num_ids_per_batch
    c.data.num_instances = 4
    c.data.pad = 4
    c.model.width, c.model.depth, c.model.num_heads = 64, 2, 2
    c.model.patch_size = c.model.patch_stride = 8
    c.model.pos_grid = (8, 4)


def tiny_finetune_config(data_dir, **overrides):
    """configs/finetune.py:synthetic shrunk to a seconds-long run on the tiny set."""
    c = load_config("finetune", "synthetic")
    c.data.data_dir = data_dir
    c.data.synthetic = dict(TINY_SYNTHETIC)
    tiny_reid_sizes(c, num_ids_per_batch=4)
    c.optim.epochs = 2
    c.optim.warmup_epochs = 1
    c.eval.every_epochs = 0
    c.eval.batch_size = 32
    c.log_every_steps = 2
    c.checkpoint_every_steps = 4
    return apply_overrides(c, overrides)


@pytest.fixture
def tiny_config(tiny_data_dir):
    return lambda **kw: tiny_finetune_config(tiny_data_dir, **kw)


@pytest.fixture(scope="session")
def tiny_splits(tiny_data_dir):
    from personvit_jax import datasets

    return datasets.load_splits("synthetic", tiny_data_dir, TINY_SYNTHETIC)


def tiny_pretrain_config(data_dir, **overrides):
    """configs/pretrain.py:synthetic shrunk to seconds on the tiny set."""
    c = load_config("pretrain", "synthetic")
    c.data.data_dir = c.monitor.data_dir = data_dir
    c.data.synthetic = dict(TINY_SYNTHETIC)
    c.data.batch_size = 8
    c.data.global_size, c.data.local_size = (64, 32), (32, 16)
    c.data.num_local_crops = 2
    c.model.width, c.model.depth, c.model.num_heads = 64, 2, 2
    c.model.patch_size = c.model.patch_stride = 8
    c.model.pos_grid = (8, 4)
    c.head.out_dim = c.head.patch_out_dim = 64
    c.head.hidden_dim, c.head.bottleneck_dim = 32, 16
    c.optim.epochs = 2
    c.monitor.every_epochs = 0
    c.monitor.batch_size = 32
    c.log_every_steps = 2
    c.checkpoint_every_steps = 2
    c.keep_checkpoints = 100
    return apply_overrides(c, overrides)


def tiny_usl_config(data_dir, **overrides):
    """configs/usl.py:synthetic shrunk to seconds on the tiny set (2 epochs x 3 steps; a
    small Jaccard neighbourhood and DBSCAN core for its ~60 images)."""
    c = load_config("usl", "synthetic")
    c.data.data_dir = data_dir
    c.data.synthetic = dict(TINY_SYNTHETIC, style_seed=None)
    tiny_reid_sizes(c, num_ids_per_batch=2)
    c.cluster.k1, c.cluster.k2, c.cluster.min_samples, c.cluster.eps = 6, 2, 2, 0.7
    c.optim.epochs = 2
    c.optim.iters_per_epoch = 3
    c.eval.every_epochs = 1
    c.eval.batch_size = 32
    c.log_every_steps = 1
    c.checkpoint_every_steps = 1
    c.keep_checkpoints = 100
    return apply_overrides(c, overrides)


@pytest.fixture
def tiny_pt_config(tiny_data_dir):
    return lambda **kw: tiny_pretrain_config(tiny_data_dir, **kw)


@pytest.fixture(scope="session")
def pretrain_reference(tiny_data_dir, tmp_path_factory):
    """The workdir of one uninterrupted tiny_pretrain_config() run (2 epochs, a checkpoint every
    2 steps, all kept), which the resumed and killed runs of the tests must reproduce bit for
    bit: run once per session (per xdist worker). Read only: tests copy from it."""
    from personvit_jax.stages import pretrain

    workdir = tmp_path_factory.mktemp("pretrain_reference")
    pretrain.train(tiny_pretrain_config(tiny_data_dir), str(workdir))
    return workdir
