"""The synthetic generator (small sets, fast): the labelled Market-style set, its TFDS build,
style domains and the unlabeled pool."""

import hashlib
import json
import os
import re
import socket

import numpy as np
import pytest
from PIL import Image

from conftest import TINY_SYNTHETIC
from personvit_jax import datasets, synthetic
from personvit_jax.data import builders, layouts, pipeline
from personvit_jax.data.prepare import prepare
from personvit_jax.synthetic import build, plan, render, write
from personvit_jax.synthetic import generate_pool, generate_synthetic_market
from personvit_jax.synthetic.__main__ import main as cli

NAME_RE = re.compile(r"^(-1|\d{4})_c(\d)s(\d)_(\d{6})_(\d{2})\.jpg$")
MARKET_RE = re.compile(r"([-\d]+)_c(\d)")
POOL_RE = re.compile(r"^(\d{4})/(\d{7})_c(\d{4})_(\d{2})\.jpg$")
SPLITS = ("bounding_box_train", "query", "bounding_box_test")

SMALL = dict(num_train_ids=6, num_test_ids=6, num_cameras=4, images_per_id=(4, 7),
             num_distractors=5, num_junk=4)
# SHA-256 over (relative path, bytes) of every file of the seed-3 SMALL set, manifest included,
# as written by personvit_jax/data/synthetic.py before the package split (main at 62d5cc8).
# It changes only if the rendered bytes do: then FORMAT_VERSION must be bumped too.
SMALL_SEED3_SHA256 = "601a3895ace6eed25e8819ac5f82ceb7d73dc59ce762a88f5ec8b6065462f0ed"
POOL = dict(num_images=30, num_cameras=5, images_per_id=(2, 5), cameras_per_id=(1, 3))


def _listing(root):
    """{split: sorted file names}."""
    return {split: sorted(os.listdir(os.path.join(root, split))) for split in SPLITS}


def _parse(names):
    out = []
    for name in names:
        m = NAME_RE.match(name)
        assert m, name
        pid, cam = map(int, MARKET_RE.search(name).groups())
        assert (pid, cam) == (int(m.group(1)), int(m.group(2)))
        out.append((pid, cam))
    return out


def _files(root):
    """{path relative to root: bytes} of every file under root."""
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            path = os.path.join(dirpath, n)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


def _tree_sha256(root):
    h = hashlib.sha256()
    for rel, data in sorted(_files(root).items()):
        h.update(rel.encode())
        h.update(data)
    return h.hexdigest()


def _all_paths(root):
    paths = [root]
    for dirpath, dirnames, filenames in os.walk(root):
        paths += [os.path.join(dirpath, n) for n in dirnames + filenames]
    return sorted(paths)


def _mtimes(root):
    return {p: os.stat(p).st_mtime_ns for p in _all_paths(root)}


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("syn") / "market")
    assert generate_synthetic_market(root, seed=3, **SMALL) == root
    return root


# ---------------------------------------------------------------------------------------------
# The labelled set
# ---------------------------------------------------------------------------------------------


