"""Our pretrain step is iBOT's iteration: three steps of `stages.pretrain.make_pretrain_step` on
the weights, views and masks of tests/fixtures/ibot_step/ give the losses, student, teacher and
centres of a PyTorch transcription of bytedance/ibot's train_one_epoch (written by
tests/fixtures/make_ibot_step_fixtures.py, which says what the three steps exercise), and our
schedules give iBOT's values at every iteration of that run. No PyTorch needed here."""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO, load_step_fixture
from personvit_jax import trees
from personvit_jax.config_args import load_config
from personvit_jax.data import color_augment
from personvit_jax.models.pretrain import pretrain_model_from_config
from personvit_jax.stages import pretrain
from personvit_jax.tools import convert

FIXTURE = os.path.join(REPO, "tests", "fixtures", "ibot_step")
sys.path.insert(0, os.path.join(REPO, "tests", "fixtures"))


def ibot_config(s: dict):
    """configs/pretrain.py with the fixture's sizes and iBOT arguments (names mapped to ours)."""
    c = load_config("pretrain")
    c.model.width, c.model.depth, c.model.num_heads = s["width"], s["depth"], s["heads"]
    c.model.patch_size = c.model.patch_stride = s["patch"]
    c.model.pos_grid = (s["global_hw"][0] // s["patch"], s["global_hw"][1] // s["patch"])
    c.model.drop_path_rate = 0.0  # its random masks cannot be matched across frameworks
    c.data.global_size, c.data.local_size = tuple(s["global_hw"]), tuple(s["local_hw"])
    c.data.num_local_crops, c.data.batch_size = s["num_local_crops"], s["batch"]
    c.data.mean, c.data.std = tuple(s["mean"]), tuple(s["std"])
    c.head.out_dim = c.head.patch_out_dim = s["out_dim"]
    c.head.hidden_dim, c.head.bottleneck_dim = s["hidden_dim"], s["bottleneck_dim"]
    c.head.norm_last_layer, c.head.shared_head = s["norm_last_layer"], True
    c.head.freeze_last_layer_epochs = s["freeze_last_layer"]
    o, l = c.optim, c.loss
    o.base_lr, o.min_lr, o.epochs, o.warmup_epochs = s["lr"], s["min_lr"], s["epochs"], s[
        "warmup_epochs"]
    o.weight_decay, o.weight_decay_end = s["weight_decay"], s["weight_decay_end"]
    o.ema_momentum, o.ema_momentum_end, o.clip_grad = s["momentum_teacher"], 1.0, s["clip_grad"]
    l.teacher_temp, l.teacher_patch_temp = s["teacher_temp"], s["teacher_patch_temp"]
    l.warmup_teacher_temp = s["warmup_teacher_temp"]
    l.warmup_teacher_patch_temp = s["warmup_teacher_patch_temp"]
    l.warmup_teacher_temp_epochs = s["warmup_teacher_temp_epochs"]
    l.student_temp, l.center_momentum = s["student_temp"], s["center_momentum"]
    l.cls_weight, l.patch_weight = s["lambda1"], s["lambda2"]
    assert c.optim.clip_mode == "per_tensor" and c.model.pos_interp == "bicubic"  # defaults
    return c


def torch_tree(arrays: dict, prefix: str, s: dict) -> dict:
    """A PyTorch state dict (npz keys `prefix/<name>`) as our {backbone, head} tree, through
    the converter's own name mapping."""
    sd = {k[len(prefix) + 1:]: v for k, v in arrays.items() if k.startswith(prefix + "/")}
    flat, log = {}, []
    backbone = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
    convert.map_module(backbone, "backbone.", ("backbone",), flat, log)
    head = {k[len("head."):]: v for k, v in sd.items() if k.startswith("head.")}
    convert.map_head(head, ("head",), flat, log, {"norm_last_layer": s["norm_last_layer"]})
    return trees.unflatten(flat)


def key_bias_mask(path, x, width: int) -> np.ndarray:
    """The attention key biases: true gradient exactly 0, float32 Adam noise up to ~LR per
    step in any float32 implementation (see make_ibot_step_fixtures.key_bias)."""
    mask = np.zeros(np.shape(x), bool)
    if jax.tree_util.keystr(path).endswith("['attn']['qkv']['bias']"):
        mask[width:2 * width] = True
    return mask


def run_our_steps(cfg, s: dict, arrays: dict):
    student = pretrain_model_from_config(cfg, student=True)
    teacher = pretrain_model_from_config(cfg, student=False)
    init = torch_tree(arrays, "init", s)
    init["backbone"].setdefault("mask_token", np.zeros((1, 1, s["width"]), np.float32))
    tx, schedules = pretrain.make_optimizer(cfg, init, s["batch"], s["steps_per_epoch"])
    state = jax.tree.map(jnp.asarray, pretrain.init_pretrain_state(student, tx, cfg))
    params = jax.tree.map(jnp.asarray, init)
    state = dict(state, student=params, teacher=jax.tree.map(jnp.copy, params),
                 opt_state=tx.init(params))
    step = jax.jit(pretrain.make_pretrain_step(student, teacher, tx, schedules, cfg))
    identity = lambda n: np.broadcast_to(color_augment.IDENTITY, (s["batch"], n) +
                                         color_augment.IDENTITY.shape)
    metrics = []
    for t in range(s["steps"]):
        batch = {"global": arrays["input/global"][t], "local": arrays["input/local"][t],
                 "masks": arrays["input/masks"][t], "global_color": identity(2),
                 "local_color": identity(s["num_local_crops"])}
        state, m = step(state, jax.tree.map(jnp.asarray, batch))
        metrics.append(jax.device_get(m))
    return jax.device_get(state), metrics, schedules


@pytest.fixture(scope="module")
def parity():
    s, arrays = load_step_fixture(FIXTURE)
    cfg = ibot_config(s)
    state, metrics, schedules = run_our_steps(cfg, s, arrays)
    return s, arrays, state, metrics, schedules


def test_losses_match_ibot(parity):
    s, arrays, _, metrics, _ = parity
    for ours, theirs in (("loss", "loss"), ("cls_loss", "cls"), ("patch_loss", "patch")):
        got = np.array([m[ours] for m in metrics])
        np.testing.assert_allclose(got, arrays[f"loss/{theirs}"], rtol=1e-5, err_msg=ours)


@pytest.mark.parametrize("net", ["student", "teacher"])
def test_student_and_teacher_match_ibot(parity, net):
    s, arrays, state, _, _ = parity
    ref = torch_tree(arrays, net, s)
    ours = dict(state[net])
    if net == "teacher":  # iBOT's teacher has no mask token (ours never uses its copy)
        ours["backbone"] = {k: v for k, v in ours["backbone"].items() if k != "mask_token"}
    assert jax.tree.structure(ours) == jax.tree.structure(ref)
    lr_bound = s["steps"] * float(arrays["schedule/lr"].max())
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(ours), jax.tree.leaves(ref)):
        name = jax.tree_util.keystr(path)
        noisy = key_bias_mask(path, b, s["width"])
        np.testing.assert_allclose(a[~noisy], b[~noisy], rtol=0, atol=1e-5, err_msg=name)
        assert np.all(np.abs(a[noisy] - b[noisy]) <= lr_bound), name
    # The three steps moved every array well beyond that tolerance.
    init = torch_tree(arrays, "init", s)
    if net == "teacher":
        del init["backbone"]["mask_token"]
    moved = jax.tree.map(lambda x, y: np.abs(np.asarray(x) - y).max(), ref, init)
    assert min(jax.tree.leaves(moved)) > 1e-4


