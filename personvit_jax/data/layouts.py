"""Dataset folder layouts -> in-memory splits of (image, pid, camid, name) records.

The single source of truth for file-name and list-file parsing: the TFDS builders
(data/builders.py: every dataset, the generated synthetic set included) call these parsers.

Market-1501 layout (also DukeMTMC-reID, Occluded-Duke and the built-in synthetic set):
  <root>/bounding_box_train/  train images
  <root>/query/               query images
  <root>/bounding_box_test/   gallery images
  names like 0002_c1s1_000451_03.jpg: pid 0002, camera 1 (regex `([-\\d]+)_c(\\d)`).
  pid -1 = junk (dropped everywhere), pid 0 = distractor (kept: a wrong match in the gallery).
MSMT17 V1: <root>/{train,test}/ + list_{train,val,query,gallery}.txt with `<relpath> <pid>`
lines; names like 0000_000_01_0303morning_0015_0.jpg: camera = int(name.split('_')[2]), the 4th
field is date + time of day; the published protocol trains on train + val. V2: the same lists,
images in <root>/{mask_train_v2,mask_test_v2}/ (faces blurred).
Custom ReID folder: <root>/<split>/<pid>/<image> (split: train + query/gallery, or train + test),
or a CSV of `path,pid,camid` rows (paths relative to <root>, first component = split).
Query / gallery pair (evaluation only, no train split): <root>/{query,gallery}/ of Market-named
images, of <pid>/ folders, or of any images with such a CSV.
Unlabeled folder (LUPerson or any person crops): every image under <root>, recursively.

Camera ids are 0-based everywhere; train pids are relabelled 0..C-1 (query/gallery keep theirs).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import re
from typing import Optional, Sequence

import numpy as np

MARKET_SUBDIRS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
_MARKET_NAME_RE = re.compile(r"^([-\d]+)_c(\d+)")

# name -> (folder under data_dir, layout, number of cameras)
DATASETS = {
    "market1501": ("Market-1501-v15.09.15", "market", 6),
    "dukemtmc": ("DukeMTMC-reID", "market", 8),
    "occluded_duke": ("Occluded_Duke", "market", 8),
    "msmt17": ("MSMT17_V1", "msmt17", 15),
    "msmt17_v2": ("MSMT17_V2", "msmt17_v2", 15),
    # generated folders (personvit_jax/synthetic/build.py); 6 = the generator's default cameras
    "synthetic": ("synthetic_market1501", "market", 6),
}


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
MSMT17_IMAGE_DIRS = {"msmt17": ("train", "test"), "msmt17_v2": ("mask_train_v2", "mask_test_v2")}


@dataclasses.dataclass
class Split:
    """One split: pids [N] and 0-based camera ids [N] (int32) of N images.

    Images come from `records` when set (a random-access source whose item i holds the JPEG bytes
    under "image": a TFDS data source), else from the files `paths`. `paths` names the images in
    messages (file paths, or the names recorded at build time). `has_camera_ids` is False for
    data without cameras, where every image got its own camera id (see data/builders.py).
    """

    name: str
    paths: Sequence[str]
    pids: np.ndarray
    camids: np.ndarray
    records: Optional[Sequence[dict]] = None
    has_camera_ids: bool = True
    num_junk: int = 0  # pid -1 images dropped by the parser

    @classmethod
    def from_paths(cls, name: str, paths: Sequence[str]) -> "Split":
        """Unlabeled images (pretraining, extraction): pid and camera -1, no camera ids."""
        n = len(paths)
        return cls(name, paths, np.full(n, -1, np.int32), np.full(n, -1, np.int32),
                   has_camera_ids=False)

    def __len__(self) -> int:
        return len(self.pids)

    def image(self, i: int):
        """Image i decoded to an RGB PIL image (errors name the file)."""
        from personvit_jax.data.augment import load_rgb

        if self.records is None:
            return load_rgb(self.paths[i])
        record = self.records[i]
        name = record["file_name"]
        return load_rgb(io.BytesIO(record["image"]),
                        name=name.decode() if isinstance(name, bytes) else name)

    def __getitem__(self, i: int) -> dict:
        return {"path": self.paths[i], "pid": int(self.pids[i]), "camid": int(self.camids[i]),
                "index": i}

    @property
    def num_ids(self) -> int:
        return int(len(np.unique(self.pids)))


def relabel_pids(pids: np.ndarray) -> np.ndarray:
    """Maps arbitrary pids to 0..C-1 in sorted order."""
    _, labels = np.unique(pids, return_inverse=True)
    return labels.astype(np.int32)


def parse_market_name(path: str) -> tuple[int, int]:
    """(pid, 1-based camera) of a Market-1501-style file name (PPPP_cC..., e.g.
    0002_c1s1_000451_03.jpg; pid -1 = junk, 0 = distractor), or a ValueError naming the file."""
    m = _MARKET_NAME_RE.match(os.path.basename(path))
    if m is None:
        raise ValueError(f"{path}: file name does not follow the Market-1501 pattern "
                         "PPPP_cC..., e.g. 0002_c1s1_000451_03.jpg")
    return int(m.group(1)), int(m.group(2))


def parse_market_dir(directory: str, num_cameras: Optional[int], relabel: bool = False,
                     extensions: Sequence[str] = (".jpg",)) -> Split:
    """Reads one Market-layout folder (images ending in `extensions`; cameras 1..num_cameras,
    any number for None); drops junk (pid -1); sorted by file name."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"expected the folder {directory} (Market-1501 layout: "
                                f"{', '.join(MARKET_SUBDIRS.values())}) but it does not exist")
    paths, pids, camids, junk = [], [], [], 0
    for name in sorted(os.listdir(directory)):
        if not name.lower().endswith(tuple(extensions)):
            continue  # e.g. Thumbs.db in the official archive
        pid, cam = parse_market_name(os.path.join(directory, name))
        if pid == -1:
            junk += 1
            continue
        if pid < 0 or cam < 1 or (num_cameras is not None and cam > num_cameras):
            raise ValueError(f"{os.path.join(directory, name)}: pid {pid} / camera {cam} out of "
                             f"range (pid >= 0, camera 1..{num_cameras or 'any'})")
        paths.append(os.path.join(directory, name))
        pids.append(pid)
        camids.append(cam - 1)
    if not paths:
        raise ValueError(f"{directory}: no images (expected .jpg files named like "
                         "0002_c1s1_000451_03.jpg)")
    pids = np.asarray(pids, np.int32)
    split = os.path.basename(os.path.normpath(directory))
    return Split(split, paths, relabel_pids(pids) if relabel else pids,
                 np.asarray(camids, np.int32), num_junk=junk)


