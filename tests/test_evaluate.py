"""The evaluate stage: checkpoint -> features -> metrics / re-ranking / rank pictures, outputs
never overwritten unless asked, clear errors without an architecture."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, TINY_SYNTHETIC, apply_overrides
from personvit_jax.config_args import load_config
from personvit_jax.data import layouts
from personvit_jax.stages import evaluate as evaluate_stage
from personvit_jax.stages import finetune


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_data_dir):
    from conftest import tiny_finetune_config

    workdir = str(tmp_path_factory.mktemp("run"))
    result = finetune.train(tiny_finetune_config(tiny_data_dir, **{"optim.epochs": 1}), workdir)
    return workdir, result


def eval_config(data_dir, checkpoint, **overrides):
    c = load_config("evaluate", "dataset=synthetic")
    c.checkpoint = checkpoint
    c.data.data_dir = data_dir
    c.data.synthetic = dict(TINY_SYNTHETIC)
    c.eval.batch_size = 32
    c.ranks.num_queries, c.ranks.top_k, c.ranks.num_worst = 2, 5, 3
    return apply_overrides(c, overrides)


def test_reproduces_the_runs_metrics_and_writes_outputs(trained_run, tiny_data_dir, tmp_path):
    run, result = trained_run
    out = tmp_path / "eval"
    res = evaluate_stage.evaluate(eval_config(tiny_data_dir, run), str(out))
    assert res["kind"] == "reid"
    assert res["mAP"] == pytest.approx(result["mAP"], abs=1e-6)
    assert json.loads((out / "eval_results.json").read_text())["mAP"] == res["mAP"]
    npz = np.load(out / "features.npz")
    assert npz["query_features"].shape[1] == 64 and len(npz["query_names"]) == len(npz["query_pids"])
    assert str(npz["query_names"][0]).startswith("query/")
    pngs = sorted(os.listdir(out / "ranks"))
    assert "worst_queries.png" in pngs and len(pngs) == 3
    with Image.open(out / "ranks" / "worst_queries.png") as im:
        assert im.height > 3 * 64  # three rows of 128x64 thumbnails (+ frames)
    cfg = json.loads((out / "eval_config.json").read_text())
    assert cfg["model"]["width"] == 64 and cfg["data"]["image_size"] == [64, 32]

    # An existing output is never overwritten unless asked.
    with pytest.raises(FileExistsError, match="overwrite"):
        evaluate_stage.evaluate(eval_config(tiny_data_dir, run), str(out))
    again = evaluate_stage.evaluate(
        eval_config(tiny_data_dir, run, **{"overwrite": True, "eval.rerank": True,
                                          "eval.k1": 5, "eval.k2": 2, "eval.flip": True,
                                          "eval.neck_feat": "after"}), str(out))
    assert again["flip"] and set(again["rerank"]) >= {"mAP", "mINP", "rank1", "k1"}
    assert again["mAP"] != res["mAP"]  # flip + after-BN features differ


def test_without_saved_config_needs_a_model(trained_run, tiny_data_dir, tmp_path):
    run, result = trained_run
    bare = tmp_path / "bare"
    shutil.copytree(os.path.join(run, "checkpoints"), bare / "checkpoints")
    with pytest.raises(ValueError, match="model.name"):
        evaluate_stage.evaluate(eval_config(tiny_data_dir, str(bare)), str(tmp_path / "e1"))
    # Naming the architecture (the tiny fields differ from configs/finetune.py) is enough.
    res = evaluate_stage.evaluate(eval_config(
        tiny_data_dir, str(bare), **{"model.name": "vit_tiny", "model.width": 64,
                                     "model.depth": 2, "model.num_heads": 2,
                                     "model.patch_size": 8, "model.patch_stride": 8,
                                     "model.pos_grid": (8, 4), "data.image_size": (64, 32)}),
        str(tmp_path / "e2"))
    assert res["mAP"] == pytest.approx(result["mAP"], abs=1e-6)


def _tiny_market_root(data_dir):
    """The tiny synthetic set's Market-1501 folders (what its build was made from)."""
    from personvit_jax.synthetic import build

    name = build.build_name(build.resolve_args(TINY_SYNTHETIC))
    return os.path.join(layouts.dataset_root("synthetic", data_dir), name)


def test_own_query_gallery_pair_without_train_split(trained_run, tiny_data_dir, tmp_path):
    """A bare query/ + gallery/ pair (Market-named, then anonymous files with a CSV) gives the
    run's own metrics: no train split, no build."""
    run, result = trained_run
    market = _tiny_market_root(tiny_data_dir)
    named = tmp_path / "named"
    shutil.copytree(os.path.join(market, "query"), named / "query")
    shutil.copytree(os.path.join(market, "bounding_box_test"), named / "gallery")
    res = evaluate_stage.evaluate(eval_config(
        tiny_data_dir, run, **{"data.name": "query_gallery", "data.root": str(named)}),
        str(tmp_path / "e1"))
    assert res["mAP"] == pytest.approx(result["mAP"], abs=1e-6)
    assert res["rank1"] == pytest.approx(result["rank1"], abs=1e-6)
    assert len(os.listdir(tmp_path / "e1" / "ranks")) == 3  # 2 rank lists + the worst queries
    assert str(np.load(tmp_path / "e1" / "features.npz")["gallery_names"][0]).startswith(
        "gallery/")

    anonymous, rows = tmp_path / "anonymous", ["path,pid,camid"]
    for split in ("query", "gallery"):
        os.makedirs(anonymous / split)
        for i, n in enumerate(sorted(os.listdir(named / split))):
            pid, cam = layouts.parse_market_name(n)
            rel = f"{split}/img{i:04d}.jpg"
            shutil.copy(named / split / n, anonymous / rel)
            rows.append(f"{rel},{pid},{100 + cam}")  # any camera numbering
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    res2 = evaluate_stage.evaluate(eval_config(
        tiny_data_dir, run, **{"data.name": "query_gallery", "data.root": str(anonymous),
                               "data.labels": str(tmp_path / "labels.csv")}), str(tmp_path / "e2"))
    assert res2["mAP"] == pytest.approx(result["mAP"], abs=1e-6)
    with pytest.raises(ValueError, match="config.data.root is empty"):
        evaluate_stage.evaluate(eval_config(tiny_data_dir, run, **{"data.name": "query_gallery"}),
                                str(tmp_path / "e3"))


def test_main_command_line(trained_run, tiny_data_dir, tmp_path):
    run, result = trained_run
    cmd = [sys.executable, "-m", "personvit_jax.main", "--config=configs/evaluate.py:dataset=synthetic",
           f"--config.checkpoint={run}", f"--workdir={tmp_path / 'w'}",
           f"--config.data.data_dir={tiny_data_dir}", "--config.eval.batch_size=32",
           "--config.ranks.num_queries=1", "--config.ranks.num_worst=2"]
    cmd += [f"--config.data.synthetic.{k}={v}" for k, v in TINY_SYNTHETIC.items()
            if k != "images_per_id"] + ["--config.data.synthetic.images_per_id=(6,10)"]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "gallery [" in r.stderr  # the progress bar
    res = json.loads((tmp_path / "w" / "eval_results.json").read_text())
    assert res["mAP"] == pytest.approx(result["mAP"], abs=1e-6)
    assert 0.0 <= res["top10_same_camera"] <= 1.0 and 0.0 < res["same_camera_base"] < 1.0
