"""Manual-download TFDS builders (ArrayRecord) for the ReID benchmarks, users' own ReID folders
and unlabeled person crops, and the readers that turn a build back into `layouts.Split`s.

Labelled record: image (the source file's JPEG bytes, never re-encoded), pid (the original one,
int32: 0 = distractor; junk pid -1 is dropped at build time), camid (0-based, int32), file_name
(path relative to the source root), time_of_day ('morning' | 'noon' | 'afternoon' for MSMT17,
else ''). Splits: train, query, gallery (MSMT17 train = list_train + list_val). Records keep the
parser's order (sorted names / list-file order): shuffling is off, record i is image i.

Custom data without camera ids (`reid_folder` without a CSV) is written as train + query +
gallery or train + test; every image gets its own camera id (unique over the whole build) and
the metadata says `has_camera_ids: false`. With a test split, the reader uses it as query AND
gallery: the Market-1501 protocol drops gallery items with the query's pid AND camera, which is
then exactly the query image itself, so each query is ranked against all other images. SIE
(camera embedding) cannot be used on such data.

Unlabeled record (`unlabeled_folder`, LUPerson or any tree of person crops): image bytes and
file_name. Millions of images are written as parts of `part_size` images, each part its own TFDS
config (`part-00003-of-00080`) built atomically: a killed build resumes at the first missing
part, and `num_shards` processes can build disjoint parts at once (process i: parts i, i + n, ..).

The built-in synthetic set (`synthetic`, personvit_jax/synthetic) is a Market-layout folder
built like market1501, its cameras counted from its manifest; one TFDS config per generator
argument set (data_dir/synthetic/<config>/1.0.0), named by personvit_jax.synthetic.build.

Everything builds and reads without TensorFlow (images are given and read back as bytes).
Builds go to a temporary folder inside data_dir that is renamed into place at the end, so a
failed build leaves nothing behind (`build_atomically`, which the synthetic generator's folders
use too).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import socket
import tempfile
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
from absl import logging
from etils import epath
from PIL import Image

import tensorflow_datasets as tfds

from personvit_jax import files
from personvit_jax.data import layouts
from personvit_jax.data.augment import CorruptImageError

VERSION = "1.0.0"
_RELEASE_NOTES = {VERSION: "Initial release."}
_HOMEPAGE = "https://github.com/hustvl/PersonViT"

# Published sizes after dropping junk: split -> (images, identities or None).
PUBLISHED_COUNTS = {
    "market1501": {"train": (12936, 751), "query": (3368, None), "gallery": (15913, None)},
    "dukemtmc": {"train": (16522, 702), "query": (2228, None), "gallery": (17661, None)},
    "occluded_duke": {"train": (15618, 702), "query": (2210, None), "gallery": (17661, None)},
    "msmt17": {"train": (32621, 1041), "query": (11659, None), "gallery": (82161, None)},
}


def read_image_bytes(path: str, jpeg_only: bool) -> bytes:
    """The file's bytes after checking that they decode (fully: truncated files fail)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format
            im.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise CorruptImageError(f"{path}: cannot decode the image ({e}); replace the file, or "
                                "rerun prepare with --skip_corrupt to leave it out") from e
    if jpeg_only and fmt != "JPEG":
        raise CorruptImageError(f"{path}: expected a JPEG image, found {fmt}; re-save it as JPEG "
                                "or rerun prepare with --skip_corrupt to leave it out")
    return data


def readable_images(paths: Sequence[str], jpeg_only: bool, skip_corrupt: bool,
                    skipped: list) -> Iterator[tuple[int, bytes]]:
    """(index, bytes) of every image of `paths` that decodes. A corrupt one stops the build with
    its name, or with `skip_corrupt` is logged and its path appended to `skipped`."""
    for i, path in enumerate(paths):
        try:
            yield i, read_image_bytes(path, jpeg_only)
        except CorruptImageError as e:
            if not skip_corrupt:
                raise
            logging.warning("skipped: %s", e)
            skipped.append(path)


