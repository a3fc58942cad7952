"""Market-1501 / MSMT17 layout parsing, on generated folders."""

import os

import numpy as np
import pytest
from PIL import Image

from personvit_jax import datasets
from personvit_jax.data import layouts


def _touch_jpg(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (8, 16), (120, 10, 10)).save(path)


def _market(root, names_by_dir):
    for sub, names in names_by_dir.items():
        os.makedirs(os.path.join(root, sub), exist_ok=True)
        for n in names:
            _touch_jpg(os.path.join(root, sub, n))
    return root


def test_market_layout_junk_distractors_relabel(tmp_path):
    root = _market(str(tmp_path / "m"), {
        "bounding_box_train": ["0002_c1s1_000451_03.jpg", "0002_c2s1_000551_01.jpg",
                               "0007_c6s2_000001_01.jpg", "-1_c1s1_000001_01.jpg"],
        "query": ["0003_c1s1_000001_00.jpg"],
        "bounding_box_test": ["0003_c2s1_000002_00.jpg", "0000_c3s1_000003_00.jpg",
                              "-1_c1s1_000004_00.jpg"],
    })
    open(os.path.join(root, "query", "Thumbs.db"), "w").close()  # ignored
    s = layouts.load_market_layout(root, num_cameras=6)
    tr = s["train"]
    assert len(tr) == 3  # junk dropped
    np.testing.assert_array_equal(tr.pids, [0, 0, 1])  # relabelled
    np.testing.assert_array_equal(tr.camids, [0, 1, 5])  # 0-based
    g = s["gallery"]
    np.testing.assert_array_equal(g.pids, [0, 3])  # distractor kept, junk dropped; sorted names
    np.testing.assert_array_equal(s["query"].pids, [3])
    assert tr[1]["path"].endswith("0002_c2s1_000551_01.jpg")


def test_synthetic_set_parses(tiny_splits):
    s = tiny_splits
    assert s["train"].num_ids == 8
    assert set(np.unique(s["train"].pids)) == set(range(8))
    assert (s["gallery"].pids == 0).sum() > 0  # distractors
    assert set(s["query"].pids) <= set(s["gallery"].pids)
    assert s["query"].camids.max() < 6


def test_market_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nothere")):
        layouts.load_market_layout(str(tmp_path / "nothere"), 6)
    root = _market(str(tmp_path / "m"), {"bounding_box_train": ["0001_c1s1_000001_01.jpg"],
                                         "query": ["0001_c1s1_000001_01.jpg"]})
    with pytest.raises(FileNotFoundError, match="bounding_box_test"):
        layouts.load_market_layout(root, 6)
    os.makedirs(os.path.join(root, "bounding_box_test"))
    with pytest.raises(ValueError, match="bounding_box_test: no images"):
        layouts.load_market_layout(root, 6)
    _touch_jpg(os.path.join(root, "bounding_box_test", "person.jpg"))
    with pytest.raises(ValueError, match="person.jpg: file name does not follow"):
        layouts.load_market_layout(root, 6)
    os.remove(os.path.join(root, "bounding_box_test", "person.jpg"))
    _touch_jpg(os.path.join(root, "bounding_box_test", "0001_c9s1_000001_01.jpg"))
    with pytest.raises(ValueError, match="camera 9 out of range"):
        layouts.load_market_layout(root, 6)
    with pytest.raises(ValueError, match="config.data.name='nope'"):
        datasets.load_splits("nope", str(tmp_path))


