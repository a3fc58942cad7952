"""Our fine-tune step is PersonViT's iteration: three steps of `stages.finetune.make_train_step`
(configs/finetune.py, the PersonViT recipe, at tiny sizes) on the weights and P x K batches of
tests/fixtures/finetune_step/ give the losses, parameters and BNNeck statistics of a PyTorch
transcription of PersonViT's do_train (written by tests/fixtures/make_finetune_step_fixtures.py,
which says what the three steps exercise), and our optimizer applies PersonViT's LR to every
weight and bias at every iteration of that run. No PyTorch needed here."""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO, load_step_fixture
from personvit_jax import reid_state, trees
from personvit_jax.config_args import load_config
from personvit_jax.models.reid import reid_model_from_config
from personvit_jax.stages import finetune
from personvit_jax.tools import convert
from personvit_jax.training import optim

FIXTURE = os.path.join(REPO, "tests", "fixtures", "finetune_step")
sys.path.insert(0, os.path.join(REPO, "tests", "fixtures"))
ATOL = 1e-5  # parameters and statistics, absolute


def personvit_config(s: dict):
    """configs/finetune.py with the fixture's sizes and optimizer numbers; everything else
    (SGD, per-epoch schedule, warm-up and final factors, losses) is the recipe's default,
    checked against the fixture's settings."""
    c = load_config("finetune")
    h, w = s["image_hw"]
    m = c.model
    m.width, m.depth, m.num_heads = s["width"], s["depth"], s["heads"]
    m.patch_size = m.patch_stride = s["patch"]
    m.pos_grid = (h // s["patch"], w // s["patch"])
    m.drop_path_rate = 0.0  # its random masks cannot be matched across frameworks
    c.data.image_size = (h, w)
    c.data.num_ids_per_batch, c.data.num_instances = s["ids_per_batch"], s["instances"]
    o = c.optim
    o.base_lr, o.epochs, o.warmup_epochs = s["base_lr"], s["max_epochs"], s["warmup_epochs"]
    o.weight_decay, o.weight_decay_bias = s["weight_decay"], s["weight_decay_bias"]
    # the recipe's defaults are PersonViT's
    assert (o.name, o.momentum, o.bias_lr_factor) == ("sgd", s["momentum"], s["bias_lr_factor"])
    assert (o.warmup_factor, o.final_lr_factor) == (s["warmup_factor"], s["final_lr_factor"])
    assert o.per_epoch_schedule and o.get("schedule", "cosine") == "cosine"
    assert not o.clip_grad and o.layer_decay == 1.0 and o.accum_steps == 1
    assert o.decay_tokens  # torch's SGD decays cls_token / pos_embed too
    l = c.loss
    assert (l.id_weight, l.triplet_weight, l.label_smoothing, l.triplet) == (1.0, 1.0, 0.0, "soft")
    assert not m.sie and not m.jpm and m.compute_dtype == "float32"
    return c


def torch_tree(arrays: dict, prefix: str, s: dict) -> dict:
    """A PersonViT state dict (npz keys `prefix/<name>`) as our {params, batch_stats} tree,
    through the converter's own name mapping."""
    sd = {k[len(prefix) + 1:]: v for k, v in arrays.items() if k.startswith(prefix + "/")}
    base, rest = convert.split_prefix(sd, "base.")
    flat: dict = {}
    convert.map_reid(base, rest, s["depth"], flat, [], FIXTURE)
    return trees.unflatten(flat)


def run_our_steps(cfg, s: dict, arrays: dict):
    model = reid_model_from_config(cfg, s["num_classes"])
    tx, lr_schedule = optim.make_finetune_optimizer(cfg.optim, s["steps_per_epoch"])
    state = reid_state.init_train_state(model, tx, cfg, tuple(cfg.data.image_size))
    init = jax.tree.map(jnp.asarray, torch_tree(arrays, "init", s))
    for coll in ("params", "batch_stats"):
        assert jax.tree.structure(init[coll]) == jax.tree.structure(state[coll]), coll
    state = dict(state, params=init["params"], batch_stats=init["batch_stats"],
                 opt_state=tx.init(init["params"]))
    step = jax.jit(finetune.make_train_step(model, tx, lr_schedule, cfg))
    metrics = []
    for t in range(s["steps"]):
        batch = {k: jnp.asarray(arrays[f"input/{k}"][t]) for k in ("images", "labels", "camids")}
        state, m = step(state, batch)
        metrics.append(jax.device_get(m))
    return jax.device_get(state), metrics, tx, lr_schedule


@pytest.fixture(scope="module")
def parity():
    s, arrays = load_step_fixture(FIXTURE)
    cfg = personvit_config(s)
    state, metrics, tx, lr_schedule = run_our_steps(cfg, s, arrays)
    return s, arrays, cfg, state, metrics, tx, lr_schedule


def test_losses_match_personvit(parity):
    _, arrays, _, _, metrics, _, _ = parity
    assert not any(m["nonfinite"] for m in metrics)
    for ours, theirs in (("loss", "total"), ("id_loss", "id"), ("triplet_loss", "triplet")):
        got = np.array([m[ours] for m in metrics])
        np.testing.assert_allclose(got, arrays[f"loss/{theirs}"], rtol=1e-5, err_msg=ours)


def test_parameters_match_personvit(parity):
    s, arrays, _, state, _, _, _ = parity
    ref = torch_tree(arrays, "final", s)["params"]
    assert jax.tree.structure(state["params"]) == jax.tree.structure(ref)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(state["params"]),
                            jax.tree.leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=0, atol=ATOL, err_msg=jax.tree_util.keystr(path))
    # The three steps moved every array well beyond that tolerance.
    init = torch_tree(arrays, "init", s)["params"]
    moved = jax.tree.map(lambda x, y: np.abs(x - y).max(), ref, init)
    assert min(jax.tree.leaves(moved)) > 20 * ATOL, moved


