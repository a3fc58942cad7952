"""The one command: archives in, table and published-count warnings out, and a fine-tune +
evaluation run on the build selected by name with data_dir."""

import os
import subprocess
import sys
import tarfile
import zipfile

import numpy as np
import pytest

from conftest import REPO, tiny_finetune_config
from personvit_jax import datasets
from personvit_jax.data import builders
from personvit_jax.data.prepare import format_table, prepare, published_count_warnings
from test_builders import fake_market


def _zip_folder(folder, zip_path):
    parent = os.path.dirname(folder)
    with zipfile.ZipFile(zip_path, "w") as z:
        for dirpath, _, files in os.walk(folder):
            for n in files:
                p = os.path.join(dirpath, n)
                z.write(p, os.path.relpath(p, parent))
    return zip_path


def test_command_builds_from_the_zip_and_prints_the_table(tmp_path):
    src = fake_market(str(tmp_path / "src" / "Market-1501-v15.09.15"))
    archive = _zip_folder(src, str(tmp_path / "Market-1501-v15.09.15.zip"))
    data_dir = str(tmp_path / "data")
    cmd = [sys.executable, "-m", "personvit_jax.data.prepare", "--dataset=market1501",
           f"--source={archive}", f"--data_dir={data_dir}"]
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith("split"))
    assert lines[i].split() == ["split", "images", "identities", "cameras", "junk", "dropped",
                                "distractors", "kept", "corrupt", "skipped"]
    assert lines[i + 1].split() == ["train", "24", "6", "4", "1", "0", "0"]
    assert lines[i + 2].split() == ["query", "2", "2", "2", "0", "0", "0"]
    assert lines[i + 3].split() == ["gallery", "3", "3", "3", "1", "1", "0"]
    assert "WARNING: market1501 train: 24 images, published 12,936" in run.stdout
    assert sorted(os.listdir(data_dir)) == ["market1501"]  # the unpacked copy is gone
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert again.returncode == 2 and "already exists; pass --overwrite" in again.stderr


def test_published_count_warnings_only_where_counts_differ():
    published = builders.PUBLISHED_COUNTS["msmt17"]
    stats = {s: {"images": n, "identities": ids or 7} for s, (n, ids) in published.items()}
    assert published_count_warnings("msmt17", stats) == []
    stats["query"]["images"] = 11658
    assert published_count_warnings("msmt17", stats) == [
        "WARNING: msmt17 query: 11,658 images, published 11,659. Check that the source is "
        "complete and unmodified."]
    assert published_count_warnings("reid_folder", stats) == []
    table = format_table({"train": {"images": 32621, "identities": 1041, "cameras": 15,
                                    "junk_dropped": 0, "distractors": 0, "corrupt_skipped": 2}})
    assert table.splitlines()[1].split() == ["train", "32,621", "1,041", "15", "0", "0", "2"]


def test_archives_tar_and_unsafe_zip(tmp_path):
    src = fake_market(str(tmp_path / "src" / "Market-1501-v15.09.15"))
    tgz = str(tmp_path / "m.tar.gz")
    with tarfile.open(tgz, "w:gz") as t:
        t.add(src, arcname="Market-1501-v15.09.15")
    meta = prepare("market1501", tgz, str(tmp_path / "a"), out=lambda _: None)
    assert meta["stats"]["train"]["images"] == 24
    evil = str(tmp_path / "evil.zip")
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("../outside.jpg", b"x")
    with pytest.raises(ValueError, match="evil.zip: member '../outside.jpg' points outside"):
        prepare("market1501", evil, str(tmp_path / "b"), out=lambda _: None)
    assert not os.path.exists(tmp_path / "outside.jpg")
    with pytest.raises(FileNotFoundError, match="--source=.*nothere.zip does not exist"):
        prepare("market1501", str(tmp_path / "nothere.zip"), str(tmp_path / "b"))
    with pytest.raises(ValueError, match="--csv is only for --dataset=reid_folder"):
        prepare("market1501", src, str(tmp_path / "c"), csv_path="x.csv", out=lambda _: None)


def test_finetune_and_evaluate_on_a_prepared_dataset(tmp_path):
    """configs/finetune.py:dataset=market1501 with --config.data.data_dir = the build."""
    from personvit_jax.stages import finetune

    src = fake_market(str(tmp_path / "Market-1501-v15.09.15"))
    data_dir = str(tmp_path / "data")
    prepare("market1501", src, data_dir, out=lambda _: None)
    cfg = tiny_finetune_config(data_dir, **{"data.name": "market1501", "optim.epochs": 1,
                                            "eval.batch_size": 8})
    result = finetune.train(cfg, str(tmp_path / "run"))
    assert result["num_valid_queries"] == 2 and 0.0 <= result["mAP"] <= 1.0
    assert np.isfinite(result["mAP"])
    # Custom data without camera ids trains and evaluates, but not with SIE.
    jpeg = datasets.load_splits("market1501", data_dir)["train"].records[0]["image"]
    custom = str(tmp_path / "custom")
    for split in ("train", "test"):
        for pid in range(4):
            for j in range(4):
                path = os.path.join(custom, split, f"{pid:04d}", f"{j}.jpg")
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "wb") as f:
                    f.write(jpeg)
    prepare("reid_folder", custom, data_dir, out=lambda _: None)
    with pytest.raises(ValueError, match="config.model.sie=True needs camera ids"):
        finetune.train(tiny_finetune_config(data_dir, **{"data.name": "reid_folder",
                                                         "model.sie": True}),
                       str(tmp_path / "run_sie"))