def _split_stats(pids: np.ndarray, camids: np.ndarray, junk: int, corrupt: int,
                 has_cams: bool) -> dict:
    return {"images": int(len(pids)), "identities": int(len(np.unique(pids))),
            "cameras": int(len(np.unique(camids))) if has_cams else 0,
            "junk_dropped": int(junk), "distractors": int((pids == 0).sum()),
            "corrupt_skipped": int(corrupt)}


# ---------------------------------------------------------------------------------------------
# Labelled ReID builders
# ---------------------------------------------------------------------------------------------


class _Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """What every builder here shares: version, and its code location given directly (TFDS
    would otherwise look it up through the optional `importlib_resources` package)."""

    VERSION = tfds.core.Version(VERSION)
    RELEASE_NOTES = _RELEASE_NOTES
    code_path = epath.Path(__file__)


class ReIDBuilder(_Builder, skip_registration=True):
    """Base of the labelled builders: subclasses say where the data is (`FOLDER`, `EXPECTED`)
    and how to parse it (`parse`, which calls the parsers of data/layouts.py)."""

    FOLDER = ""  # the dataset's own top folder, e.g. Market-1501-v15.09.15
    EXPECTED: tuple = ()  # entries the source root must hold

    def __init__(self, *, skip_corrupt: bool = False, csv_path: Optional[str] = None, **kwargs):
        self._skip_corrupt, self._csv_path = skip_corrupt, csv_path
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self, description=self.__doc__, homepage=_HOMEPAGE,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                "pid": np.int32, "camid": np.int32, "file_name": tfds.features.Text(),
                "time_of_day": tfds.features.Text()}),
            metadata=tfds.core.MetadataDict(), disable_shuffling=True)

    def parse(self, root: str) -> dict[str, layouts.Split]:
        raise NotImplementedError

    def source_root(self, manual_dir: str) -> str:
        """The folder holding EXPECTED: `manual_dir` itself or its FOLDER sub-folder."""
        manual_dir = os.fspath(manual_dir)
        for root in (manual_dir, os.path.join(manual_dir, self.FOLDER)):
            if self.EXPECTED and all(os.path.exists(os.path.join(root, e))
                                     for e in self.EXPECTED):
                return root
        if not os.path.isdir(manual_dir):
            raise FileNotFoundError(f"source {manual_dir} does not exist. {self.how_to()}")
        found = sorted(os.listdir(manual_dir))[:10]
        raise FileNotFoundError(
            f"source {manual_dir} is not a {self.name} root: expected it (or its sub-folder "
            f"{self.FOLDER}/) to contain {', '.join(self.EXPECTED)}; it contains "
            f"{', '.join(found) or 'nothing'}. {self.how_to()}")

    @classmethod
    def how_to(cls) -> str:
        return " ".join(cls.MANUAL_DOWNLOAD_INSTRUCTIONS.split())

    def _split_generators(self, dl_manager):
        root = self.source_root(dl_manager.manual_dir)
        splits = self.parse(root)
        has_cams = all(s.has_camera_ids for s in splits.values())
        self.info.metadata.update({"source": os.path.abspath(root), "has_camera_ids": has_cams,
                                   "stats": {}})
        return {name: self._generate_examples(root, name, split, has_cams)
                for name, split in splits.items()}

    def _generate_examples(self, root: str, split_name: str, split: layouts.Split,
                           has_cams: bool):
        keep, skipped = [], []
        for i, data in readable_images(split.paths, True, self._skip_corrupt, skipped):
            keep.append(i)
            rel = os.path.relpath(split.paths[i], root)
            yield i, {"image": data, "pid": split.pids[i], "camid": split.camids[i],
                      "file_name": rel,
                      "time_of_day": (layouts.msmt17_time_of_day(rel)
                                      if self.name.startswith("msmt17") else "")}
        if not keep:
            raise ValueError(f"{self.name} split {split_name}: every image was corrupt; nothing "
                             "to write")
        self.info.metadata["stats"][split_name] = _split_stats(
            split.pids[keep], split.camids[keep], split.num_junk, len(skipped), has_cams)


def _market_instructions(archive: str, folder: str) -> str:
    return (f"Download {archive} from the dataset's authors and pass it, or the folder it "
            f"unpacks to ({folder}/ holding bounding_box_train/, query/ and "
            "bounding_box_test/), as --source.")


