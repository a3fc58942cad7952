r"""Builds a ReID dataset, your own ReID folder, or unlabeled person crops as a TFDS ArrayRecord
dataset under --data_dir, then prints what it holds (and warns when a benchmark's counts differ
from the published ones).

  python -m personvit_jax.data.prepare --dataset=market1501 \
      --source=Market-1501-v15.09.15.zip --data_dir=data
  python -m personvit_jax.data.prepare --dataset=reid_folder --source=my_data [--csv=labels.csv]
  python -m personvit_jax.data.prepare --dataset=unlabeled_folder --source=LUPerson \
      [--num_shards=4 --shard_index=0]

--dataset: market1501 | dukemtmc | occluded_duke | msmt17 | msmt17_v2 | reid_folder |
unlabeled_folder. --source: the dataset's folder, a folder holding it, or its .zip / .tar(.gz)
archive (unpacked into a temporary folder inside --data_dir, removed afterwards). Training then
reads the build with --config.data.name=NAME --config.data.data_dir=DATA_DIR.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tarfile
import tempfile
import zipfile
from typing import Callable, Iterator, Optional

from absl import flags

from personvit_jax import cli
from personvit_jax.data import builders

def define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_enum("dataset", None,
                      sorted(builders.LABELLED_BUILDERS) + [builders.UnlabeledFolder.name],
                      "Dataset to build.", flag_values=fv)
    flags.DEFINE_string("source", None, "The dataset's folder or archive (.zip/.tar/.tgz).",
                        flag_values=fv)
    flags.DEFINE_string("data_dir", "data", "Where the build goes (config.data.data_dir).",
                        flag_values=fv)
    flags.DEFINE_string("csv", None, "reid_folder only: a CSV of path,pid,camid rows (paths "
                        "relative to --source), giving pids and camera ids.", flag_values=fv)
    flags.DEFINE_bool("skip_corrupt", False, "Leave out (and count) images that do not decode "
                      "instead of stopping at the first one.", flag_values=fv)
    flags.DEFINE_bool("overwrite", False, "Replace an existing build of the dataset.",
                      flag_values=fv)
    flags.DEFINE_integer("part_size", 50_000, "unlabeled_folder: images per part (the unit of "
                         "resuming and sharding).", flag_values=fv)
    flags.DEFINE_integer("num_shards", 1, "unlabeled_folder: processes building parts at once.",
                         flag_values=fv)
    flags.DEFINE_integer("shard_index", 0, "unlabeled_folder: this process's index (builds "
                         "parts shard_index, shard_index + num_shards, ...).", flag_values=fv)
    flags.mark_flags_as_required(["dataset", "source"], flag_values=fv)


_ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")
_COLUMNS = ("images", "identities", "cameras", "junk_dropped", "distractors", "corrupt_skipped")
_HEADERS = ("images", "identities", "cameras", "junk dropped", "distractors kept",
            "corrupt skipped")


@contextlib.contextmanager
def source_folder(source: str, data_dir: str) -> Iterator[str]:
    """`source` itself if it is a folder; an archive is unpacked into a temporary folder inside
    data_dir (removed on exit) and its single top folder, if it has one, is yielded."""
    if os.path.isdir(source):
        yield source
        return
    if not os.path.isfile(source):
        raise FileNotFoundError(f"--source={source} does not exist (expected the dataset's folder "
                                f"or its {'/'.join(_ARCHIVE_SUFFIXES)} archive)")
    if not source.lower().endswith(_ARCHIVE_SUFFIXES):
        raise ValueError(f"--source={source}: not a folder and not a "
                         f"{'/'.join(_ARCHIVE_SUFFIXES)} archive")
    os.makedirs(data_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".extract-", dir=data_dir)
    try:
        _extract(source, tmp)
        entries = [e for e in os.listdir(tmp) if e != "__MACOSX"]
        only = os.path.join(tmp, entries[0]) if len(entries) == 1 else tmp
        yield only if os.path.isdir(only) else tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _extract(archive: str, dest: str) -> None:
    try:
        if archive.lower().endswith(".zip"):
            with zipfile.ZipFile(archive) as z:
                for member in z.namelist():  # no member may land outside dest
                    target = os.path.realpath(os.path.join(dest, member))
                    if not target.startswith(os.path.realpath(dest) + os.sep):
                        raise ValueError(f"{archive}: member {member!r} points outside the archive")
                z.extractall(dest)
        else:
            with tarfile.open(archive) as t:
                t.extractall(dest, filter="data")  # refuses links/paths leaving dest
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as e:
        raise ValueError(f"{archive}: cannot unpack the archive ({e})") from e


def format_table(stats: dict[str, dict]) -> str:
    """One row per split, one column per count."""
    rows = [("split",) + _HEADERS] + [(split,) + tuple(f"{s[c]:,}" for c in _COLUMNS)
                                      for split, s in stats.items()]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(v.ljust(w) if i == 0 else v.rjust(w)
                               for i, (v, w) in enumerate(zip(r, widths))) for r in rows)


def published_count_warnings(dataset: str, stats: dict[str, dict]) -> list[str]:
    """A warning per count that differs from the published one (none for custom data)."""
    out = []
    for split, (images, ids) in builders.PUBLISHED_COUNTS.get(dataset, {}).items():
        got = stats.get(split, {})
        for what, want in (("images", images), ("identities", ids)):
            if want is not None and got.get(what) != want:
                out.append(f"WARNING: {dataset} {split}: {got.get(what, 0):,} {what}, published "
                           f"{want:,}. Check that the source is complete and unmodified.")
    return out


def prepare(dataset: str, source: str, data_dir: str, *, csv_path: Optional[str] = None,
            skip_corrupt: bool = False, overwrite: bool = False, part_size: int = 50_000,
            num_shards: int = 1, shard_index: int = 0,
            out: Callable[[str], None] = print) -> dict:
    """Builds `dataset` from `source` into data_dir and reports on it through `out`; returns the
    build's metadata (labelled) or build summary (unlabeled_folder)."""
    final = os.path.join(data_dir, dataset, builders.VERSION)
    if dataset != builders.UnlabeledFolder.name and os.path.exists(final) and not overwrite:
        raise FileExistsError(f"{final} already exists; pass --overwrite to rebuild it")
    with source_folder(source, data_dir) as folder:
        if dataset == builders.UnlabeledFolder.name:
            summary = builders.build_unlabeled(
                folder, data_dir, part_size=part_size, num_shards=num_shards,
                shard_index=shard_index, skip_corrupt=skip_corrupt, log=out)
            state = ("complete" if summary["complete"] else
                     "incomplete: other shards still to build, or rerun to resume")
            out(f"{dataset}: built {summary['built']} of {summary['parts']} parts here; build "
                f"{state}" + (f"; {summary['images']:,} images" if summary["complete"] else ""))
            return summary
        meta = builders.build_labelled(dataset, folder, data_dir, skip_corrupt=skip_corrupt,
                                       csv_path=csv_path, overwrite=overwrite)
    out(f"{dataset} -> {os.path.abspath(final)}")
    out(format_table(meta["stats"]))
    if not meta["has_camera_ids"]:
        out("No camera ids: every image has its own camera id, so evaluation compares each query "
            "with all other images (the query itself excluded); SIE must stay off.")
    for line in published_count_warnings(dataset, meta["stats"]):
        out(line)
    return meta


def run(fv: flags.FlagValues) -> int:
    prepare(fv.dataset, fv.source, fv.data_dir, csv_path=fv.csv, skip_corrupt=fv.skip_corrupt,
            overwrite=fv.overwrite, part_size=fv.part_size, num_shards=fv.num_shards,
            shard_index=fv.shard_index)
    return 0


def main(argv=None) -> int:
    return cli.run_tool("python -m personvit_jax.data.prepare", __doc__, define_flags, run, argv)


if __name__ == "__main__":
    sys.exit(main())