def test_bnneck_running_mean_matches_personvit(parity):
    s, arrays, _, state, _, _, _ = parity
    ref = torch_tree(arrays, "final", s)["batch_stats"]["neck"]["bottleneck"]
    ours = state["batch_stats"]["neck"]["bottleneck"]
    np.testing.assert_allclose(ours["mean"], ref["mean"], rtol=0, atol=ATOL)


def test_bnneck_running_var_matches_personvit(parity):
    """The running variance moves towards the UNBIASED batch variance, as torch's does."""
    s, arrays, _, state, _, _, _ = parity
    ref = torch_tree(arrays, "final", s)["batch_stats"]["neck"]["bottleneck"]
    ours = state["batch_stats"]["neck"]["bottleneck"]
    np.testing.assert_allclose(ours["var"], ref["var"], rtol=0, atol=ATOL)


def applied_lrs(tx, params, num_steps: int) -> list:
    """The LR our optimizer applies to each array at steps 0 .. num_steps - 1: the update of a
    unit gradient with zero momentum and zero parameters (no weight decay) is -LR, element-wise;
    zero gradients between probes advance the step count and leave the momentum at zero."""
    zeros = jax.tree.map(jnp.zeros_like, params)
    ones = jax.tree.map(jnp.ones_like, params)
    update = jax.jit(tx.update)
    opt_state, out = tx.init(zeros), []
    for _ in range(num_steps):
        probe, _ = update(ones, opt_state, zeros)
        out.append(jax.tree.map(lambda u: -np.asarray(u), probe))
        _, opt_state = update(zeros, opt_state, zeros)
    return out


def test_learning_rates_match_personvit_at_every_iteration(parity):
    s, arrays, _, state, metrics, tx, lr_schedule = parity
    steps = np.arange(s["max_epochs"] * s["steps_per_epoch"])
    want = {False: arrays["schedule/weight"], True: arrays["schedule/bias"]}
    # torch's optimizer had these during the three trained iterations (checked by the script)
    np.testing.assert_array_equal(arrays["lr/weight"], want[False][:s["steps"]])
    np.testing.assert_array_equal(arrays["lr/bias"], want[True][:s["steps"]])
    assert arrays["lr/bias"][2] != 2 * arrays["lr/weight"][2]  # shared start, not 2x the ramp
    # every weight and every bias, at every iteration of the run
    per_step = applied_lrs(tx, state["params"], len(steps))
    for (path, _), *lrs in zip(jax.tree_util.tree_leaves_with_path(state["params"]),
                               *[jax.tree.leaves(p) for p in per_step]):
        name, bias = jax.tree_util.keystr(path), optim.is_bias(path)
        got = np.array([lr.min() for lr in lrs])
        assert all(lr.min() == lr.max() for lr in lrs), name
        np.testing.assert_allclose(got, want[bias], rtol=1e-6, err_msg=name)
    # the schedule make_finetune_optimizer returns, and the LR the step reports
    np.testing.assert_allclose(np.asarray(lr_schedule(steps)), want[False], rtol=1e-6)
    np.testing.assert_allclose([m["lr"] for m in metrics], arrays["lr/weight"], rtol=1e-6)


def test_parity_fixture_is_what_the_script_writes():
    """Rerunning the (seeded) PyTorch transcription reproduces the committed fixture."""
    pytest.importorskip("torch", reason="the fixture script needs requirements-convert.txt")
    import make_finetune_step_fixtures as script

    assert script.main(["--output", FIXTURE, "--check"]) == 0