def test_layout_and_names(small_set):
    listing = _listing(small_set)
    assert sorted(os.listdir(small_set)) == sorted([*SPLITS, "manifest.json"])
    all_names = [n for names in listing.values() for n in names]
    assert len(all_names) == len(set(all_names)), "file names must be unique"

    parsed = {split: _parse(names) for split, names in listing.items()}
    for items in parsed.values():
        assert all(1 <= cam <= SMALL["num_cameras"] for _, cam in items)

    train_ids = {p for p, _ in parsed["bounding_box_train"]}
    query_ids = {p for p, _ in parsed["query"]}
    gallery_ids = {p for p, _ in parsed["bounding_box_test"] if p > 0}
    assert train_ids == set(range(1, 7))
    assert query_ids == gallery_ids == set(range(7, 13))
    assert not train_ids & gallery_ids
    # Junk and distractors only in the gallery, with the requested counts.
    assert all(p > 0 for p, _ in parsed["bounding_box_train"] + parsed["query"])
    gallery_pids = [p for p, _ in parsed["bounding_box_test"]]
    assert gallery_pids.count(0) == SMALL["num_distractors"]
    assert gallery_pids.count(-1) == SMALL["num_junk"]

    # Every id in >= 2 cameras; every query has a gallery match in another camera.
    for pid in train_ids:
        assert len({c for p, c in parsed["bounding_box_train"] if p == pid}) >= 2
    for pid in query_ids:
        query_cams = [c for p, c in parsed["query"] if p == pid]
        gallery_cams = {c for p, c in parsed["bounding_box_test"] if p == pid}
        assert len(query_cams) == len(set(query_cams)) >= 2, "one query per camera"
        for cam in query_cams:
            assert gallery_cams - {cam}, f"query {pid} c{cam} has no cross-camera match"

    images_per_id = {}
    for split in SPLITS:
        for p, _ in parsed[split]:
            if p > 0:
                images_per_id[p] = images_per_id.get(p, 0) + 1
    lo, hi = SMALL["images_per_id"]
    assert all(lo <= n <= hi for n in images_per_id.values())


def test_images_decode(small_set):
    for split in SPLITS:
        for name in _listing(small_set)[split]:
            with Image.open(os.path.join(small_set, split, name)) as im:
                assert im.format == "JPEG"
                assert im.mode == "RGB"
                assert im.size == (64, 128)


def test_manifest(small_set):
    with open(os.path.join(small_set, "manifest.json")) as f:
        manifest = json.load(f)
    assert manifest["format"] == synthetic.FORMAT_NAME
    assert manifest["version"] == synthetic.FORMAT_VERSION
    assert manifest["args"]["seed"] == 3
    assert manifest["args"]["images_per_id"] == [4, 7]
    assert "style_seed" not in manifest["args"]  # only stored when set
    counts = {split: len(names) for split, names in _listing(small_set).items()}
    assert {split: manifest["counts"][split]["images"] for split in SPLITS} == counts


def test_bytes_unchanged_since_the_single_module_generator(small_set):
    assert _tree_sha256(small_set) == SMALL_SEED3_SHA256


def test_deterministic_whatever_the_worker_count(small_set, tmp_path):
    again = generate_synthetic_market(str(tmp_path / "again"), seed=3, num_workers=2, **SMALL)
    assert _files(again) == _files(small_set)  # manifest included
    other = _files(generate_synthetic_market(str(tmp_path / "other"), seed=4, **SMALL))
    first = _files(small_set)
    assert set(first.values()) & set(other.values()) == set()  # no image in common


def test_existing_root_same_args_untouched(small_set):
    before = _mtimes(small_set)
    assert generate_synthetic_market(small_set, seed=3, **SMALL) == small_set
    assert _mtimes(small_set) == before


def test_existing_root_different_args_raises(small_set):
    before = _mtimes(small_set)
    with pytest.raises(ValueError, match="num_junk: existing=4, requested=5") as info:
        generate_synthetic_market(small_set, seed=3, **{**SMALL, "num_junk": 5})
    message = str(info.value)
    assert small_set in message and "Existing: {" in message and "requested: {" in message
    with pytest.raises(ValueError, match="seed"):
        generate_synthetic_market(small_set, seed=4, **SMALL)
    with pytest.raises(ValueError, match="style_seed: existing=None, requested=1"):
        generate_synthetic_market(small_set, seed=3, style_seed=1, **SMALL)
    assert _mtimes(small_set) == before


def test_existing_root_without_manifest_raises(tmp_path):
    root = tmp_path / "user_dir"
    root.mkdir()
    (root / "precious.txt").write_text("keep me")
    with pytest.raises(ValueError, match="manifest"):
        generate_synthetic_market(str(root), **SMALL)
    assert (root / "precious.txt").read_text() == "keep me"
    assert sorted(os.listdir(root)) == ["precious.txt"]


