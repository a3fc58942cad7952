"""Converter behaviour beyond feature agreement (that is test_weights_fixtures.py): refusing
unsafe pickles and malformed or mismatched files with clear errors, model-size inference and
flags checked against it, never overwriting, and fine-tuning from a converted checkpoint. Inputs
are the committed fixtures (tests/fixtures/weights) or arrays derived from them; none of it needs
PyTorch."""

import os
import pickle

import jax
import numpy as np
import pytest

from conftest import WEIGHT_FIXTURES, block_torch, fail_fsync, write_torch_zip
from personvit_jax import inference
from personvit_jax.tools import convert as conv
from personvit_jax.tools.weights_io import read_weights
from personvit_jax.training import checkpointing

D, DEPTH, HEADS, PATCH = 32, 2, 2, 8  # the fixtures' ViT
IMAGE = (64, 32)
TINY = dict(image_size=IMAGE, num_heads=HEADS)
REID_NPZ = os.path.join(WEIGHT_FIXTURES, "personvit.npz")


def quiet(*_):
    pass


def reid_variant(tmp_path, name: str, changes: dict) -> str:
    """personvit.npz with arrays replaced (None = removed), saved as tmp_path/name."""
    arrays = read_weights(REID_NPZ)
    for key, value in changes.items():
        if value is None:
            del arrays[key]
        else:
            arrays[key] = value
    path = str(tmp_path / name)
    np.savez(path, **arrays)
    return path


# ---------------------------------------------------------------------------- errors and safety
class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_refused(tmp_path):
    """A .pth whose pickle would call os.system (written by hand: no PyTorch needed) and a
    plain pickle disguised as .npz: refused, nothing run, no output folder."""
    marker = tmp_path / "pwned"
    path = write_torch_zip(tmp_path / "evil.pth", pickle.dumps(
        {"cls_token": 0.0, "payload": _Exploit(marker)}, protocol=2))
    with pytest.raises(ValueError, match=f"evil.pth: refused: the pickle asks for "
                       f"{os.system.__module__}.system .*nothing was executed"):
        conv.convert(path, str(tmp_path / "out"), log=quiet)
    assert not marker.exists()
    assert not (tmp_path / "out").exists()
    # A plain pickle disguised as .npz is refused too (no allow_pickle).
    with open(tmp_path / "evil.npz", "wb") as f:
        pickle.dump(_Exploit(marker), f)
    with pytest.raises(ValueError, match="evil.npz"):
        conv.convert(str(tmp_path / "evil.npz"), str(tmp_path / "out"), log=quiet)
    assert not marker.exists()