def load_market_layout(root: str, num_cameras: int, relabel: bool = True) -> dict[str, Split]:
    """train / query / gallery of a Market-layout root; train pids relabelled 0..C-1 unless
    `relabel` is False (the builders store the original pids)."""
    _check_root(root, list(MARKET_SUBDIRS.values()))
    return {split: parse_market_dir(os.path.join(root, sub), num_cameras,
                                    relabel=relabel and split == "train")
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
                if not 1 <= cam <= 15:
                    raise ValueError
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


def msmt17_time_of_day(name: str) -> str:
    """'morning' | 'noon' | 'afternoon' from an MSMT17 name (4th field = date + time of day),
    e.g. 0000_000_01_0303morning_0015_0.jpg -> 'morning'."""
    return os.path.basename(name).split("_")[3].lstrip("0123456789")


def load_msmt17_layout(root: str, version: str = "msmt17", relabel: bool = True
                       ) -> dict[str, Split]:
    """train (= list_train + list_val) / query / gallery of an MSMT17 root; `version` is
    'msmt17' (V1: train/, test/) or 'msmt17_v2' (mask_train_v2/, mask_test_v2/)."""
    train_dir, test_dir = MSMT17_IMAGE_DIRS[version]
    _check_root(root, [train_dir, test_dir, "list_train.txt", "list_val.txt", "list_query.txt",
                       "list_gallery.txt"])
    tr = [_read_msmt_list(root, n, train_dir) for n in ("list_train.txt", "list_val.txt")]
    train_pids = np.asarray(tr[0][1] + tr[1][1], np.int32)
    splits = {"train": Split("train", tr[0][0] + tr[1][0],
                             relabel_pids(train_pids) if relabel else train_pids,
                             np.asarray(tr[0][2] + tr[1][2], np.int32))}
    for split, list_name in (("query", "list_query.txt"), ("gallery", "list_gallery.txt")):
        p, pid, cam = _read_msmt_list(root, list_name, test_dir)
        splits[split] = Split(split, p, np.asarray(pid, np.int32), np.asarray(cam, np.int32))
    return splits


CUSTOM_SPLITS = ("train", "query", "gallery", "test")


def load_custom_layout(root: str, csv_path: Optional[str] = None) -> dict[str, Split]:
    """A user's own ReID data: `train` plus `query` + `gallery`, or plus `test` (then used as
    query AND gallery by the reader). Original pids are kept (pid -1 = junk, dropped).

    Without a CSV: <root>/<split>/<pid>/<image>, pid = the folder name (an integer); there are no
    camera ids, and every image gets its own (unique over all splits), `has_camera_ids` False.
    With a CSV (`path,pid,camid` rows, an optional header; paths relative to <root>, e.g.
    train/0001/a.jpg): pid and camera id from the CSV, cameras renumbered 0..C-1 in sorted order.
    """
    if not os.path.isdir(root):
        raise FileNotFoundError(f"custom ReID root {root} does not exist; expected "
                                "<root>/train/<pid>/<image> and <root>/query|gallery|test/...")
    rows = _custom_csv_rows(root, csv_path) if csv_path else _custom_folder_rows(root)
    by_split = {s: [r for r in rows if r[0] == s] for s in CUSTOM_SPLITS}
    where = csv_path or root
    if not by_split["train"]:
        raise ValueError(f"{where}: no train images (expected {root}/train/<pid>/<image>)")
    has_eval = bool(by_split["query"] or by_split["gallery"])
    if has_eval == bool(by_split["test"]) or (has_eval and not (by_split["query"] and
                                                                 by_split["gallery"])):
        raise ValueError(f"{where}: expected evaluation images in query/ AND gallery/, or in "
                         f"test/ alone; found {', '.join(s for s in CUSTOM_SPLITS if by_split[s])}")
    return _splits_from_rows(by_split, where, has_camera_ids=bool(csv_path))


def _splits_from_rows(by_split: dict[str, list[tuple]], where: str, has_camera_ids: bool
                      ) -> dict[str, Split]:
    """Splits of (split, path, pid, camid) rows; junk (pid -1) dropped. With camera ids they
    are renumbered 0..C-1 in sorted order over all rows; without, every image gets its own."""
    cams = sorted({r[3] for items in by_split.values() for r in items}) if has_camera_ids else []
    cam_index = {c: i for i, c in enumerate(cams)}
    splits, next_cam = {}, 0
    for split, items in by_split.items():
        if not items:
            continue
        kept = [r for r in items if r[2] != -1]
        if not kept:
            raise ValueError(f"{where}: split {split} has only junk (pid -1) images")
        if has_camera_ids:
            camids = [cam_index[r[3]] for r in kept]
        else:  # every image its own camera: the protocol then excludes only the image itself
            camids = list(range(next_cam, next_cam + len(kept)))
            next_cam += len(kept)
        splits[split] = Split(split, [r[1] for r in kept], np.asarray([r[2] for r in kept],
                                                                       np.int32),
                              np.asarray(camids, np.int32), has_camera_ids=has_camera_ids,
                              num_junk=len(items) - len(kept))
    return splits


QUERY_GALLERY = ("query", "gallery")


def load_query_gallery(root: str, csv_path: Optional[str] = None) -> dict[str, Split]:
    """A query / gallery pair without a train split (evaluation only), read from the files:
    <root>/query/ and <root>/gallery/, each holding either Market-1501-named images (PPPP_cC...,
    e.g. 0002_c1s1_000451_03.jpg: pid and camera from the name; pid -1 = junk, dropped; 0 = a
    distractor) or identity folders <pid>/<image> (no camera ids: every image its own, as
    reid_folder without a CSV). With a CSV (`path,pid,camid` rows, paths relative to <root>,
    e.g. query/a.jpg) pid and camera come from it and the file names are free; rows under
    other folders (train/) are ignored."""
    missing = [s for s in QUERY_GALLERY if not os.path.isdir(os.path.join(root, s))]
    if missing:
        raise FileNotFoundError(f"{root}: no {' or '.join(m + '/' for m in missing)} folder; "
                                "expected <root>/query/ and <root>/gallery/ (Market-named "
                                "images, <pid>/ folders, or any images with a CSV)")
    if csv_path:
        rows = _custom_csv_rows(root, csv_path)
        by_split = {s: [r for r in rows if r[0] == s] for s in QUERY_GALLERY}
        empty = [s for s in QUERY_GALLERY if not by_split[s]]
        if empty:
            raise ValueError(f"{csv_path}: no rows under {', '.join(e + '/' for e in empty)}")
        return _splits_from_rows(by_split, csv_path, has_camera_ids=True)
    kinds = {s: _query_gallery_kind(os.path.join(root, s)) for s in QUERY_GALLERY}
    if kinds["query"] != kinds["gallery"]:
        raise ValueError(f"{root}: query/ holds {kinds['query']} but gallery/ holds "
                         f"{kinds['gallery']}; use one kind for both (or a CSV)")
    if kinds["query"] == "identity folders":
        rows = _custom_folder_rows(root, QUERY_GALLERY)
        return _splits_from_rows({s: [r for r in rows if r[0] == s] for s in QUERY_GALLERY},
                                 root, has_camera_ids=False)
    return {s: parse_market_dir(os.path.join(root, s), None, extensions=IMAGE_EXTENSIONS)
            for s in QUERY_GALLERY}


def _query_gallery_kind(directory: str) -> str:
    """'identity folders' or 'Market-named images'; an error for a mix or no images."""
    entries = sorted(os.listdir(directory))
    folders = [e for e in entries if os.path.isdir(os.path.join(directory, e))]
    images = [e for e in entries if e.lower().endswith(IMAGE_EXTENSIONS)
              and os.path.isfile(os.path.join(directory, e))]
    if folders and images:
        raise ValueError(f"{directory}: holds both images ({images[0]}) and folders "
                         f"({folders[0]}); expected Market-named images or <pid>/ folders")
    if not folders and not images:
        raise ValueError(f"{directory}: no images ({', '.join(IMAGE_EXTENSIONS)}) and no "
                         "<pid>/ folders")
    return "identity folders" if folders else "Market-named images"


def _custom_folder_rows(root: str, splits: Sequence[str] = CUSTOM_SPLITS) -> list[tuple]:
    """(split, path, pid, None) for <root>/<split>/<pid>/<image>, sorted."""
    rows = []
    for split in splits:
        split_dir = os.path.join(root, split)
        if not os.path.isdir(split_dir):
            continue
        for pid_name in sorted(os.listdir(split_dir)):
            pid_dir = os.path.join(split_dir, pid_name)
            if not os.path.isdir(pid_dir):
                raise ValueError(f"{pid_dir}: expected a folder named by the identity "
                                 f"(<root>/{split}/<pid>/<image>), found a file")
            try:
                pid = int(pid_name)
            except ValueError:
                raise ValueError(f"{pid_dir}: identity folder names must be integers (e.g. 0001), "
                                 f"got {pid_name!r}; rename them or give a CSV") from None
            for name in sorted(os.listdir(pid_dir)):
                if not name.lower().endswith(IMAGE_EXTENSIONS):
                    raise ValueError(f"{os.path.join(pid_dir, name)}: unexpected file; expected "
                                     f"images ({', '.join(IMAGE_EXTENSIONS)})")
                rows.append((split, os.path.join(pid_dir, name), pid, None))
    if not rows:
        raise ValueError(f"{root}: no images; expected <root>/train/<pid>/<image> and "
                         "<root>/query|gallery|test/<pid>/<image>")
    return rows


def _custom_csv_rows(root: str, csv_path: str) -> list[tuple]:
    """(split, path, pid, camid) from a `path,pid,camid` CSV (an optional header line)."""
    if not os.path.isfile(csv_path):
        raise FileNotFoundError(f"label CSV {csv_path} does not exist")
    try:
        with open(csv_path, newline="", encoding="utf-8") as f:
            return _csv_rows(root, csv_path, csv.reader(f))
    except (UnicodeDecodeError, csv.Error) as e:  # binary junk, NUL bytes, a huge field
        raise ValueError(f"{csv_path}: not a UTF-8 CSV of 'path,pid,camid' rows ({e})") from None


def _csv_rows(root: str, csv_path: str, reader) -> list[tuple]:
    """The rows of `_custom_csv_rows`, from a csv.reader over the file."""
    rows = []
    for line_no, row in enumerate(reader, 1):
        if not row or (line_no == 1 and row[:3] == ["path", "pid", "camid"]):
            continue
        try:
            rel, pid, cam = row[0].strip(), int(row[1]), int(row[2])
        except (IndexError, ValueError):
            raise ValueError(f"{csv_path}:{line_no}: expected 'path,pid,camid' with integer "
                             f"pid and camid, got {','.join(row)!r}") from None
        split = rel.replace("\\", "/").split("/")[0]
        if split not in CUSTOM_SPLITS:
            raise ValueError(f"{csv_path}:{line_no}: path {rel!r} must start with one of "
                             f"{', '.join(CUSTOM_SPLITS)}/")
        path = os.path.join(root, rel)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{csv_path}:{line_no} points at {path}, which does not "
                                    "exist")
        rows.append((split, path, pid, cam))
    if not rows:
        raise ValueError(f"{csv_path}: no rows (expected 'path,pid,camid' lines)")
    return rows


