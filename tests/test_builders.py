"""TFDS builders: tiny fake copies of every layout (exact file names, real JPEGs) are built, read
back through tfds.data_source + the Grain pipeline and compared with the source files; error
cases name the file at fault; failed builds leave nothing behind; unlabeled builds resume and
shard to the same records."""

import os

import ml_collections
import numpy as np
import pytest
from PIL import Image

from personvit_jax import datasets
from personvit_jax.data import builders, layouts, pipeline
from personvit_jax.data.prepare import prepare

# Train: 6 ids x 4 images on cameras 1, 2, 3, 5 (enough for P x K = 4 x 4), one junk image.
MARKET_TRAIN = [f"{p:04d}_c{c}s1_00{c}151_01.jpg" for p in (2, 7, 9, 11, 15, 20)
                for c in (1, 2, 3, 5)] + ["-1_c1s1_000001_01.jpg"]
MARKET_QUERY = ["0003_c1s1_000001_00.jpg", "0004_c2s1_000001_00.jpg"]
MARKET_GALLERY = ["0003_c2s1_000002_00.jpg", "0004_c4s1_000002_00.jpg", "0000_c3s1_000003_00.jpg",
                  "-1_c1s1_000004_00.jpg"]
DUKE_TRAIN = [f"{p:04d}_c{c}_f00{c}46182.jpg" for p in (1, 5, 8, 12) for c in (2, 7)]
DUKE_QUERY = ["0013_c1_f0046182.jpg"]
DUKE_GALLERY = ["0013_c8_f0046999.jpg", "0000_c3_f0000001.jpg"]