@pytest.mark.parametrize("name", ["truncated.npz", "truncated.safetensors", "truncated.pth"])
def test_truncated_files(name, tmp_path, capsys, monkeypatch):
    """The first 4 KB of a fixture: an error naming the file, no traceback, no output folder
    (read without PyTorch)."""
    block_torch(monkeypatch)
    path = os.path.join(WEIGHT_FIXTURES, "malformed", name)
    out = tmp_path / "out"
    assert conv.main([f"--input={path}", f"--output={out}", "--num_heads=2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: not a readable "), err
    assert not out.exists()


def test_mismatched_shapes(tmp_path):
    """Arrays that do not fit the model the other shapes describe: the error names the
    PyTorch array, its converted path and both shapes; a position embedding no grid explains
    names the file and its shape."""
    qkv = reid_variant(tmp_path, "qkv.npz", {"base.blocks.1.attn.qkv.weight": np.zeros(
        (2 * D, D), np.float32)})
    with pytest.raises(ValueError, match=r"qkv.npz: base\.blocks\.1\.attn\.qkv\.weight \(64, 32\) "
                       r"-> params/backbone/blocks_1/attn/qkv/kernel has shape \(32, 64\).*"
                       r"expects \(32, 96\)"):
        conv.convert(qkv, str(tmp_path / "a"), log=quiet, **TINY)
    bn = reid_variant(tmp_path, "bn.npz", {"bottleneck.running_var": np.ones(D + 1, np.float32)})
    with pytest.raises(ValueError, match=r"bn.npz: bottleneck.running_var \(33,\) -> "
                       r"batch_stats/neck/bottleneck/var has shape \(33,\)"):
        conv.convert(bn, str(tmp_path / "b"), log=quiet, **TINY)
    pos = reid_variant(tmp_path, "pos.npz", {"base.pos_embed": np.zeros((1, 36, D), np.float32)})
    with pytest.raises(ValueError, match=r"pos.npz: pos_embed \(1, 36, 32\) fits no stride at "
                       r"--image_size=\(64, 32\) and cannot infer the grid .* 35 patch tokens"):
        conv.convert(pos, str(tmp_path / "c"), log=quiet, **TINY)
    assert not any((tmp_path / n).exists() for n in "abc")


def test_model_size_inference_and_disagreeing_flags(tmp_path):
    vit, _ = conv.split_prefix(read_weights(REID_NPZ), "base.")
    inferred = conv.infer_vit(vit, IMAGE, "x", num_heads=HEADS)
    assert inferred == dict(width=D, depth=DEPTH, num_heads=HEADS, patch_size=PATCH,
                            patch_stride=PATCH, stored_grid=(8, 4), num_cameras=0)
    # A standard width needs no --num_heads (ViT-S: 6 heads).
    assert conv._heads_for(384, {}, "x") == 6
    with pytest.raises(ValueError, match="not a standard ViT size.*--num_heads"):
        conv.convert(REID_NPZ, str(tmp_path / "a"), image_size=IMAGE, log=quiet)
    with pytest.raises(ValueError, match="--depth=12 disagrees.*depth=2"):
        conv.convert(REID_NPZ, str(tmp_path / "b"), depth=12, log=quiet, **TINY)
    with pytest.raises(ValueError, match="--model=vit_small has width 384.*width 32"):
        conv.convert(REID_NPZ, str(tmp_path / "c"), model="vit_small", log=quiet, **TINY)
    with pytest.raises(ValueError, match="--format=ibot but the keys look like personvit"):
        conv.convert(REID_NPZ, str(tmp_path / "d"), fmt="ibot", log=quiet, **TINY)
    broken = reid_variant(tmp_path, "broken.npz", {"classifier.weight": None})
    with pytest.raises(ValueError, match="lacks classifier.weight"):
        conv.convert(broken, str(tmp_path / "e"), log=quiet, **TINY)
    biased = reid_variant(tmp_path, "biased.npz", {"bottleneck.bias": np.ones(D, np.float32)})
    with pytest.raises(ValueError, match="bottleneck.bias is non-zero"):
        conv.convert(biased, str(tmp_path / "f"), log=quiet, **TINY)
    assert not any((tmp_path / n).exists() for n in "abcdef")
    # The data set of a ReID checkpoint comes from its class count (751 -> Market-1501).
    market = reid_variant(tmp_path, "market.npz",
                          {"classifier.weight": np.zeros((751, D), np.float32)})
    conv.convert(market, str(tmp_path / "g"), log=quiet, **TINY)
    assert inference.saved_config(str(tmp_path / "g")).data.name == "market1501"


def test_refuses_non_empty_output_and_cli(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    argv = [f"--input={REID_NPZ}", f"--output={out}", "--num_heads=2", "--image_size=64,32"]
    assert conv.main(argv) == 2
    assert (out / "keep.txt").read_text() == "user data" and len(os.listdir(out)) == 1
    empty = tmp_path / "empty"
    empty.mkdir()  # an existing empty folder is fine
    argv[1] = f"--output={empty}"
    assert conv.main(argv) == 0
    assert sorted(os.listdir(empty)) == ["checkpoints", "config.json"]
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]  # no temp folder left


def test_normalisation_is_named_never_guessed(tmp_path, capsys):
    """ReID / iBOT / DINO: the format's statistics, printed with the reason; timm: required
    (its pretrained tag decides, and the file does not carry it), an error naming the choice."""
    timm = os.path.join(WEIGHT_FIXTURES, "timm.safetensors")
    argv = [f"--input={timm}", f"--output={tmp_path / 'timm'}", "--num_heads=2",
            "--image_size=64,32"]
    assert conv.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert "timm.safetensors: a timm state dict does not record the normalisation" in err
    assert "augreg ViTs: mean = std = 0.5; DeiT: ImageNet's" in err and "--mean=R,G,B" in err
    assert conv.main(argv + ["--mean=0.5,0.5,0.5"]) == 2
    assert "--mean without --std" in capsys.readouterr().err
    assert not (tmp_path / "timm").exists()
    assert conv.main(argv + ["--mean=0.5,0.5,0.5", "--std=0.5,0.5,0.5"]) == 0
    assert "mean (0.5, 0.5, 0.5), std (0.5, 0.5, 0.5) (given by --mean / --std)" in (
        capsys.readouterr().out)
    assert tuple(inference.saved_config(str(tmp_path / "timm")).data.std) == (0.5, 0.5, 0.5)

    lines = []
    conv.convert(REID_NPZ, str(tmp_path / "reid"), log=lines.append, **TINY)
    assert ("  normalisation: mean (0.5, 0.5, 0.5), std (0.5, 0.5, 0.5) (personvit: PersonViT "
            "/ TransReID fine-tune and test with 0.5)") in lines
    with pytest.raises(ValueError, match="--std=0,1,1: expected 3 values"):
        conv.convert(REID_NPZ, str(tmp_path / "bad"), mean=(0, 0, 0), std=(0, 1, 1), log=quiet,
                     **TINY)


def test_finetune_init_from_converted(tmp_path, tiny_config):
    """--config.init_from=OUT starts fine-tuning from the converted backbone (LR 0: the trained
    backbone equals the converted one, while the heads are the new run's)."""
    from personvit_jax.stages import finetune

    out = str(tmp_path / "out")
    conv.convert(REID_NPZ, out, log=quiet, **TINY)
    config = tiny_config(**{"init_from": out, "optim.epochs": 1, "optim.base_lr": 0.0,
                            "optim.weight_decay": 0.0, "model.drop_path_rate": 0.0,
                            "model.width": D})
    workdir = str(tmp_path / "ft")
    finetune.train(config, workdir)
    trained = checkpointing.load_state_tree(workdir)["params"]["backbone"]
    jax.tree.map(np.testing.assert_array_equal, trained, inference.init_source(out).backbone)


def _head_sd(g):
    rng = np.random.default_rng(0)
    sd = {f"mlp.{i}.{leaf}": rng.normal(size=shape[leaf]).astype(np.float32)
          for i, shape in ((0, {"weight": (8, 4), "bias": (8,)}), (2, {"weight": (6, 8),
                                                                          "bias": (6,)}))
          for leaf in ("weight", "bias")}
    sd["last_layer.weight_v"] = rng.normal(size=(5, 6)).astype(np.float32)
    sd["last_layer.weight_g"] = g
    return sd


@pytest.mark.parametrize("args,learned", [
    ({"norm_last_layer": False}, True),  # iBOT ViT-S: learned, yet exactly 1 after epoch 1
    ({"norm_last_layer": True}, False),  # iBOT ViT-B / DINO: fixed at 1
    ({}, False),  # no args: g = 1 everywhere is taken for fixed
])
def test_head_norm_learned_from_training_args_not_values(args, learned):
    flat, log = {}, []
    cfg = conv.map_head(_head_sd(np.ones((5, 1), np.float32)), ("teacher", "head"), flat, log,
                        args)
    assert cfg["norm_last_layer"] == (not learned)
    assert ("teacher/head/last_layer/weight_g" in flat) == learned
    # values that are not 1 say "learned" only when the args are silent
    cfg = conv.map_head(_head_sd(np.full((5, 1), 2.0, np.float32)), ("t",), {}, [], args)
    assert cfg["norm_last_layer"] == (not learned if args else False)


def test_disk_full_leaves_no_output_folder(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    fail_fsync(monkeypatch, ".config.json.tmp-")
    argv = [f"--input={REID_NPZ}", f"--output={out}", "--num_heads=2", "--image_size=64,32"]
    assert conv.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: could not write {out}: No space left on device")
    assert err.count("\n") == 1 and "nothing was left behind" in err
    assert os.listdir(tmp_path) == []  # neither the output nor a temporary folder