def test_no_temp_dirs_left(tmp_path):
    root = tmp_path / "set"
    generate_synthetic_market(str(root), seed=1, **{**SMALL, "num_distractors": 0, "num_junk": 0})
    assert sorted(os.listdir(tmp_path)) == ["set"]
    assert not any(n.startswith(".") for n in os.listdir(root))


def test_failed_generation_leaves_nothing(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(write, "render_spec", boom)  # the name the writer calls
    with pytest.raises(RuntimeError, match="interrupted"):
        generate_synthetic_market(str(tmp_path / "set"), **SMALL)
    assert os.listdir(tmp_path) == []


def test_staging_folder_of_a_dead_process_is_cleaned(tmp_path):
    """What a killed run leaves (builders.build_atomically's staging folder) goes at the next
    run; a live process's, another host's, or a folder that is not ours stays."""
    def staging(name, pid, host=socket.gethostname()):
        path = tmp_path / name
        path.mkdir()
        (path / "owner.json").write_text(json.dumps({"pid": pid, "host": host}))

    staging(".prepare-0123abcd", 2**30)  # above the kernel's pid_max: that process is gone
    staging(".prepare-live0000", os.getpid())
    staging(".prepare-elsewher", 2**30, host="another-host")
    (tmp_path / "set.tmp-user").mkdir()
    generate_synthetic_market(str(tmp_path / "set"), **{**SMALL, "num_distractors": 0,
                                                        "num_junk": 0})
    assert sorted(os.listdir(tmp_path)) == [".prepare-elsewher", ".prepare-live0000", "set",
                                            "set.tmp-user"]


def test_invalid_arguments(tmp_path):
    with pytest.raises(ValueError, match="num_cameras=10: must be in 2..9"):
        generate_synthetic_market(str(tmp_path / "a"), num_cameras=10)
    with pytest.raises(ValueError, match=r"images_per_id=\(3, 5\)"):
        generate_synthetic_market(str(tmp_path / "b"), images_per_id=(3, 5))
    with pytest.raises(ValueError, match="style_seed must be a non-negative int, got -1"):
        generate_synthetic_market(str(tmp_path / "c"), style_seed=-1)
    with pytest.raises(ValueError, match="num_junk=-1: must be"):
        generate_synthetic_market(str(tmp_path / "d"), num_junk=-1)
    with pytest.raises(ValueError, match="num_distractors=500000: must be in 0..499999"):
        generate_synthetic_market(str(tmp_path / "e"), num_distractors=500_000)
    assert os.listdir(tmp_path) == []


def test_identity_is_consistent_but_images_vary(small_set):
    """Same attributes for a pid; different pids differ; images of a pid differ."""
    assert synthetic.person_attributes(5, 3) == synthetic.person_attributes(5, 3)
    assert synthetic.person_attributes(5, 3) != synthetic.person_attributes(6, 3)
    names = [n for n in _listing(small_set)["bounding_box_train"] if n.startswith("0001_")]
    arrays = [np.asarray(Image.open(os.path.join(small_set, "bounding_box_train", n)),
                         dtype=np.float32) for n in names]
    assert all(np.abs(arrays[0] - a).mean() > 5 for a in arrays[1:])


def test_cli(tmp_path, capsys):
    out = str(tmp_path / "cli")
    code = cli([f"--out={out}", "--num_train_ids=2", "--num_test_ids=2", "--images_per_id=4,4",
                "--num_distractors=1", "--num_junk=1", "--num_cameras=2", "--workers=1"])
    assert code == 0
    text = capsys.readouterr().out
    assert "bounding_box_train" in text and "images=8" in text
    assert cli([f"--out={out}", "--seed=9", "--num_train_ids=2", "--num_test_ids=2"]) == 2
    assert cli([f"--out={out}x", "--num_images=5"]) == 2  # a pool argument without --pool
    assert "--num_images: not an argument of the labelled set" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# The labelled set through TFDS (data.name=synthetic)
# ---------------------------------------------------------------------------------------------


def test_build_is_named_by_its_arguments_and_reused(tiny_data_dir, tiny_splits):
    name = build.build_name(build.resolve_args(TINY_SYNTHETIC))
    assert re.fullmatch(r"s0-[0-9a-f]{10}", name)
    assert sorted(os.listdir(tiny_data_dir)) == ["synthetic", "synthetic_market1501"]
    assert os.listdir(os.path.join(tiny_data_dir, "synthetic")) == [name]
    before = _mtimes(tiny_data_dir)
    assert build.prepare(tiny_data_dir, TINY_SYNTHETIC) == name  # second use: nothing written
    assert build.prepare(tiny_data_dir, {**TINY_SYNTHETIC, "height": 128}) == name  # a default
    assert _mtimes(tiny_data_dir) == before
    meta = builders.built_metadata("synthetic", tiny_data_dir, name)
    assert meta["synthetic"]["args"] == build.resolve_args(TINY_SYNTHETIC)
    assert len(tiny_splits["train"]) == meta["stats"]["train"]["images"]


def test_other_arguments_get_their_own_build_and_a_mislabelled_one_is_refused(tmp_path):
    data_dir = str(tmp_path / "data")
    a = dict(TINY_SYNTHETIC, num_train_ids=4, num_test_ids=2, num_distractors=1, num_junk=1)
    b = dict(a, seed=1)
    name_a, name_b = build.prepare(data_dir, a), build.prepare(data_dir, b)
    assert name_a != name_b and name_b.startswith("s1-")
    assert sorted(os.listdir(os.path.join(data_dir, "synthetic"))) == sorted([name_a, name_b])
    # A build of `a` under the name of `c` (moved by hand): refused, naming both argument sets.
    c = dict(a, num_junk=2)
    name_c = build.build_name(build.resolve_args(c))
    os.rename(os.path.join(data_dir, "synthetic", name_a),
              os.path.join(data_dir, "synthetic", name_c))
    with pytest.raises(ValueError, match=f"synthetic/{name_c}/1.0.0 is not the build of the "
                                         "requested synthetic set") as info:
        datasets.load_splits("synthetic", data_dir, c)
    assert "'num_junk': 1" in str(info.value) and "'num_junk': 2" in str(info.value)
    with pytest.raises(ValueError, match=r"config.data.synthetic: unknown generator argument\(s\) "
                                         r"\['num_train_id'\]"):
        datasets.load_splits("synthetic", data_dir, {"num_train_id": 3})


def test_tfds_records_match_the_files_and_manifest(tiny_data_dir, tiny_splits):
    """Each split's records are the generated folder's images in name order, with the pid and
    camera of their file names, their bytes, and the manifest's counts."""
    name = build.build_name(build.resolve_args(TINY_SYNTHETIC))
    root = os.path.join(tiny_data_dir, "synthetic_market1501", name)
    manifest = synthetic.read_manifest(root)
    meta = builders.built_metadata("synthetic", tiny_data_dir, name)
    for split, folder in layouts.MARKET_SUBDIRS.items():
        s = tiny_splits[split]
        names = [n for n in sorted(os.listdir(os.path.join(root, folder)))
                 if not n.startswith("-1_")]  # junk is dropped, as in Market-1501
        assert list(s.paths) == [f"{folder}/{n}" for n in names]
        pids = [int(n.split("_")[0]) for n in names]
        cams = [int(n.split("_c")[1][0]) - 1 for n in names]
        np.testing.assert_array_equal(s.camids, cams)
        if split == "train":  # relabelled 0..C-1 in pid order; records keep the original pid
            np.testing.assert_array_equal(s.pids, np.unique(pids, return_inverse=True)[1])
            assert [int(s.records[i]["pid"]) for i in range(len(s))] == pids
        else:
            np.testing.assert_array_equal(s.pids, pids)
        for i in (0, len(s) - 1):
            with open(os.path.join(root, s.paths[i]), "rb") as f:
                assert s.records[i]["image"] == f.read()
        counts, stats = manifest["counts"][folder], meta["stats"][split]
        assert stats["images"] == counts["images"] - counts["junk"] == len(s)
        assert stats["junk_dropped"] == counts["junk"]
        assert stats["distractors"] == counts["distractors"]
        assert len(set(pids) - {0}) == counts["ids"]


# ---------------------------------------------------------------------------------------------
# Style domains (style_seed)
# ---------------------------------------------------------------------------------------------


def _mean_colour_per_camera(root):
    """{camera: mean RGB over its images} of a labelled set."""
    sums = {}
    for split in SPLITS:
        for n in sorted(os.listdir(os.path.join(root, split))):
            cam = int(MARKET_RE.match(n).group(2))
            x = np.asarray(Image.open(os.path.join(root, split, n)), np.float64).mean((0, 1))
            total, count = sums.get(cam, (0.0, 0))
            sums[cam] = (total + x, count + 1)
    return {cam: total / count for cam, (total, count) in sums.items()}


def test_style_domain_changes_cameras_not_people(small_set, tmp_path):
    domain = generate_synthetic_market(str(tmp_path / "b"), seed=3, style_seed=7, **SMALL)
    a, b = _files(small_set), _files(domain)
    assert a.keys() == b.keys()  # the same people, names, splits: only the cameras changed
    images = [k for k in a if k.endswith(".jpg")]
    assert all(a[k] != b[k] for k in images)
    mean_a, mean_b = _mean_colour_per_camera(small_set), _mean_colour_per_camera(domain)
    # Each camera's mean colour moves (here by 6-28 grey levels in RGB distance).
    gaps = {cam: float(np.linalg.norm(mean_a[cam] - mean_b[cam])) for cam in mean_a}
    assert min(gaps.values()) > 5 and np.mean(list(gaps.values())) > 10, gaps
    shift = synthetic.domain_shift(7)
    assert len(set(shift.scenes)) == 4 and max(shift.gain) / min(shift.gain) > 1.1
    assert {synthetic.camera_style(c, 3, 7).scene for c in range(1, 5)} <= set(shift.scenes)
    # the original domain is untouched by all this
    assert _tree_sha256(small_set) == SMALL_SEED3_SHA256
    assert synthetic.read_manifest(domain)["args"]["style_seed"] == 7


def test_sanity_mode_keeps_garments_and_drops_the_nuisance(small_set, tmp_path, capsys):
    """The same plan without nuisance: every image's corners are the plain grey background,
    people share one body and carry nothing, their garments are their own; the manifest (and
    build name) says so, and the default set is untouched."""
    renderer = render.Renderer(3, 128, 64, sanity=True)
    people = [renderer.person(pid) for pid in (1, 2, 3, 4)]
    for a in people:
        assert (a.skin, a.hair_style, a.stature) == (people[0].skin, people[0].hair_style,
                                                     people[0].stature)
        assert a.bag_type == a.hat == a.carried == "none"
    normal = render.Renderer(3, 128, 64).person(2)
    assert people[1].top_color == normal.top_color and people[1].lower_type == normal.lower_type
    assert len({a.top_color for a in people}) == 4
    assert renderer.camera(1).gain == (1.0, 1.0, 1.0) and renderer.camera(2).noise == 0.0
    for spec in plan.plan_market(synthetic.market_args(seed=3, sanity=True, **SMALL))[:20]:
        x = np.asarray(render.render_spec(renderer, spec, 8))
        corners = x[[0, 0, -1, -1], [0, -1, 0, -1]]
        assert (corners == 128).all() or spec.kind != "person", spec
    root = generate_synthetic_market(str(tmp_path / "sane"), seed=3, sanity=True, **SMALL)
    assert synthetic.read_manifest(root)["args"]["sanity"] is True
    assert "sanity" not in synthetic.market_args(seed=3, **SMALL)  # old names stay
    assert _tree_sha256(small_set) == SMALL_SEED3_SHA256
    with pytest.raises(ValueError, match=r"sanity='yes': unknown part\(s\) \['yes'\]"):
        synthetic.market_args(sanity="yes")
    # One part at a time: which nuisance a method fails on.
    assert synthetic.market_args(sanity="camera, background")["sanity"] == "background,camera"
    assert synthetic.market_args(sanity="all")["sanity"] is True
    assert synthetic.market_args(sanity=",".join(render.NUISANCE))["sanity"] is True
    assert "sanity" not in synthetic.market_args(sanity="")
    plain_bg = render.Renderer(3, 128, 64, sanity="background")
    assert plain_bg.camera(1) == render.Renderer(3, 128, 64).camera(1)  # its cameras stay
    assert plain_bg.person(2) == normal
    spec = next(sp for sp in plan.plan_market(synthetic.market_args(seed=3, **SMALL))
                if sp.kind == "person")
    images = [np.asarray(render.render_spec(r, spec, 8)).astype(int)
              for r in (plain_bg, renderer, render.Renderer(3, 128, 64))]
    assert np.abs(images[0] - images[1]).max() > 10 and np.abs(images[0] - images[2]).max() > 10
    assert cli([f"--out={tmp_path / 'cli'}", "--sanity", "--num_train_ids=2", "--num_test_ids=2",
                "--images_per_id=4,4", "--num_distractors=0", "--num_junk=0",
                "--num_cameras=2", "--workers=1"]) == 0
    assert synthetic.read_manifest(str(tmp_path / "cli"))["args"]["sanity"] is True


# ---------------------------------------------------------------------------------------------
# The unlabeled pool
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("pool") / "pool")
    assert generate_pool(root, seed=3, **POOL) == root
    return root