def write_jpg(path, seed):
    """A real tiny JPEG (16x8 noise), different bytes per seed."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    x = np.random.default_rng(seed).integers(0, 255, (16, 8, 3), dtype=np.uint8)
    Image.fromarray(x).save(path, quality=90)


def fake_market(root, train=MARKET_TRAIN, query=MARKET_QUERY, gallery=MARKET_GALLERY):
    seed = 0
    for sub, names in (("bounding_box_train", train), ("query", query),
                       ("bounding_box_test", gallery)):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
        for n in names:
            write_jpg(os.path.join(root, sub, n), seed)
            seed += 1
    return root


def fake_msmt17(root, version="msmt17"):
    train_dir, test_dir = layouts.MSMT17_IMAGE_DIRS[version]
    rel = {"train": ["0000/0000_000_01_0303morning_0015_0.jpg",
                     "0001/0001_001_07_0303noon_0020_1.jpg"],
           "val": ["0001/0001_002_15_0303afternoon_0001_0.jpg"],
           "query": ["0000/0000_000_03_0303morning_0001_0.jpg"],
           "gallery": ["0000/0000_001_05_0303noon_0002_0.jpg",
                       "0002/0002_000_11_0303afternoon_0003_0.jpg"]}
    for k, (split, paths) in enumerate(rel.items()):
        img_dir = train_dir if split in ("train", "val") else test_dir
        for j, p in enumerate(paths):
            write_jpg(os.path.join(root, img_dir, p), 100 * k + j)
        with open(os.path.join(root, f"list_{split}.txt"), "w") as f:
            f.writelines(f"{p} {int(p[:4])}\n" for p in paths)
    return root


def fake_custom(root, splits=("train", "test")):
    seed = 0
    for split in splits:
        for pid in (3, 8, 12):
            for j in range(2):
                write_jpg(os.path.join(root, split, f"{pid:04d}", f"img{j}.jpg"), seed)
                seed += 1
    return root


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def assert_same_as_source(splits_from_build, splits_from_files, root):
    """Same pids/cameras, names relative to root, and identical JPEG bytes."""
    for name, want in splits_from_files.items():
        got = splits_from_build[name]
        np.testing.assert_array_equal(got.pids, want.pids, err_msg=name)
        np.testing.assert_array_equal(got.camids, want.camids, err_msg=name)
        assert list(got.paths) == [os.path.relpath(p, root) for p in want.paths]
        for i, p in enumerate(want.paths):
            assert got.records[i]["image"] == _read(p), p


@pytest.mark.parametrize("name,folder,names,cams", [
    ("market1501", "Market-1501-v15.09.15", (MARKET_TRAIN, MARKET_QUERY, MARKET_GALLERY), 6),
    ("dukemtmc", "DukeMTMC-reID", (DUKE_TRAIN, DUKE_QUERY, DUKE_GALLERY), 8),
    ("occluded_duke", "Occluded_Duke", (DUKE_TRAIN, DUKE_QUERY, DUKE_GALLERY), 8),
])
def test_market_layout_builders_round_trip(tmp_path, name, folder, names, cams):
    root = fake_market(str(tmp_path / "src" / folder), *names)
    data_dir = str(tmp_path / "data")
    lines = []
    # --source may be the dataset folder or the folder holding it
    meta = prepare(name, str(tmp_path / "src"), data_dir, out=lines.append)
    splits = datasets.load_splits(name, data_dir)
    assert_same_as_source(splits, layouts.load_market_layout(root, cams), root)
    train, gallery = names[0], names[2]
    junk = sum(n.startswith("-1") for n in train)
    assert meta["stats"]["train"] == {
        "images": len(train) - junk, "identities": len({n[:4] for n in train}) - (junk > 0),
        "cameras": len({n.split("_")[1][:2] for n in train if not n.startswith("-1")}),
        "junk_dropped": junk, "distractors": 0, "corrupt_skipped": 0}
    assert meta["stats"]["gallery"]["distractors"] == sum(n.startswith("0000") for n in gallery)
    assert meta["has_camera_ids"] and pipeline.num_cameras(name, splits, sie=True) == cams
    assert any(line.startswith("WARNING: " + name) for line in lines)  # tiny != published
    assert sorted(os.listdir(data_dir)) == [name]  # no temporary folders left


def test_msmt17_v1_v2_lists_time_of_day(tmp_path):
    for version in ("msmt17", "msmt17_v2"):
        root = fake_msmt17(str(tmp_path / version / ("MSMT17_V1" if version == "msmt17"
                                                     else "MSMT17_V2")), version)
        data_dir = str(tmp_path / "data")
        meta = prepare(version, root, data_dir, out=lambda _: None)
        splits = datasets.load_splits(version, data_dir)
        assert_same_as_source(splits, layouts.load_msmt17_layout(root, version), root)
        assert len(splits["train"]) == 3  # list_train + list_val
        np.testing.assert_array_equal(splits["train"].camids, [0, 6, 14])
        tod = [r["time_of_day"] for r in splits["train"].records]
        assert [t.decode() if isinstance(t, bytes) else t for t in tod] == [
            "morning", "noon", "afternoon"]
        assert meta["stats"]["gallery"]["identities"] == 2


def test_grain_pipeline_reads_the_build_like_the_files(tmp_path):
    root = fake_market(str(tmp_path / "Market-1501-v15.09.15"))
    data_dir = str(tmp_path / "data")
    prepare("market1501", root, data_dir, out=lambda _: None)
    built, files = datasets.load_splits("market1501", data_dir), layouts.load_market_layout(root, 6)
    cfg = ml_collections.ConfigDict(dict(
        image_size=(32, 16), flip_prob=0.5, pad=2, erasing_prob=0.5, mean=(0.5,) * 3,
        std=(0.5,) * 3, num_ids_per_batch=4, num_instances=4, num_workers=0, prefetch=1))
    for s in ("query", "gallery"):
        a = list(pipeline.eval_iterator(built[s], cfg, 4))
        b = list(pipeline.eval_iterator(files[s], cfg, 4))
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x["images"], y["images"])
    halves = [next(iter(pipeline.train_iterator(built["train"], cfg, 1, 0, p, 2)))
              for p in range(2)]
    whole = next(iter(pipeline.train_iterator(files["train"], cfg, 1, 0)))
    for k in ("images", "labels", "camids"):
        np.testing.assert_array_equal(np.concatenate([h[k] for h in halves]), whole[k])


def test_custom_folder_without_cameras_evaluates_against_all_other_images(tmp_path):
    from personvit_jax import evaluation

    root = fake_custom(str(tmp_path / "mine"))
    data_dir = str(tmp_path / "data")
    lines = []
    meta = prepare("reid_folder", root, data_dir, out=lines.append)
    assert not meta["has_camera_ids"] and any("No camera ids" in line for line in lines)
    s = datasets.load_splits("reid_folder", data_dir)
    q, g = s["query"], s["gallery"]
    assert q is g and len(q) == 6  # test split = query = gallery
    cams = np.concatenate([s["train"].camids, q.camids])
    assert len(np.unique(cams)) == len(cams)  # every image its own camera
    np.testing.assert_array_equal(q.pids, [3, 3, 8, 8, 12, 12])
    # Features equal to the pid: the query itself is excluded, its one other image is rank 1.
    f = q.pids[:, None].astype(np.float32)
    r = evaluation.summarize(evaluation.evaluate(f, f, q.pids, g.pids, q.camids, g.camids,
                                                 metric="euclidean"))
    assert r["mAP"] == pytest.approx(1.0) and r["num_valid_queries"] == 6
    with pytest.raises(ValueError, match="sie=True needs camera ids.*reid_folder"):
        pipeline.num_cameras("reid_folder", s, sie=True)
    assert pipeline.num_cameras("reid_folder", s, sie=False) == 0


def test_custom_folder_with_csv(tmp_path):
    root = fake_custom(str(tmp_path / "mine"), splits=("train", "query", "gallery"))
    csv_path = str(tmp_path / "labels.csv")
    rows = ["path,pid,camid"]
    for split in ("train", "query", "gallery"):
        for pid in (3, 8, 12):
            for j in range(2):
                cam = 10 + j + (split == "gallery")
                rows.append(f"{split}/{pid:04d}/img{j}.jpg,{pid + 100},{cam}")
    with open(csv_path, "w") as f:
        f.write("\n".join(rows) + "\n")
    data_dir = str(tmp_path / "data")
    meta = prepare("reid_folder", root, data_dir, csv_path=csv_path, out=lambda _: None)
    s = datasets.load_splits("reid_folder", data_dir)
    assert meta["has_camera_ids"] and meta["stats"]["gallery"]["cameras"] == 2
    np.testing.assert_array_equal(s["query"].pids, [103, 103, 108, 108, 112, 112])
    np.testing.assert_array_equal(s["query"].camids, [0, 1] * 3)  # cameras 10, 11, 12 -> 0, 1, 2
    np.testing.assert_array_equal(s["gallery"].camids, [1, 2] * 3)
    assert pipeline.num_cameras("reid_folder", s, sie=True) == 3


def _records(split):
    return [(split.paths[i], split.records[i]["image"]) for i in range(len(split))]


def test_unlabeled_build_resumes_and_shards_to_the_same_records(tmp_path):
    src = tmp_path / "lup"
    for i in range(7):
        write_jpg(str(src / f"d{i % 3}" / f"{i:03d}.jpg"), i)
    Image.new("RGB", (8, 16)).save(src / "d0" / "p.png")  # PNG crops are kept as they are
    one_dir, sharded_dir = str(tmp_path / "one"), str(tmp_path / "sharded")
    log = []
    assert prepare("unlabeled_folder", str(src), one_dir, part_size=3,
                   out=log.append)["images"] == 8
    assert any("part 3/3" in line for line in log)  # progress per part
    one = builders.load_unlabeled(one_dir)
    # two processes, the first one killed after its first part, then resumed
    first = builders.build_unlabeled(str(src), sharded_dir, part_size=3, num_shards=2,
                                     shard_index=0)
    assert first == {"parts": 3, "built": 2, "complete": False}
    with pytest.raises(FileNotFoundError, match=r"incomplete \(parts \[1\] of 3 missing\)"):
        builders.load_unlabeled(sharded_dir)
    builders.build_unlabeled(str(src), sharded_dir, part_size=3, num_shards=2, shard_index=1)
    part = os.path.join(sharded_dir, "unlabeled_folder", "part-00002-of-00003")
    os.rename(part, part + ".lost")  # as if the process had died before renaming it in
    again = builders.build_unlabeled(str(src), sharded_dir, part_size=3)
    assert again["built"] == 1 and again["complete"]  # only the missing part is rebuilt
    sharded = builders.load_unlabeled(sharded_dir)
    assert _records(one) == _records(sharded)
    assert _records(one)[0] == ("d0/000.jpg", _read(src / "d0" / "000.jpg"))
    assert np.asarray(sharded.image(7)).shape == (16, 8, 3)
    with pytest.raises(FileExistsError, match="another part count"):
        builders.build_unlabeled(str(src), sharded_dir, part_size=4)


def test_corrupt_jpeg_stops_naming_it_or_is_skipped_and_counted(tmp_path):
    root = fake_market(str(tmp_path / "m"))
    bad = os.path.join(root, "query", MARKET_QUERY[1])
    with open(bad, "r+b") as f:  # keep the header, cut the data: a truncated JPEG
        data = f.read()
        f.seek(0)
        f.truncate()
        f.write(data[: len(data) // 2])
    data_dir = str(tmp_path / "data")
    with pytest.raises(builders.CorruptImageError, match=f"{bad}: cannot decode"):
        prepare("market1501", root, data_dir, out=lambda _: None)
    assert os.listdir(data_dir) == []  # the failed build left nothing behind
    meta = prepare("market1501", root, data_dir, skip_corrupt=True, out=lambda _: None)
    assert meta["stats"]["query"]["corrupt_skipped"] == 1
    assert meta["stats"]["query"]["images"] == 1
    png = os.path.join(root, "query", MARKET_QUERY[0])
    Image.new("RGB", (8, 16)).save(png, format="PNG")
    with pytest.raises(builders.CorruptImageError, match=f"{png}: expected a JPEG image, found"):
        prepare("market1501", root, data_dir, overwrite=True, out=lambda _: None)
    assert datasets.load_splits("market1501", data_dir)["query"].paths[0].endswith(
        MARKET_QUERY[0])  # the earlier build is still there, untouched


def test_bad_sources_name_the_path(tmp_path):
    data_dir = str(tmp_path / "data")
    quiet = dict(out=lambda _: None)
    with pytest.raises(FileNotFoundError, match="expected it .* to contain bounding_box_train"):
        prepare("market1501", str(tmp_path), data_dir, **quiet)  # wrong root
    root = fake_market(str(tmp_path / "m"))
    write_jpg(os.path.join(root, "query", "person.jpg"), 0)
    with pytest.raises(ValueError, match="person.jpg: file name does not follow"):
        prepare("market1501", root, data_dir, **quiet)
    os.remove(os.path.join(root, "query", "person.jpg"))
    for n in MARKET_QUERY:
        os.remove(os.path.join(root, "query", n))
    with pytest.raises(ValueError, match="query: no images"):
        prepare("market1501", root, data_dir, **quiet)
    msmt = fake_msmt17(str(tmp_path / "MSMT17_V1"))
    with open(os.path.join(msmt, "list_gallery.txt"), "a") as f:
        f.write("0009/0009_000_01_0303morning_0001_0.jpg 9\n")
    with pytest.raises(FileNotFoundError, match="list_gallery.txt:3 points at .*0009_000_01"):
        prepare("msmt17", msmt, data_dir, **quiet)
    custom = fake_custom(str(tmp_path / "mine"))
    os.makedirs(os.path.join(custom, "train", "alice"))
    with pytest.raises(ValueError, match="alice'; rename them or give a CSV"):
        prepare("reid_folder", custom, data_dir, **quiet)
    with pytest.raises(FileNotFoundError, match="'market1501' is not prepared under"):
        datasets.load_splits("market1501", data_dir)
    assert not os.path.exists(data_dir) or os.listdir(data_dir) == []


def test_build_atomically_cleans_dead_staging_and_never_replaces_a_racing_build(tmp_path):
    """A staging folder of a killed build (its owner process gone) is removed by the next build;
    a build that finds its target created meanwhile leaves that target as it is."""
    import json
    import socket

    data_dir = tmp_path / "data"
    dead = data_dir / ".prepare-deadbeef"
    dead.mkdir(parents=True)
    (dead / "owner.json").write_text(json.dumps({"pid": 2**30, "host": socket.gethostname()}))
    root = fake_market(str(tmp_path / "Market-1501-v15.09.15"))
    prepare("market1501", root, str(data_dir), out=lambda _: None)
    assert sorted(os.listdir(data_dir)) == ["market1501"]

    final = str(tmp_path / "out" / "set")

    def racing_write(staging):
        os.makedirs(os.path.join(final, "theirs"))  # another process finished first
        os.makedirs(os.path.join(staging, "mine", "x"))
        return os.path.join(staging, "mine")

    with pytest.raises(FileExistsError, match="appeared while this build ran"):
        builders.build_atomically(final, racing_write)
    assert os.listdir(final) == ["theirs"] and os.listdir(tmp_path / "out") == ["set"]
    with pytest.raises(FileExistsError, match="already exists; not replacing it"):
        builders.build_atomically(final, racing_write)


def test_disk_full_during_a_build_keeps_nothing_and_the_rerun_builds(tmp_path, monkeypatch):
    """The record writer fails half-way (disk full): no build and no staging folder is left;
    a rerun builds cleanly; a failed rebuild (--overwrite) keeps the earlier build."""
    import errno

    from tensorflow_datasets.core import file_adapters

    from personvit_jax import files

    adapter = file_adapters.ArrayRecordFileAdapter
    write_examples = adapter.write_examples.__func__

    def full(cls, path, iterator):
        write_examples(cls, path, list(iterator)[:1])  # a partial shard on disk
        raise OSError(errno.ENOSPC, "No space left on device", os.fspath(path))

    root = fake_market(str(tmp_path / "m"))
    data_dir = str(tmp_path / "data")
    quiet = dict(out=lambda _: None)
    with monkeypatch.context() as m:
        m.setattr(adapter, "write_examples", classmethod(full))
        with pytest.raises(files.WriteError, match=rf"could not write {data_dir}/market1501\S*: "
                                                   "No space left on device .* nothing of this"):
            prepare("market1501", root, data_dir, **quiet)
    assert os.listdir(data_dir) == []
    prepare("market1501", root, data_dir, **quiet)
    before = datasets.load_splits("market1501", data_dir)["train"].paths
    with monkeypatch.context() as m:
        m.setattr(adapter, "write_examples", classmethod(full))
        with pytest.raises(files.WriteError):
            prepare("market1501", root, data_dir, overwrite=True, **quiet)
    assert sorted(os.listdir(data_dir)) == ["market1501"]
    assert datasets.load_splits("market1501", data_dir)["train"].paths == before
