"""The extract tool: folder -> features with the checkpoint's test preprocessing, look-ups."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from conftest import REPO
from personvit_jax.config_args import load_config
from personvit_jax.data import augment
from personvit_jax.models.vit import vit_from_config
from personvit_jax.training.checkpointing import Checkpointer
from personvit_jax.tools import extract

MODEL = {"name": "vit_tiny", "width": 64, "depth": 2, "num_heads": 2, "patch_size": 8,
         "patch_stride": 8, "pos_grid": [8, 4], "drop_path_rate": 0.0, "sie": False,
         "jpm": False, "jpm_groups": 4, "compute_dtype": "float32"}
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def backbone_ckpt(tmp_path_factory):
    """A pretrain-like checkpoint folder: config.json (ImageNet mean/std, 64x32 crops) and a
    random tiny ViT backbone under params/backbone."""
    root = tmp_path_factory.mktemp("pt")
    model = load_config("finetune").model
    model.update(MODEL)
    vit = vit_from_config(model)
    params = vit.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 32, 3)))["params"]
    (root / "config.json").write_text(json.dumps(
        {"model": MODEL, "data": {"global_size": [64, 32], "mean": MEAN, "std": STD}}))
    ckpt = Checkpointer(str(root / "checkpoints"))
    ckpt.save(0, {"params": {"backbone": params}}, force=True)
    ckpt.close()
    return str(root), vit, params


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory, tiny_splits):
    """Nested folders of synthetic person crops."""
    root = tmp_path_factory.mktemp("imgs")
    query = tiny_splits["query"]  # read from its TFDS records
    for i in range(5):
        sub = root / ("a" if i < 2 else os.path.join("b", "c"))
        sub.mkdir(parents=True, exist_ok=True)
        (sub / os.path.basename(query.paths[i])).write_bytes(query.records[i]["image"])
    return str(root)


def _config(checkpoint):
    c = load_config("evaluate")
    c.checkpoint = checkpoint
    c.eval.batch_size = 8
    return c


def test_folder_features_use_the_checkpoints_preprocessing(backbone_ckpt, image_folder,
                                                           tmp_path):
    ckpt, vit, params = backbone_ckpt
    out = str(tmp_path / "f.npz")
    feats, paths = extract.extract_folder(_config(ckpt), image_folder, out)
    z = np.load(out)
    names = [str(n) for n in z["names"]]
    assert names == sorted(names) and names[0].startswith("a/") and names[-1].startswith("b/c/")
    np.testing.assert_allclose(z["mean"], MEAN)
    np.testing.assert_array_equal(z["image_size"], [64, 32])
    # Direct computation: bilinear resize to 64x32, ImageNet normalisation, CLS, L2 norm.
    cfg = ml_collections.ConfigDict({"image_size": (64, 32), "mean": MEAN, "std": STD})
    x = np.stack([augment.reid_test_transform(augment.load_rgb(os.path.join(image_folder, n)),
                                              cfg) for n in names])
    ref = np.array(vit.apply({"params": params}, x)["cls"])
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    np.testing.assert_allclose(z["features"], ref, atol=1e-5)
    with pytest.raises(FileExistsError, match="overwrite"):
        extract.extract_folder(_config(ckpt), image_folder, out)

    # Look-up: an image of the gallery finds itself first.
    draw = str(tmp_path / "q.png")
    found = extract.look_up(_config(ckpt), paths[3], feats, paths, 3, draw)
    assert found[0][0] == paths[3] and found[0][1] < 1e-5 and len(found) == 3
    assert os.path.isfile(draw)


def test_command_line_look_up_and_errors(backbone_ckpt, image_folder, tmp_path):
    ckpt, _, _ = backbone_ckpt
    out = tmp_path / "g.npz"
    query = os.path.join(image_folder, "a", sorted(os.listdir(os.path.join(image_folder, "a")))[0])
    cmd = [sys.executable, "-m", "personvit_jax.tools.extract", f"--checkpoint={ckpt}",
           f"--images={image_folder}", f"--output={out}", f"--query={query}", "--top=2",
           f"--draw={tmp_path / 'r.png'}", "--config.eval.flip=True", "--config.eval.batch_size=8"]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [line for line in r.stdout.splitlines() if line.strip().startswith(("1 ", "2 "))]
    assert len(lines) == 2 and lines[0].endswith(query)
    assert bool(np.load(out)["flip"]) and (tmp_path / "r.png").is_file()
    assert "images [" in r.stderr  # progress bar
    with pytest.raises(ValueError, match="not a features file"):
        extract.load_gallery(str(tmp_path / "r.png"))
    with pytest.raises(FileNotFoundError, match="no .jpg/.png|does not exist"):
        extract.folder_split(str(tmp_path / "nothing"))


def test_a_gallery_of_another_model_or_preprocessing_is_refused(backbone_ckpt, image_folder,
                                                                tmp_path):
    ckpt, vit, params = backbone_ckpt
    out = str(tmp_path / "g.npz")
    extract.extract_folder(_config(ckpt), image_folder, out)
    feats, paths, settings = extract.load_gallery(out)
    assert len(settings["feature_space"]) == 16
    query = paths[0]
    ok = extract.look_up(_config(ckpt), query, feats, paths, 2, str(tmp_path / "ok.png"),
                         gallery=(out, settings))
    assert ok[0][0] == query
    flipped = _config(ckpt)
    flipped.eval.flip = True
    with pytest.raises(ValueError, match=r"another model or preprocessing.*flip False vs True"):
        extract.look_up(flipped, query, feats, paths, 2, str(tmp_path / "f.png"),
                        gallery=(out, settings))
    # the same architecture and preprocessing with other weights
    other = tmp_path / "other"
    other.mkdir()
    with open(os.path.join(ckpt, "config.json")) as f:
        (other / "config.json").write_text(f.read())
    moved = jax.tree.map(lambda x: x + 1e-3, params)
    c = Checkpointer(str(other / "checkpoints"))
    c.save(0, {"params": {"backbone": moved}}, force=True)
    c.close()
    with pytest.raises(ValueError, match=r"another model or preprocessing.*checkpoint"):
        extract.look_up(_config(str(other)), query, feats, paths, 2, str(tmp_path / "o.png"),
                        gallery=(out, settings))
    old = {k: v for k, v in settings.items() if k != "feature_space"}
    with pytest.raises(ValueError, match="records no feature_space"):
        extract.look_up(_config(ckpt), query, feats, paths, 2, str(tmp_path / "x.png"),
                        gallery=(out, old))


def test_two_feature_files_give_the_model_based_metrics(tiny_config, tiny_data_dir, tmp_path):
    """personvit-extract on the synthetic set's query/ and bounding_box_test/ folders, then
    metrics from the two files alone (ids and cameras from the Market names, or a CSV) = the
    fine-tune run's own evaluation of the same images."""
    from conftest import TINY_SYNTHETIC
    from personvit_jax.data import layouts
    from personvit_jax.stages import finetune
    from personvit_jax.synthetic import build

    run = str(tmp_path / "run")
    result = finetune.train(tiny_config(**{"optim.epochs": 1}), run)
    market = os.path.join(layouts.dataset_root("synthetic", tiny_data_dir),
                          build.build_name(build.resolve_args(TINY_SYNTHETIC)))
    files = {}
    for split, folder in (("q", "query"), ("g", "bounding_box_test")):
        files[split] = str(tmp_path / f"{split}.npz")
        extract.extract_folder(_config(run), os.path.join(market, folder), files[split])
    got = extract.evaluate_feature_files(files["q"], files["g"])
    for key in ("mAP", "mINP", "rank1", "rank5"):
        assert got[key] == pytest.approx(result[key], abs=1e-5), key
    assert got["num_valid_queries"] == result["num_valid_queries"]
    assert got["mAP_ci95"] == pytest.approx(result["mAP_ci95"], abs=1e-5)
    # the same labels from a CSV ('name,pid,camid', names as stored in the files)
    rows = ["name,pid,camid"]
    for path in files.values():
        for name in np.load(path)["names"]:
            pid, cam = layouts.parse_market_name(str(name))
            rows.append(f"{name},{pid},{cam - 1}")
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    assert extract.evaluate_feature_files(files["q"], files["g"], str(csv_path))["mAP"] == got["mAP"]
    csv_path.write_text("\n".join(rows[:3]) + "\n")
    with pytest.raises(ValueError, match="not in --labels"):
        extract.evaluate_feature_files(files["q"], files["g"], str(csv_path))
    # the command line prints the summary as one JSON line
    r = subprocess.run([sys.executable, "-m", "personvit_jax.tools.extract",
                        f"--query_features={files['q']}", f"--gallery={files['g']}",
                        "--config.eval.rerank=True"], cwd=REPO, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    printed = json.loads(r.stdout.strip().splitlines()[-1])
    assert printed["mAP"] == got["mAP"] and printed["rerank"]["k1"] == 20


def test_sie_model_takes_each_images_camera_from_the_labels(tiny_config, tiny_data_dir,
                                                            tmp_path):
    """An SIE model extracted with per-image cameras from a CSV gives the run's own metrics
    (which use each image's camera); one camera for all does not; errors name the fix."""
    from conftest import TINY_SYNTHETIC
    from personvit_jax.data import layouts
    from personvit_jax.stages import finetune
    from personvit_jax.synthetic import build

    run = str(tmp_path / "run")
    result = finetune.train(tiny_config(**{"optim.epochs": 1, "model.sie": True}), run)
    market = os.path.join(layouts.dataset_root("synthetic", tiny_data_dir),
                          build.build_name(build.resolve_args(TINY_SYNTHETIC)))
    folders = {"q": os.path.join(market, "query"), "g": os.path.join(market, "bounding_box_test")}
    files, one_camera = {}, {}
    for split, folder in folders.items():
        rows = ["name,pid,camid"]
        for name in sorted(os.listdir(folder)):
            pid, cam = layouts.parse_market_name(name)
            rows.append(f"{name},{pid},{cam - 1}")
        csv_path = tmp_path / f"{split}.csv"
        csv_path.write_text("\n".join(rows) + "\n")
        files[split] = str(tmp_path / f"{split}.npz")
        extract.extract_folder(_config(run), folder, files[split],
                               labels=extract.read_labels(str(csv_path)))
        one_camera[split] = str(tmp_path / f"{split}_cam0.npz")
        extract.extract_folder(_config(run), folder, one_camera[split], camera_id=0)
    assert np.load(files["g"])["camids"].max() > 0  # saved beside the features
    got = extract.evaluate_feature_files(files["q"], files["g"])  # labels from the files
    assert got["mAP"] == pytest.approx(result["mAP"], abs=1e-5)
    cam0 = np.load(one_camera["q"])["features"]
    assert np.abs(cam0 - np.load(files["q"])["features"]).max() > 1e-3  # SIE moved them

    with pytest.raises(ValueError, match="--camera_id=N .* or --labels=CSV"):
        extract.extract_folder(_config(run), folders["q"])
    query_image = os.path.join(folders["q"], sorted(os.listdir(folders["q"]))[0])
    with pytest.raises(ValueError, match="--camera_id=N .* or --labels=CSV"):  # a look-up too
        extract.look_up(_config(run), query_image, cam0, [], 5, str(tmp_path / "top5.png"))
    with pytest.raises(ValueError, match="pass one"):
        extract.extract_folder(_config(run), folders["q"], camera_id=0, labels={})
    bad = {n: (1, 9) for n in os.listdir(folders["q"])}
    with pytest.raises(ValueError, match=r"but --labels has camera ids \[9\]"):
        extract.extract_folder(_config(run), folders["q"], labels=bad)