def test_query_gallery_pair_without_train_split(tmp_path):
    """Market-named images, <pid>/ folders or a CSV: evaluation needs no train split."""
    root = _market(str(tmp_path / "named"), {
        "query": ["0003_c1_a.jpg", "0004_c12_b.png"],  # any camera number, .png too
        "gallery": ["0003_c2_c.jpg", "0000_c3_d.jpg", "-1_c1_e.jpg", "0004_c1_f.jpg"]})
    open(os.path.join(root, "gallery", "Thumbs.db"), "w").close()  # not an image: ignored
    s = layouts.load_query_gallery(root)
    assert set(s) == {"query", "gallery"}
    np.testing.assert_array_equal(s["query"].camids, [0, 11])
    np.testing.assert_array_equal(s["gallery"].pids, [0, 3, 4])  # junk dropped, sorted
    assert s["gallery"].num_junk == 1 and s["gallery"].has_camera_ids

    folders = str(tmp_path / "folders")
    for rel in ("query/7/x.jpg", "gallery/7/y.jpg", "gallery/9/z.jpg"):
        _touch_jpg(os.path.join(folders, rel))
    s = layouts.load_query_gallery(folders)
    np.testing.assert_array_equal(s["gallery"].pids, [7, 9])
    assert not s["gallery"].has_camera_ids  # every image its own camera
    assert len(set(s["query"].camids) | set(s["gallery"].camids)) == 3

    free = str(tmp_path / "free")
    for rel in ("query/a.jpg", "gallery/b.jpg", "gallery/c.jpg", "train/t.jpg"):
        _touch_jpg(os.path.join(free, rel))
    csv_path = os.path.join(free, "labels.csv")
    with open(csv_path, "w") as f:
        f.write("path,pid,camid\nquery/a.jpg,5,30\ngallery/b.jpg,5,10\ngallery/c.jpg,6,30\n"
                "train/t.jpg,1,10\n")
    s = layouts.load_query_gallery(free, csv_path)  # train rows are ignored
    np.testing.assert_array_equal(s["query"].camids, [1])  # cameras 10, 30 -> 0, 1
    np.testing.assert_array_equal(s["gallery"].pids, [5, 6])
    with pytest.raises(ValueError, match="a.jpg: file name does not follow"):
        layouts.load_query_gallery(free)  # without the CSV the names must say pid and camera


def test_query_gallery_errors_name_the_folder(tmp_path):
    root = str(tmp_path / "r")
    _touch_jpg(os.path.join(root, "query", "0001_c1_a.jpg"))
    with pytest.raises(FileNotFoundError, match="no gallery/ folder"):
        layouts.load_query_gallery(root)
    _touch_jpg(os.path.join(root, "gallery", "1", "b.jpg"))
    with pytest.raises(ValueError, match="query/ holds Market-named images but gallery/ holds "
                                         "identity folders"):
        layouts.load_query_gallery(root)
    _touch_jpg(os.path.join(root, "gallery", "0001_c2_c.jpg"))
    with pytest.raises(ValueError, match="gallery: holds both images"):
        layouts.load_query_gallery(root)
    csv_path = str(tmp_path / "l.csv")
    with open(csv_path, "w") as f:
        f.write("query/0001_c1_a.jpg,1,1\n")
    with pytest.raises(ValueError, match="l.csv: no rows under gallery/"):
        layouts.load_query_gallery(root, csv_path)


def test_msmt17_lists(tmp_path):
    root = str(tmp_path / "MSMT17_V1")
    rel = {"train": ["0000/0000_000_01_0303morning_0015_0.jpg",
                     "0001/0001_001_07_0303noon_0020_1.jpg"],
           "val": ["0001/0001_002_15_0303afternoon_0001_0.jpg"],
           "query": ["0000/0000_000_03_0303morning_0001_0.jpg"],
           "gallery": ["0000/0000_001_05_0303noon_0002_0.jpg"]}
    for split, paths in rel.items():
        img_dir = "train" if split in ("train", "val") else "test"
        for p in paths:
            _touch_jpg(os.path.join(root, img_dir, p))
        with open(os.path.join(root, f"list_{split}.txt"), "w") as f:
            f.writelines(f"{p} {int(p[:4])}\n" for p in paths)
    s = layouts.load_msmt17_layout(root)
    assert len(s["train"]) == 3  # train + val
    np.testing.assert_array_equal(s["train"].pids, [0, 1, 1])
    np.testing.assert_array_equal(s["train"].camids, [0, 6, 14])
    np.testing.assert_array_equal(s["query"].camids, [2])
    with open(os.path.join(root, "list_gallery.txt"), "a") as f:
        f.write("0009/0009_000_01_0303morning_0001_0.jpg 9\n")
    with pytest.raises(FileNotFoundError, match="list_gallery.txt:2 points at .*0009"):
        layouts.load_msmt17_layout(root)


def test_config_args():
    from personvit_jax.config_args import parse_config_arg

    d = {"dataset": "market1501", "model": "vit_small", "synthetic": False}
    assert parse_config_arg("model=vit_base,synthetic", d, "c.py") == {
        "dataset": "market1501", "model": "vit_base", "synthetic": True}
    assert parse_config_arg(None, d, "c.py") == d
    for bad in ("modle=vit_base", "model", "synthetic=1"):
        with pytest.raises(ValueError, match=f"c.py: unknown config argument '{bad}'"):
            parse_config_arg(bad, d, "c.py")