class Market1501(ReIDBuilder):
    """Market-1501 (Zheng et al., ICCV 2015): 1,501 identities, 6 cameras."""

    name = "market1501"
    FOLDER, EXPECTED = "Market-1501-v15.09.15", tuple(layouts.MARKET_SUBDIRS.values())
    MANUAL_DOWNLOAD_INSTRUCTIONS = _market_instructions("Market-1501-v15.09.15.zip", FOLDER)

    def parse(self, root):
        return layouts.load_market_layout(root, layouts.DATASETS[self.name][2], relabel=False)


class Dukemtmc(Market1501):
    """DukeMTMC-reID (Zheng et al., ICCV 2017): 1,404 identities + distractors, 8 cameras."""

    name = "dukemtmc"
    FOLDER = "DukeMTMC-reID"
    MANUAL_DOWNLOAD_INSTRUCTIONS = _market_instructions("DukeMTMC-reID.zip", FOLDER)


class OccludedDuke(Market1501):
    """Occluded-DukeMTMC (Miao et al., ICCV 2019): DukeMTMC-reID re-split with occluded
    queries, 8 cameras."""

    name = "occluded_duke"
    FOLDER = "Occluded_Duke"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Build Occluded_Duke/ from DukeMTMC-reID with the Occluded-DukeMTMC-Dataset authors' "
        "script (it writes bounding_box_train/, query/ and bounding_box_test/) and pass that "
        "folder, or an archive of it, as --source.")


class Msmt17(ReIDBuilder):
    """MSMT17 V1 (Wei et al., CVPR 2018): 4,101 identities, 15 cameras; train = list_train +
    list_val as in the published protocol."""

    name = "msmt17"
    FOLDER = "MSMT17_V1"
    EXPECTED = (*layouts.MSMT17_IMAGE_DIRS["msmt17"], "list_train.txt", "list_val.txt",
                "list_query.txt", "list_gallery.txt")
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Request MSMT17_V1 from the dataset's authors and pass the archive, or the folder "
        "MSMT17_V1/ holding train/, test/ and list_{train,val,query,gallery}.txt, as --source.")

    def parse(self, root):
        return layouts.load_msmt17_layout(root, self.name, relabel=False)


class Msmt17V2(Msmt17):
    """MSMT17 V2: the V1 lists with face-blurred images in mask_train_v2/ and mask_test_v2/."""

    name = "msmt17_v2"
    FOLDER = "MSMT17_V2"
    EXPECTED = (*layouts.MSMT17_IMAGE_DIRS["msmt17_v2"], *Msmt17.EXPECTED[2:])
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Request MSMT17_V2 from the dataset's authors and pass the archive, or the folder "
        "MSMT17_V2/ holding mask_train_v2/, mask_test_v2/ and list_{train,val,query,gallery}.txt, "
        "as --source.")


class ReidFolder(ReIDBuilder):
    """A user's own ReID data: <root>/<split>/<pid>/<image>, or a CSV of path,pid,camid. Without
    camera ids every image gets its own camera id (see the module docstring)."""

    name = "reid_folder"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put your images in <root>/train/<pid>/<image> and <root>/query/<pid>/<image> + "
        "<root>/gallery/<pid>/<image> (or <root>/test/<pid>/<image>), pid an integer folder name; "
        "optionally a CSV of path,pid,camid rows (paths relative to <root>) given with --csv. "
        "Pass <root> as --source.")

    def source_root(self, manual_dir):
        return os.fspath(manual_dir)  # load_custom_layout checks the layout itself

    def parse(self, root):
        return layouts.load_custom_layout(root, self._csv_path)


