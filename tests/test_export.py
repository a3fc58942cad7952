"""Exported feature extractor (jax.export): loaded in a process that never imports this
package's model code, it gives the in-process features for several batch sizes."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import fail_fsync, tiny_finetune_config
from personvit_jax import inference
from personvit_jax.models.reid import reid_model_from_config
from personvit_jax.models.vit import vit_from_config
from personvit_jax.tools import export
from personvit_jax.tools.convert import write_checkpoint
from personvit_jax.training import checkpointing

# Runs in a fresh interpreter: only jax + numpy, then checks no personvit_jax module came in.
LOADER = """
import json, sys
import numpy as np
from jax import export
exported = export.deserialize(open(sys.argv[1], "rb").read())
images = np.load(sys.argv[2])
out = {str(b): np.asarray(exported.call(images[:b])).tolist() for b in (2, 5)}
assert not [m for m in sys.modules if m.startswith("personvit_jax")]
print(json.dumps({"in": str(exported.in_avals[0]), "out": out}))
"""


def _write_tiny_checkpoint(path, kind: str):
    """A tiny model in the layout of our runs, with its config.json (mean/std != 0.5 so the
    baked-in normalisation is exercised): kind 'reid' (random weights and BN statistics),
    'jpm' (+ TransReID's 4 JPM branches), 'sie' (+ camera embeddings for 6 cameras) or
    'backbone' (a ViT)."""
    config = tiny_finetune_config("unused")
    config.data.mean, config.data.std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    config.model.jpm, config.model.sie = kind == "jpm", kind == "sie"
    x = np.zeros((1, 64, 32, 3), np.float32)
    if kind == "backbone":
        variables = {"params": {"backbone": vit_from_config(config.model).init(
            jax.random.key(2), x)["params"]}}
    else:
        cams = np.zeros((1,), np.int32) if kind == "sie" else None
        model = reid_model_from_config(config, 7, num_cameras=6 if kind == "sie" else 0)
        variables = dict(model.init(jax.random.key(1), x, cams))
        rng = np.random.default_rng(0)
        variables["batch_stats"] = jax.tree.map(
            lambda a: rng.uniform(0.5, 1.5, a.shape).astype(np.float32), variables["batch_stats"])
        for neck in variables["batch_stats"].values():  # means around 0, variances around 1
            neck["bottleneck"]["mean"] = neck["bottleneck"]["mean"] - 1.0
        if kind == "sie":  # visible camera embeddings (initialised near 0)
            sie = variables["params"]["backbone"]["sie_embed"]
            variables["params"]["backbone"]["sie_embed"] = rng.normal(size=sie.shape)
    write_checkpoint(str(path), jax.tree.map(lambda a: np.asarray(a, np.float32),
                                             dict(variables)), config)
    return config


@pytest.mark.parametrize("kind,flip,neck", [("reid", False, "after"), ("backbone", True, "")])
def test_export_matches_in_process_features(tmp_path, kind, flip, neck):
    ckpt = tmp_path / "ckpt"
    config = _write_tiny_checkpoint(ckpt, kind)
    out = tmp_path / "extractor.jax"
    argv = [f"--checkpoint={ckpt}", f"--output={out}"] + ["--flip"] * flip + (
        [f"--neck_feat={neck}"] if neck else [])
    assert export.main(argv) == 0

    images_u8 = np.random.default_rng(0).integers(0, 256, (5, 64, 32, 3), dtype=np.uint8)
    np.save(tmp_path / "images.npy", images_u8)
    r = subprocess.run([sys.executable, "-c", LOADER, str(out), str(tmp_path / "images.npy")],
                       capture_output=True, text=True, cwd=str(tmp_path),
                       env=dict(os.environ, PYTHONPATH=""))
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["in"] == "uint8[b,64,32,3]"

    loaded = inference.load_model(str(ckpt))
    assert loaded.kind == kind
    x = (images_u8 / 255.0 - np.asarray(config.data.mean)) / np.asarray(config.data.std)
    expected = np.asarray(loaded.bound_embed(neck or "before", flip=flip)(x.astype(np.float32)))
    for b in (2, 5):
        np.testing.assert_allclose(np.asarray(result["out"][str(b)]), expected[:b],
                                   rtol=1e-5, atol=1e-6)
    # Flip / neck side are baked in: they change the features.
    other = np.asarray(loaded.bound_embed(neck or "before", flip=not flip)(x.astype(np.float32)))
    assert np.abs(other - expected).max() > 1e-4


def test_export_refuses_overwrite_and_missing_config(tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    _write_tiny_checkpoint(ckpt, "backbone")
    out = tmp_path / "extractor.jax"
    out.write_bytes(b"user file")
    assert export.main([f"--checkpoint={ckpt}", f"--output={out}", "--platforms=cpu"]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert out.read_bytes() == b"user file"
    assert export.main([f"--checkpoint={ckpt}", f"--output={out}", "--platforms=cpu",
                        "--overwrite"]) == 0
    assert out.read_bytes() != b"user file"
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]
    os.remove(ckpt / "config.json")
    assert export.main([f"--checkpoint={ckpt}", f"--output={tmp_path / 'x.jax'}"]) == 2
    assert "no config.json" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError):
        checkpointing.resolve_checkpoint(str(tmp_path / "nowhere"))


# ---------------------------------------------------------------------------- ONNX
def _expected(loaded, config, images_u8, camids, flip=False):
    """In-process features: numpy normalisation of the pixels, the loader's embed function."""
    x = (images_u8 / 255.0 - np.asarray(config.data.mean)) / np.asarray(config.data.std)
    return np.asarray(loaded.bound_embed("before", flip=flip)(x.astype(np.float32), camids))


@pytest.mark.parametrize("kind,layouts", [
    ("reid", ("uint8_nhwc", "float32_nchw")), ("jpm", ("float32_nchw",)),
    ("sie", ("uint8_nhwc",)), ("backbone", ("float32_nchw",))])
def test_onnx_export_runs_in_onnxruntime(tmp_path, kind, layouts, capsys):
    """The ONNX file in ONNX Runtime's CPU provider gives the in-process JAX features to 1e-4
    (L2-normalised) at batch 1 and 5: one graph, free batch dimension. Each layout once, each
    kind once (an export costs seconds in CI)."""
    ort = pytest.importorskip("onnxruntime", reason="ONNX export needs requirements-onnx.txt")
    onnx = pytest.importorskip("onnx", reason="ONNX export needs requirements-onnx.txt")
    ckpt = tmp_path / "ckpt"
    config = _write_tiny_checkpoint(ckpt, kind)
    loaded = inference.load_model(str(ckpt))
    rng = np.random.default_rng(3)
    images_u8 = rng.integers(0, 256, (5, 64, 32, 3), dtype=np.uint8)
    camids = rng.integers(0, 6, 5).astype(np.int32) if kind == "sie" else None
    expected = _expected(loaded, config, images_u8, camids)
    x_nchw = ((images_u8 / 255.0 - np.asarray(config.data.mean)) / np.asarray(config.data.std)
              ).transpose(0, 3, 1, 2).astype(np.float32)
    for layout in layouts:
        images = images_u8 if layout == "uint8_nhwc" else x_nchw
        out = tmp_path / f"{layout}.onnx"
        assert export.main([f"--checkpoint={ckpt}", "--format=onnx", f"--output={out}",
                            f"--input_layout={layout}"]) == 0
        assert "ONNX Runtime max |diff| vs JAX" in capsys.readouterr().out
        model = onnx.load(str(out))
        meta = {p.key: p.value for p in model.metadata_props}
        assert (meta["input_layout"], meta["kind"], meta["mean"]) == (
            layout, loaded.kind, "0.4,0.5,0.6")
        session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        inputs = session.get_inputs()
        assert [i.name for i in inputs] == ["images"] + ["camera_ids"] * (kind == "sie")
        assert inputs[0].shape[0] == "batch" and session.get_outputs()[0].name == "features"
        for b in (1, 5):
            feed = {"images": images[:b]}
            if kind == "sie":
                feed["camera_ids"] = camids[:b]
            got = session.run(None, feed)[0]
            assert got.shape == expected[:b].shape
            np.testing.assert_allclose(got, expected[:b], rtol=0, atol=1e-4)
    if kind == "sie":  # the camera input matters
        feed = {"images": images_u8, "camera_ids": (camids + 1) % 6}
        other = ort.InferenceSession(str(tmp_path / "uint8_nhwc.onnx")).run(None, feed)[0]
        assert np.abs(other - expected).max() > 1e-3


def test_onnx_options_flip_unnormalised_and_caller_statistics(tmp_path, capsys):
    """--flip and --nonormalize are baked in; --input_mean/--input_std make a float32_nchw
    graph take inputs normalised with the caller's statistics (here ImageNet's, torchreid's
    default) and give the features of the raw pixels."""
    ort = pytest.importorskip("onnxruntime", reason="ONNX export needs requirements-onnx.txt")
    ckpt = tmp_path / "ckpt"
    config = _write_tiny_checkpoint(ckpt, "reid")
    loaded = inference.load_model(str(ckpt))
    images_u8 = np.random.default_rng(4).integers(0, 256, (3, 64, 32, 3), dtype=np.uint8)
    x = ((images_u8 / 255.0 - np.asarray(config.data.mean)) / np.asarray(config.data.std)
         ).astype(np.float32)
    raw_flipped = np.asarray(loaded.bound_embed("before", normalize=False, flip=True)(x))
    out = tmp_path / "raw_flip.onnx"
    assert export.main([f"--checkpoint={ckpt}", "--format=onnx", f"--output={out}", "--flip",
                        "--nonormalize"]) == 0
    got = ort.InferenceSession(str(out)).run(None, {"images": images_u8})[0]
    np.testing.assert_allclose(got, raw_flipped, rtol=1e-4, atol=1e-4 * np.abs(raw_flipped).max())
    assert np.abs(np.linalg.norm(got, axis=-1) - 1).max() > 1e-2  # not L2-normalised

    imagenet = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    out = tmp_path / "imagenet.onnx"
    assert export.main([f"--checkpoint={ckpt}", "--format=onnx", f"--output={out}",
                        "--input_layout=float32_nchw", "--input_mean=0.485,0.456,0.406",
                        "--input_std=0.229,0.224,0.225"]) == 0
    x_in = ((images_u8 / 255.0 - np.asarray(imagenet[0])) / np.asarray(imagenet[1])
            ).transpose(0, 3, 1, 2).astype(np.float32)
    got = ort.InferenceSession(str(out)).run(None, {"images": x_in})[0]
    np.testing.assert_allclose(got, _expected(loaded, config, images_u8, None), atol=1e-4)
    capsys.readouterr()
    assert export.main([f"--checkpoint={ckpt}", "--format=onnx", f"--output={tmp_path / 'x'}",
                        "--input_mean=0.5,0.5,0.5"]) == 2
    assert "--input_mean / --input_std describe float32_nchw inputs" in capsys.readouterr().err


def test_onnx_refusals(tmp_path, capsys, monkeypatch):
    """An existing output is kept without --overwrite; a graph that disagrees with JAX in
    ONNX Runtime is not written; a missing jax2onnx is one line naming the install."""
    pytest.importorskip("onnxruntime", reason="ONNX export needs requirements-onnx.txt")
    ckpt = tmp_path / "ckpt"
    _write_tiny_checkpoint(ckpt, "backbone")
    out = tmp_path / "m.onnx"
    out.write_bytes(b"user file")
    argv = [f"--checkpoint={ckpt}", "--format=onnx", f"--output={out}"]
    assert export.main(argv) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    for bad, says in (("--input_layout=nhwc", "flag --input_layout=nhwc: value should be one of"),
                      ("--input_std=0.2,0.2", "--input_mean=[0.4, 0.5, 0.6] --input_std=[0.2, "
                       "0.2]: expected 3 values each"),
                      ("--input_mean=0.5,x", "--input_mean='0.5,x': expected comma-separated"),
                      ("--opset=17", "flag --opset=17: 17 is not integer >= 20")):
        argv_bad = argv + ["--overwrite", "--input_layout=float32_nchw", bad]
        assert export.main(argv_bad) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and says in err and err.count("\n") == 1, err
    monkeypatch.setattr(export, "onnx_gap", lambda *a, **k: 0.5)
    assert export.main(argv + ["--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "differ from JAX's by 0.5" in err and "was not written" in err
    assert out.read_bytes() == b"user file"
    monkeypatch.undo()
    monkeypatch.setitem(sys.modules, "jax2onnx", None)
    assert export.main(argv + ["--overwrite"]) == 2
    assert 'pip install ".[onnx]"' in capsys.readouterr().err
    assert out.read_bytes() == b"user file"
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]


def test_export_disk_full_leaves_no_file(tmp_path, monkeypatch, capsys):
    ckpt = tmp_path / "ckpt"
    _write_tiny_checkpoint(ckpt, "backbone")
    out = tmp_path / "extractor.jax"
    fail_fsync(monkeypatch, ".extractor.jax.tmp-")
    assert export.main([f"--checkpoint={ckpt}", f"--output={out}", "--platforms=cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: could not write {out}: No space left on device")
    assert err.count("\n") == 1
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]  # no file, no temporary file