def list_images(root: str) -> list[str]:
    """Every image under `root` (recursive; folders and files in sorted order)."""
    if not os.path.isdir(root):
        raise FileNotFoundError(
            f"unlabeled image folder {root} does not exist: put person crops there (any "
            "sub-folder tree of .jpg/.png files, e.g. LUPerson) or point prepare's --source "
            "(or --config.data.root with data.name=folder) at them")
    paths = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        paths.extend(os.path.join(dirpath, n) for n in sorted(filenames)
                     if n.lower().endswith(IMAGE_EXTENSIONS))
    if not paths:
        raise ValueError(f"{root}: no .jpg/.png images found")
    return paths


def image_folder_index(root: str, cache_path: str) -> list[str]:
    """`list_images(root)` listed once and cached in `cache_path` (first line: the root) so a
    restart over millions of files does not re-list."""
    root = os.path.abspath(root)
    if os.path.isfile(cache_path):
        with open(cache_path) as f:
            lines = f.read().splitlines()
        if lines and lines[0] == root:
            return lines[1:]
    paths = list_images(root)
    tmp = f"{cache_path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write("\n".join([root] + paths) + "\n")
    os.replace(tmp, cache_path)  # atomic: a half-written index is never read
    return paths


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


def num_cameras(name: str) -> int:
    return DATASETS[name][2]