class Synthetic(Market1501):
    """The built-in synthetic person set: a Market-1501-layout folder written by
    personvit_jax.synthetic, with its generator arguments in manifest.json (kept in the build's
    metadata as `synthetic`: the build's identity). One config per argument set."""

    name = "synthetic"
    MANIFEST = "manifest.json"  # synthetic.write.MANIFEST (that package imports this module)
    FOLDER, EXPECTED = "", (*layouts.MARKET_SUBDIRS.values(), MANIFEST)
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Generated, not downloaded: data.name=synthetic generates and builds it on first use "
        "(personvit_jax.synthetic.build), or `python -m personvit_jax.synthetic --out=DIR` "
        "writes the folder.")

    def parse(self, root):
        path = os.path.join(root, self.MANIFEST)
        try:
            with open(path, encoding="utf-8") as f:
                manifest = json.load(f)
            num_cameras = int(manifest["args"]["num_cameras"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: not a manifest of the synthetic generator (expected JSON "
                             f"with args.num_cameras): {e}") from e
        self.info.metadata["synthetic"] = manifest
        return layouts.load_market_layout(root, num_cameras, relabel=False)


LABELLED_BUILDERS = {b.name: b for b in (Market1501, Dukemtmc, OccludedDuke, Msmt17, Msmt17V2,
                                         ReidFolder)}


# ---------------------------------------------------------------------------------------------
# Unlabeled person crops (pretraining)
# ---------------------------------------------------------------------------------------------


class UnlabeledFolder(_Builder):
    """Unlabeled person crops (LUPerson or any folder tree of .jpg/.png): one part of the sorted
    file list per config `part-IIIII-of-NNNNN`."""

    name = "unlabeled_folder"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put the person crops (e.g. LUPerson's images) in one folder tree of .jpg/.png files and "
        "pass it as --source.")

    def __init__(self, *, files: Sequence[str] = (), root: str = "", skip_corrupt: bool = False,
                 **kwargs):
        self._files, self._root, self._skip_corrupt = files, root, skip_corrupt
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self, description=self.__doc__, homepage=_HOMEPAGE,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3)),
                "file_name": tfds.features.Text()}),
            metadata=tfds.core.MetadataDict(), disable_shuffling=True)

    def _split_generators(self, dl_manager):
        del dl_manager  # the file list comes with the builder
        self.info.metadata.update({"source": self._root, "first": self._files[0],
                                   "last": self._files[-1]})
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        skipped = []
        for i, data in readable_images(self._files, False, self._skip_corrupt, skipped):
            yield i, {"image": data, "file_name": os.path.relpath(self._files[i], self._root)}
        self.info.metadata["stats"] = {"images": len(self._files) - len(skipped),
                                       "corrupt_skipped": len(skipped)}


_PART_RE = re.compile(r"^part-(\d{5})-of-(\d{5})$")


def _named_config(name: str) -> tfds.core.BuilderConfig:
    return tfds.core.BuilderConfig(name=name, version=VERSION)


def _part_config(i: int, n: int) -> tfds.core.BuilderConfig:
    return _named_config(f"part-{i:05d}-of-{n:05d}")


# ---------------------------------------------------------------------------------------------
# Building (atomic)
# ---------------------------------------------------------------------------------------------

_STAGING_PREFIX = ".prepare-"
_STAGING_OWNER = "owner.json"  # in every staging folder: {"pid", "host"} of the process using it