def _pool_names(root):
    return sorted(k for k in _files(root) if k.endswith(".jpg"))


def test_pool_layout_and_manifest(pool):
    names = _pool_names(pool)
    assert len(names) == POOL["num_images"]
    parsed = [POOL_RE.match(n) for n in names]
    assert all(parsed), names
    pids = {int(m.group(2)) for m in parsed}
    cams_by_pid = {}
    for m in parsed:
        cams_by_pid.setdefault(int(m.group(2)), set()).add(int(m.group(3)))
    assert all(1 <= len(c) <= 3 for c in cams_by_pid.values())
    cams = set().union(*cams_by_pid.values())
    assert cams <= set(range(plan.POOL_CAMERA_BASE + 1,
                             plan.POOL_CAMERA_BASE + POOL["num_cameras"] + 1))
    manifest = synthetic.read_manifest(pool)
    assert manifest["format"] == synthetic.POOL_FORMAT_NAME
    assert manifest["args"] == synthetic.pool_args(seed=3, **POOL)
    assert manifest["counts"] == {"images": 30, "ids": len(pids), "cameras": len(cams),
                                  "folders": 1}
    with Image.open(os.path.join(pool, names[0])) as im:
        assert im.size == (64, 128) and im.format == "JPEG"


def test_pool_people_are_none_of_the_labelled_sets(pool, small_set):
    pool_pids = {int(POOL_RE.match(n).group(2)) for n in _pool_names(pool)}
    assert min(pool_pids) >= synthetic.POOL_PERSON_BASE
    # The labelled set's people: its identities, its distractors' and its junk strangers'.
    labelled = [synthetic.person_attributes(p, 3) for p in range(1, 13)]
    labelled += [synthetic.person_attributes(plan.DISTRACTOR_PERSON_BASE + i, 3)
                 for i in range(SMALL["num_distractors"])]
    labelled += [synthetic.person_attributes(plan.JUNK_PERSON_BASE + i, 3)
                 for i in range(SMALL["num_junk"])]
    for pid in pool_pids:
        assert synthetic.person_attributes(pid, 3) not in labelled


