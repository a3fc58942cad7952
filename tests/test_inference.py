"""The one model loader (`inference.load_model`): architecture from the saved config checked
against the arrays, the same features wherever a checkpoint is used (fine-tune stage, evaluate
stage, tools/extract, tools/export), and errors for configs that disagree with the weights."""

import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

from conftest import tiny_finetune_config
from personvit_jax import inference
from personvit_jax.config_args import load_config
from personvit_jax.data.prepare import prepare
from personvit_jax.models.reid import reid_model_from_config
from personvit_jax.stages import evaluate as evaluate_stage
from personvit_jax.stages import finetune
from personvit_jax.tools import export, extract
from personvit_jax.training.checkpointing import load_state_tree


def _reid_folder_with_cameras(tiny_splits, root: str, csv_path: str) -> None:
    """The tiny synthetic set as your own folder (train/query/gallery) + a CSV of pid, camera."""
    rows = ["path,pid,camid"]
    for split in ("train", "query", "gallery"):
        s = tiny_splits[split]
        for i in range(len(s)):
            rel = f"{split}/{int(s.pids[i]):04d}/{i}.jpg"
            os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
            s.image(i).save(os.path.join(root, rel), quality=95)
            rows.append(f"{rel},{int(s.pids[i])},{int(s.camids[i]) + 7}")  # not 0-based ids
    with open(csv_path, "w") as f:
        f.write("\n".join(rows) + "\n")


@pytest.fixture(scope="module")
def sie_run(tiny_splits, tmp_path_factory):
    """A reid_folder set with camera ids, fine-tuned with SIE (model.sie=True)."""
    tmp = tmp_path_factory.mktemp("sie")
    root, data_dir = str(tmp / "mine"), str(tmp / "data")
    _reid_folder_with_cameras(tiny_splits, root, str(tmp / "cams.csv"))
    prepare("reid_folder", root, data_dir, csv_path=str(tmp / "cams.csv"), out=lambda _: None)
    cfg = tiny_finetune_config(data_dir, **{"data.name": "reid_folder", "model.sie": True,
                                            "optim.epochs": 1})
    run = str(tmp / "run")
    summary = finetune.train(cfg, run)
    return cfg, run, summary, data_dir, tmp


def test_sie_model_from_reid_folder_evaluates_as_it_was_trained(sie_run):
    """The evaluate stage builds the ViT WITH its camera embedding (count read from sie_embed):
    its features are the fine-tune stage's own, and so is the mAP."""
    cfg, run, summary, data_dir, tmp = sie_run
    loaded = inference.load_model(run)
    num_cams = loaded.num_cameras
    assert loaded.kind == "reid" and num_cams == 6 and loaded.uses_cameras

    ev = load_config("evaluate", "dataset=reid_folder")
    ev.checkpoint, ev.data.data_dir, ev.eval.batch_size = run, data_dir, 32
    ev.ranks.num_queries = ev.ranks.num_worst = 0
    results = evaluate_stage.evaluate(ev, str(tmp / "eval"))
    assert results["mAP"] == pytest.approx(summary["mAP"], abs=1e-6)

    # The fine-tune stage's evaluation function on the same weights and images.
    with np.load(tmp / "eval" / "features.npz") as f:
        gallery_features, gallery_camids = f["gallery_features"], f["gallery_camids"]
    model = reid_model_from_config(cfg, loaded.num_classes, num_cams)
    state = load_state_tree(run)
    variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
    embed = jax.jit(inference.reid_embed_fn(model, use_cams=True))
    from personvit_jax.data.augment import reid_test_transform
    from personvit_jax.datasets import load_splits

    gallery = load_splits("reid_folder", data_dir)["gallery"]
    x = np.stack([reid_test_transform(gallery.image(i), loaded.preprocessing)
                  for i in range(8)])
    ours = np.asarray(embed(variables, x, gallery.camids[:8]))
    np.testing.assert_allclose(gallery_features[:8], ours, atol=1e-5)
    np.testing.assert_array_equal(gallery_camids, gallery.camids)
    # Without its camera embedding the same weights give other features (what went wrong before).
    blind = jax.jit(inference.reid_embed_fn(reid_model_from_config(cfg, loaded.num_classes, 0)))
    assert np.abs(np.asarray(blind(variables, x, None)) - ours).max() > 1e-3


def test_export_gives_the_features_of_extract_for_an_sie_model(sie_run, tmp_path):
    cfg, run, _, _, _ = sie_run
    h, w = cfg.data.image_size
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, h, w, 3), dtype=np.uint8)  # already the model's size
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, im in enumerate(images):
        Image.fromarray(im).save(folder / f"{i}.png")
    ev = load_config("evaluate")
    ev.checkpoint, ev.eval.batch_size = run, 8
    with pytest.raises(ValueError, match="SIE camera embeddings.*--camera_id"):
        extract.extract_folder(ev, str(folder))
    feats, _ = extract.extract_folder(ev, str(folder), camera_id=2)
    fn, info = export.extractor_fn(run)
    assert info["sie"] and info["num_cameras"] == 6
    exported = np.asarray(jax.jit(fn)(images, np.full(4, 2, np.int32)))
    np.testing.assert_allclose(exported, feats, atol=1e-5)
    with pytest.raises(ValueError, match="camera ids \\[6\\]"):
        extract.extract_folder(ev, str(folder), camera_id=6)


def test_config_that_disagrees_with_the_arrays_is_refused(sie_run, tmp_path):
    _, run, _, _, _ = sie_run
    with pytest.raises(ValueError, match="model.sie=False but the checkpoint has sie_embed"):
        inference.load_model(run, {"sie": False})
    with pytest.raises(ValueError, match="model.jpm=True but the checkpoint has no JPM"):
        inference.load_model(run, {"jpm": True})
    config = json.loads(open(os.path.join(run, "config.json")).read())
    assert config["model"]["sie"] is True