def build_atomically(final: str, write: Callable[[str], str], *,
                     staging_parent: Optional[str] = None, overwrite: bool = False) -> None:
    """Makes the folder `final` appear complete, or not at all.

    `write(staging)` builds inside the fresh folder `staging` (`.prepare-XXXXXXXX` in
    `staging_parent`, default final's parent: one file system, so the last step is a rename)
    and returns the path of its finished result there; that is renamed to `final`, and staging
    is removed whatever happens. An existing `final` is replaced only with `overwrite`; one
    that appears meanwhile (another process finished first) is left alone: FileExistsError.
    Staging folders left by processes of this host that died (killed, preempted) go first.
    A write that fails (disk full, I/O error, read-only or unwritable folder) raises
    files.WriteError naming `final`.
    """
    if os.path.exists(final) and not overwrite:
        raise FileExistsError(f"{final} already exists; not replacing it (prepare: pass "
                              "--overwrite to rebuild it)")
    parent = staging_parent or os.path.dirname(os.path.abspath(final))
    os.makedirs(parent, exist_ok=True)
    _remove_dead_staging(parent)
    staging = tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=parent)
    try:
        with open(os.path.join(staging, _STAGING_OWNER), "w", encoding="utf-8") as f:
            json.dump({"pid": os.getpid(), "host": socket.gethostname()}, f)
        result = write(staging)
        os.makedirs(os.path.dirname(os.path.abspath(final)), exist_ok=True)
        replaced = os.path.join(staging, "replaced")
        if overwrite and os.path.exists(final):  # move the old build out of the way first
            os.replace(final, replaced)
        try:
            os.replace(result, final)  # a folder never replaces a non-empty one
        except OSError as e:
            if os.path.exists(replaced) and not os.path.exists(final):
                os.replace(replaced, final)  # the old build goes back
            elif os.path.exists(final):
                raise FileExistsError(f"{final} appeared while this build ran (another process "
                                      "built it first); left as it is") from e
            raise
    except OSError as e:
        if type(e) is OSError or isinstance(e, PermissionError):  # not a missing source file
            raise files.write_failed(final, e, "nothing of this build was kept; an earlier "
                                     "build, if any, is intact") from e
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _remove_dead_staging(parent: str) -> None:
    """Removes the staging folders in `parent` whose owner, a process on this host, is gone.
    Those of live processes, of other hosts and without a readable owner file are kept."""
    for entry in sorted(os.listdir(parent)):
        path = os.path.join(parent, entry)
        if not entry.startswith(_STAGING_PREFIX):
            continue
        try:
            with open(os.path.join(path, _STAGING_OWNER), encoding="utf-8") as f:
                owner = json.load(f)
            if owner["host"] != socket.gethostname():
                continue
            os.kill(int(owner["pid"]), 0)  # raises if there is no such process
        except ProcessLookupError:
            logging.info("removing %s: left by process %s, which died", path, owner["pid"])
            shutil.rmtree(path, ignore_errors=True)
        except (OSError, ValueError, KeyError, TypeError):
            continue  # alive (or not ours to signal), or no owner file yet