def test_pool_deterministic_and_never_over_another_folder(pool, tmp_path):
    again = generate_pool(str(tmp_path / "again"), seed=3, num_workers=2, **POOL)
    assert _files(again) == _files(pool)
    before = _mtimes(pool)
    assert generate_pool(pool, seed=3, **POOL) == pool  # same arguments: untouched
    with pytest.raises(ValueError, match="num_images: existing=30, requested=31"):
        generate_pool(pool, seed=3, **{**POOL, "num_images": 31})
    with pytest.raises(ValueError, match="format: existing='personvit_jax.synthetic_pool', "
                                         "requested='personvit_jax.synthetic_market'"):
        generate_synthetic_market(pool, seed=3)
    assert _mtimes(pool) == before
    user = tmp_path / "mine"
    user.mkdir()
    (user / "a.jpg").write_bytes(b"not ours")
    with pytest.raises(ValueError, match=f"{user}' exists but has no readable manifest.json"):
        generate_pool(str(user), **POOL)
    assert os.listdir(user) == ["a.jpg"]
    with pytest.raises(ValueError, match=r"cameras_per_id=\(6, 9\): must be \(lo, hi\) with "
                                         r"1 <= lo <= hi and lo <= num_cameras \(5\)"):
        generate_pool(str(tmp_path / "bad"), **{**POOL, "cameras_per_id": (6, 9)})
    assert not os.path.exists(tmp_path / "bad")


