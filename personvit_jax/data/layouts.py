"""Dataset folder layouts -> in-memory splits of (path, pid, camid) records.

Market-1501 layout (also DukeMTMC-reID, Occluded-Duke and the built-in synthetic set):
  <root>/bounding_box_train/  train images
  <root>/query/               query images
  <root>/bounding_box_test/   gallery images
  names like 0002_c1s1_000451_03.jpg: pid 0002, camera 1 (regex `([-\\d]+)_c(\\d)`).
  pid -1 = junk (dropped everywhere), pid 0 = distractor (kept: a wrong match in the gallery).
MSMT17 (V1): <root>/{train,test}/ + list_{train,val,query,gallery}.txt with `<relpath> <pid>`
lines; camera = int(name.split('_')[2]); the published protocol trains on train + val.

Camera ids are 0-based everywhere; train pids are relabelled 0..C-1 (query/gallery keep theirs).
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Optional

import numpy as np

MARKET_SUBDIRS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
_MARKET_NAME_RE = re.compile(r"^([-\d]+)_c(\d+)")

# name -> (folder under data_dir, layout, number of cameras)
DATASETS = {
    "market1501": ("Market-1501-v15.09.15", "market", 6),
    "dukemtmc": ("DukeMTMC-reID", "market", 8),
    "occluded_duke": ("Occluded_Duke", "market", 8),
    "msmt17": ("MSMT17_V1", "msmt17", 15),
    "synthetic": ("synthetic_market1501", "market", 6),
}


@dataclasses.dataclass
class Split:
    """One split: image paths with pids [N] and 0-based camera ids [N] (int32)."""

    name: str
    paths: list[str]
    pids: np.ndarray
    camids: np.ndarray

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        return {"path": self.paths[i], "pid": int(self.pids[i]), "camid": int(self.camids[i]),
                "index": i}

    @property
    def num_ids(self) -> int:
        return int(len(np.unique(self.pids)))


def _relabel(pids: np.ndarray) -> np.ndarray:
    """Maps arbitrary pids to 0..C-1 in sorted order."""
    _, labels = np.unique(pids, return_inverse=True)
    return labels.astype(np.int32)


def parse_market_dir(directory: str, num_cameras: int, relabel: bool = False) -> Split:
    """Reads one Market-layout folder; drops junk (pid -1); sorted by file name."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"expected the folder {directory} (Market-1501 layout: "
                                f"{', '.join(MARKET_SUBDIRS.values())}) but it does not exist")
    paths, pids, camids = [], [], []
    for name in sorted(os.listdir(directory)):
        if not name.lower().endswith(".jpg"):
            continue  # e.g. Thumbs.db in the official archive
        m = _MARKET_NAME_RE.match(name)
        if m is None:
            raise ValueError(f"{os.path.join(directory, name)}: file name does not follow the "
                             "Market-1501 pattern PPPP_cC..., e.g. 0002_c1s1_000451_03.jpg")
        pid, cam = int(m.group(1)), int(m.group(2))
        if pid == -1:
            continue
        if pid < 0 or not 1 <= cam <= num_cameras:
            raise ValueError(f"{os.path.join(directory, name)}: pid {pid} / camera {cam} out of "
                             f"range (pid >= 0, camera 1..{num_cameras})")
        paths.append(os.path.join(directory, name))
        pids.append(pid)
        camids.append(cam - 1)
    if not paths:
        raise ValueError(f"{directory}: no images (expected .jpg files named like "
                         "0002_c1s1_000451_03.jpg)")
    pids = np.asarray(pids, np.int32)
    split = os.path.basename(os.path.normpath(directory))
    return Split(split, paths, _relabel(pids) if relabel else pids, np.asarray(camids, np.int32))


def load_market_layout(root: str, num_cameras: int) -> dict[str, Split]:
    _check_root(root, list(MARKET_SUBDIRS.values()))
    return {split: parse_market_dir(os.path.join(root, sub), num_cameras, relabel=split == "train")
            for split, sub in MARKET_SUBDIRS.items()}


def _read_msmt_list(root: str, list_name: str, image_dir: str) -> tuple[list, list, list]:
    list_path = os.path.join(root, list_name)
    if not os.path.isfile(list_path):
        raise FileNotFoundError(f"expected the MSMT17 list file {list_path}")
    paths, pids, camids = [], [], []
    with open(list_path) as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.split()
            try:
                rel, pid = parts[0], int(parts[1])
                cam = int(os.path.basename(rel).split("_")[2])
            except (IndexError, ValueError):
                raise ValueError(f"{list_path}:{line_no}: expected '<relative path> <pid>' with a "
                                 f"name like 0000_000_01_0303morning_0015_0.jpg, got {line.strip()!r}")
            path = os.path.join(root, image_dir, rel)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{list_path}:{line_no} points at {path}, which does not exist")
            paths.append(path)
            pids.append(pid)
            camids.append(cam - 1)
    if not paths:
        raise ValueError(f"{list_path}: empty list")
    return paths, pids, camids


def load_msmt17_layout(root: str) -> dict[str, Split]:
    _check_root(root, ["train", "test", "list_train.txt", "list_val.txt", "list_query.txt",
                       "list_gallery.txt"])
    tr = [_read_msmt_list(root, n, "train") for n in ("list_train.txt", "list_val.txt")]
    splits = {"train": Split("train", tr[0][0] + tr[1][0],
                             _relabel(np.asarray(tr[0][1] + tr[1][1], np.int32)),
                             np.asarray(tr[0][2] + tr[1][2], np.int32))}
    for split, list_name in (("query", "list_query.txt"), ("gallery", "list_gallery.txt")):
        p, pid, cam = _read_msmt_list(root, list_name, "test")
        splits[split] = Split(split, p, np.asarray(pid, np.int32), np.asarray(cam, np.int32))
    return splits


def _check_root(root: str, expected: list[str]) -> None:
    if not os.path.isdir(root):
        raise FileNotFoundError(
            f"dataset root {root} does not exist; expected a folder containing "
            f"{', '.join(expected)}. Put the dataset there or point --config.data.data_dir at "
            "the folder that holds it.")
    missing = [e for e in expected if not os.path.exists(os.path.join(root, e))]
    if missing:
        raise FileNotFoundError(
            f"dataset root {root} is missing {', '.join(missing)}; expected it to contain "
            f"{', '.join(expected)}. Point --config.data.data_dir at the folder holding it.")


def dataset_root(name: str, data_dir: str) -> str:
    if name not in DATASETS:
        raise ValueError(f"config.data.name={name!r}: expected one of {sorted(DATASETS)}")
    return os.path.join(data_dir, DATASETS[name][0])


def load_splits(name: str, data_dir: str, synthetic_kwargs: Optional[dict] = None
                ) -> dict[str, Split]:
    """{'train', 'query', 'gallery'} splits of dataset `name` found under `data_dir`.

    The synthetic set is generated there first if absent (deterministic, atomic), with
    `synthetic_kwargs` as generator arguments; other datasets ignore them.
    """
    root = dataset_root(name, data_dir)
    _, layout, num_cameras = DATASETS[name]
    if name == "synthetic":
        from personvit_jax.data.synthetic import generate_synthetic_market
        generate_synthetic_market(root, **(synthetic_kwargs or {}))
    if layout == "msmt17":
        return load_msmt17_layout(root)
    return load_market_layout(root, num_cameras)


def num_cameras(name: str) -> int:
    return DATASETS[name][2]
