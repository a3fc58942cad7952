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
    """A tiny ReID model (random weights and BN statistics) or backbone in the layout of our
    runs, with its config.json (mean/std != 0.5 so the baked-in normalisation is exercised)."""
    config = tiny_finetune_config("unused")
    config.data.mean, config.data.std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    x = np.zeros((1, 64, 32, 3), np.float32)
    if kind == "reid":
        variables = reid_model_from_config(config, 7).init(jax.random.key(1), x)
        rng = np.random.default_rng(0)
        variables = dict(variables, batch_stats={"neck": {"bottleneck": {
            "mean": rng.normal(size=64).astype(np.float32),
            "var": rng.uniform(0.5, 1.5, 64).astype(np.float32)}}})
    else:
        variables = {"params": {"backbone": vit_from_config(config.model).init(
            jax.random.key(2), x)["params"]}}
    write_checkpoint(str(path), jax.tree.map(np.asarray, dict(variables)), config)
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