def test_centres_match_ibot(parity):
    _, arrays, state, _, _ = parity
    np.testing.assert_allclose(state["center"], arrays["center"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(state["center_patch"], arrays["center2"].reshape(1, -1), rtol=0,
                               atol=1e-5)


def test_schedules_match_ibot_at_every_iteration(parity):
    s, arrays, _, metrics, schedules = parity
    steps = np.arange(s["epochs"] * s["steps_per_epoch"])
    for name in ("lr", "weight_decay", "ema_momentum"):
        np.testing.assert_allclose(np.asarray(schedules[name](steps)), arrays[f"schedule/{name}"],
                                   rtol=1e-6, atol=1e-9, err_msg=name)
    for name in ("teacher_temp", "teacher_patch_temp"):  # per epoch in iBOT
        per_epoch = arrays[f"schedule/{name}"][steps // s["steps_per_epoch"]]
        np.testing.assert_allclose(np.asarray(schedules[name](steps)), per_epoch, rtol=1e-6,
                                   err_msg=name)
    # and the step reports the values it used
    got = np.array([m["teacher_patch_temp"] for m in metrics])
    np.testing.assert_allclose(got, per_epoch[:s["steps"]], rtol=1e-6)


def test_parity_fixture_is_what_the_script_writes():
    """Rerunning the (seeded) PyTorch transcription reproduces the committed fixture."""
    pytest.importorskip("torch", reason="the fixture script needs requirements-convert.txt")
    import make_ibot_step_fixtures as script

    assert script.main(["--output", FIXTURE, "--check"]) == 0