def test_pool_builds_as_unlabeled_folder_and_pretraining_reads_it(pool, tmp_path):
    import ml_collections

    data_dir = str(tmp_path / "data")
    summary = prepare("unlabeled_folder", pool, data_dir, part_size=16, out=lambda _: None)
    assert summary["complete"] and summary["images"] == 30 and summary["parts"] == 2
    cfg = ml_collections.ConfigDict({"name": "unlabeled_folder", "data_dir": data_dir,
                                     "plus_labelled": ""})
    images = datasets.unlabeled_images(cfg, str(tmp_path / "index.txt"))
    names = _pool_names(pool)
    assert list(images.paths) == names  # manifest.json is not an image: left out
    with open(os.path.join(pool, names[7]), "rb") as f:
        assert images.records[7]["image"] == f.read()
    assert np.asarray(images.image(7)).shape == (128, 64, 3)


def test_pool_plus_the_labelled_train_images(pool, tiny_data_dir, tiny_splits, tmp_path):
    import ml_collections

    data_dir = str(tmp_path / "data")
    prepare("unlabeled_folder", pool, data_dir, part_size=16, out=lambda _: None)
    cfg = ml_collections.ConfigDict({"name": "unlabeled_folder", "data_dir": data_dir,
                                     "plus_labelled": "synthetic",
                                     "labelled_data_dir": tiny_data_dir,
                                     "synthetic": dict(TINY_SYNTHETIC)})
    images = datasets.unlabeled_images(cfg, str(tmp_path / "index.txt"))
    train = tiny_splits["train"]
    assert len(images) == 30 + len(train)
    assert list(images.paths) == _pool_names(pool) + list(train.paths)
    assert (images.pids == -1).all() and (images.camids == -1).all()  # labels unused
    last = len(images) - 1
    assert images.records[last]["image"] == train.records[len(train) - 1]["image"]
    assert np.array_equal(np.asarray(images.image(last)), np.asarray(train.image(len(train) - 1)))
    with pytest.raises(ValueError, match="config.data.plus_labelled: only TFDS builds"):
        pipeline.concat_unlabeled([images, layouts.Split.from_paths("x", ["a.jpg"])],
                                  "config.data.plus_labelled")


def test_pool_cli(tmp_path, capsys):
    out = str(tmp_path / "p")
    assert cli(["--pool", f"--out={out}", "--num_images=6", "--num_cameras=2", "--workers=1",
                "--images_per_id=1,3"]) == 0
    text = capsys.readouterr().out
    assert "images=6" in text and "--dataset=unlabeled_folder" in text
    assert len(_pool_names(out)) == 6
    assert cli(["--pool", f"--out={out}2", "--num_junk=3"]) == 2
    assert "--num_junk: not an argument of the pool" in capsys.readouterr().err