def _build_tfds(make_builder: Callable[[str], tfds.core.DatasetBuilder], data_dir: str,
                final_rel: str, manual_dir: Optional[str], overwrite: bool) -> None:
    """`make_builder(staging)`'s build, renamed to data_dir/final_rel (staging in data_dir)."""
    def write(staging: str) -> str:
        builder = make_builder(staging)
        builder.download_and_prepare(
            download_dir=os.path.join(staging, "downloads"),
            download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
        return os.fspath(builder.data_dir)

    build_atomically(os.path.join(data_dir, final_rel), write, staging_parent=data_dir,
                     overwrite=overwrite)


def build_labelled(name: str, source: str, data_dir: str, *, skip_corrupt: bool = False,
                   csv_path: Optional[str] = None, overwrite: bool = False) -> dict:
    """Builds dataset `name` from the folder `source` into data_dir/name/VERSION; returns its
    metadata (per-split stats, has_camera_ids, source)."""
    if name not in LABELLED_BUILDERS:
        raise ValueError(f"--dataset={name!r}: expected one of "
                         f"{sorted(LABELLED_BUILDERS) + [UnlabeledFolder.name]}")
    if csv_path and name != ReidFolder.name:
        raise ValueError(f"--csv is only for --dataset={ReidFolder.name}, not {name}")
    cls = LABELLED_BUILDERS[name]
    _build_tfds(
        lambda d: cls(data_dir=d, file_format="array_record", skip_corrupt=skip_corrupt,
                      csv_path=csv_path),
        data_dir, os.path.join(name, VERSION), source, overwrite)
    return dict(tfds.builder(name, data_dir=data_dir).info.metadata)


def build_synthetic(source: str, data_dir: str, config: str) -> dict:
    """Builds the generated synthetic folder `source` as config `config` of `synthetic` into
    data_dir/synthetic/<config>/VERSION (never over an existing build); returns its metadata
    (per-split stats, has_camera_ids, source, the folder's manifest as `synthetic`)."""
    cfg = _named_config(config)
    _build_tfds(lambda d: Synthetic(config=cfg, data_dir=d, file_format="array_record"),
                data_dir, os.path.join(Synthetic.name, config, VERSION), source, False)
    return dict(tfds.builder(Synthetic.name, data_dir=data_dir, config=cfg).info.metadata)


def build_unlabeled(source: str, data_dir: str, *, part_size: int = 50_000, shard_index: int = 0,
                    num_shards: int = 1, skip_corrupt: bool = False,
                    log: Callable[[str], None] = logging.info) -> dict:
    """Builds this process's missing parts of `unlabeled_folder` (parts shard_index,
    shard_index + num_shards, ...); returns {'parts', 'built', 'images' (whole set, when every
    part exists)}. The sorted file list is cached in data_dir/unlabeled_folder/file_index.txt."""
    if part_size < 1 or not 0 <= shard_index < num_shards:
        raise ValueError(f"need part_size >= 1 and 0 <= shard_index < num_shards, got "
                         f"{part_size}, {shard_index}, {num_shards}")
    root = os.path.abspath(source)
    base = os.path.join(data_dir, UnlabeledFolder.name)
    os.makedirs(base, exist_ok=True)
    files = layouts.image_folder_index(root, os.path.join(base, "file_index.txt"))
    n = -(-len(files) // part_size)
    existing = _existing_parts(data_dir)
    if existing and {total for _, total in existing} != {n}:
        raise FileExistsError(
            f"{base} holds parts of a build with another part count "
            f"({sorted({t for _, t in existing})} parts, this one has {n}); use the same "
            "--part_size and source as that build, or move it away")
    built = 0
    for i in range(shard_index, n, num_shards):
        cfg = _part_config(i, n)
        if (i, n) in existing:
            continue  # resume: this part is complete
        log(f"part {i + 1}/{n}: images {i * part_size}..{min(len(files), (i + 1) * part_size) - 1}")
        chunk = files[i * part_size:(i + 1) * part_size]
        _build_tfds(
            lambda d, cfg=cfg, chunk=chunk: UnlabeledFolder(
                config=cfg, data_dir=d, file_format="array_record", files=chunk, root=root,
                skip_corrupt=skip_corrupt),
            data_dir, os.path.join(UnlabeledFolder.name, cfg.name, VERSION), None, False)
        built += 1
    done = _existing_parts(data_dir)
    summary = {"parts": n, "built": built, "complete": len(done) == n}
    if summary["complete"]:
        summary["images"] = len(load_unlabeled(data_dir))
    return summary


def _existing_parts(data_dir: str) -> set[tuple[int, int]]:
    """(index, total) of the complete parts of unlabeled_folder under data_dir."""
    base = os.path.join(data_dir, UnlabeledFolder.name)
    out = set()
    for entry in os.listdir(base) if os.path.isdir(base) else ():
        m = _PART_RE.match(entry)
        if m and os.path.isfile(os.path.join(base, entry, VERSION, "dataset_info.json")):
            out.add((int(m.group(1)), int(m.group(2))))
    return out


# ---------------------------------------------------------------------------------------------
# Reading (tfds.data_source -> layouts.Split)
# ---------------------------------------------------------------------------------------------


def built_metadata(name: str, data_dir: str, config: Optional[str] = None) -> Optional[dict]:
    """The metadata of the complete build of `name` (its `config`) under data_dir, else None."""
    rel = os.path.join(name, *([config] if config else []), VERSION)
    if not os.path.isfile(os.path.join(data_dir, rel, "dataset_info.json")):
        return None
    kwargs = {"config": _named_config(config)} if config else {}
    return dict(tfds.builder(name, data_dir=data_dir, **kwargs).info.metadata)


def _prepare_hint(name: str, data_dir: str) -> str:
    data_dir = os.path.abspath(data_dir)
    return (f"dataset {name!r} is not prepared under data_dir {data_dir}: expected "
            f"{os.path.join(data_dir, name, VERSION)}. Build it with `python -m "
            f"personvit_jax.data.prepare --dataset={name} --source=DIR_OR_ARCHIVE "
            f"--data_dir={data_dir}`, or point --config.data.data_dir at where it was built.")


def _data_source(name: str, data_dir: str, **kwargs):
    # Images stay encoded: the pipeline decodes them (one decoder for files and records).
    return tfds.data_source(name, data_dir=data_dir, download=False,
                            decoders={"image": tfds.decode.SkipDecoding()}, **kwargs)


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _labels(source, chunk: int = 1024) -> tuple[list[str], np.ndarray, np.ndarray]:
    """file names, pids [N], camids [N] of every record (one sequential pass)."""
    names, pids, camids = [], [], []
    for start in range(0, len(source), chunk):
        for rec in source.__getitems__(list(range(start, min(start + chunk, len(source))))):
            names.append(_text(rec["file_name"]))
            pids.append(rec["pid"])
            camids.append(rec["camid"])
    return names, np.asarray(pids, np.int32), np.asarray(camids, np.int32)


def load_record_splits(name: str, data_dir: str, config: Optional[str] = None
                       ) -> dict[str, layouts.Split]:
    """{'train', 'query', 'gallery'} of a built labelled dataset (train pids relabelled 0..C-1;
    a `test` split serves as query and gallery), `config` naming one of its builds (the
    synthetic set's). Images are read from the records on demand."""
    if name not in LABELLED_BUILDERS and name != Synthetic.name:
        raise ValueError(f"config.data.name={name!r}: expected one of "
                         f"{sorted(LABELLED_BUILDERS) + [Synthetic.name]}")
    metadata = built_metadata(name, data_dir, config)
    if metadata is None:
        raise FileNotFoundError(_prepare_hint(name, data_dir))
    has_cams = bool(metadata["has_camera_ids"])
    kwargs = {"config": _named_config(config)} if config else {}
    splits, split_name = {}, ""
    try:  # reading the labels reads every record whole: damage anywhere shows here
        for split_name, source in _data_source(name, data_dir, builder_kwargs=kwargs).items():
            names, pids, camids = _labels(source)
            if split_name == "train":
                pids = layouts.relabel_pids(pids)
            splits[split_name] = layouts.Split(split_name, names, pids, camids, records=source,
                                               has_camera_ids=has_cams)
    except RuntimeError as e:  # ArrayRecord / Riegeli: truncated or garbled files
        where = os.path.join(os.path.abspath(data_dir), name)
        raise CorruptRecordsError(
            f"{where}: unreadable records{f' in split {split_name}' if split_name else ''} "
            f"({' '.join(str(e).split())[:200]}); the build is damaged: rebuild it with "
            f"`python -m personvit_jax.data.prepare --dataset={name} ... --overwrite`") from e
    if "test" in splits:
        test = splits.pop("test")
        splits["query"] = splits["gallery"] = test
    return splits


class CorruptRecordsError(ValueError):
    """A built dataset whose record files are truncated or garbled."""


class ConcatRecords(Sequence):
    """Random access over several record sources laid end to end (picklable)."""

    def __init__(self, sources: Sequence):
        self.sources = list(sources)
        self.offsets = np.cumsum([0] + [len(s) for s in self.sources])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(f"record {i} out of range 0..{len(self) - 1}")
        s = int(np.searchsorted(self.offsets, i, side="right")) - 1
        return self.sources[s][int(i - self.offsets[s])]


class RecordNames(Sequence):
    """file_name of record i, read on demand (listing millions up front would read every
    image)."""

    def __init__(self, records: Sequence):
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> str:
        return _text(self.records[i]["file_name"])


def load_unlabeled(data_dir: str) -> layouts.Split:
    """Every image of the `unlabeled_folder` build under data_dir, parts in order."""
    parts = _existing_parts(data_dir)
    if not parts:
        raise FileNotFoundError(_prepare_hint(UnlabeledFolder.name, data_dir))
    totals = {n for _, n in parts}
    n = totals.pop()
    missing = sorted(set(range(n)) - {i for i, _ in parts})
    if totals or missing:
        raise FileNotFoundError(
            f"{os.path.join(data_dir, UnlabeledFolder.name)}: the build is incomplete (parts "
            f"{missing[:10]} of {n} missing): rerun the same prepare command; it resumes")
    sources = [_data_source(UnlabeledFolder.name, data_dir, split="train",
                            builder_kwargs={"config": _part_config(i, n)}) for i in range(n)]
    return unlabeled_split(ConcatRecords(sources))


def unlabeled_split(records: Sequence) -> layouts.Split:
    """An unlabeled split (pids and cameras -1) read from `records`, named by their file names."""
    split = layouts.Split.from_paths("train", RecordNames(records))
    split.records = records
    return split
