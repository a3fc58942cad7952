"""Writing a set: checked arguments -> plan -> rendered JPEGs in a folder tree + manifest.json.

Both kinds of set are written the same way: into a staging folder that is renamed into place
only when complete (`builders.build_atomically`, the helper the TFDS builds use), so an
interrupted run never leaves a half-written root. ``root/manifest.json`` records the format, its
version and every generator argument; an existing root is returned untouched when its manifest
matches the request and is never overwritten or deleted otherwise (the error names the folder
and both argument sets).

Images are rendered camera by camera (one panorama in memory at a time), in ``num_workers``
processes if asked; every image has its own random stream, so the bytes do not depend on the
order or the number of workers.
"""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import os
import time
from typing import Callable, Optional, Sequence

from personvit_jax.data import builders
from personvit_jax.synthetic.render import Renderer, check_sanity, render_spec
from personvit_jax.synthetic.plan import SPLITS, ImageSpec, plan_market, plan_pool

FORMAT_NAME = "personvit_jax.synthetic_market"
# Bump whenever the rendered bytes change for the same arguments, so an old
# set on disk is reported as different instead of silently reused.
FORMAT_VERSION = 2
POOL_FORMAT_NAME = "personvit_jax.synthetic_pool"
POOL_FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_JPEG_QUALITY = 90


# ---------------------------------------------------------------------------------------------
# Arguments: the defaults live in these signatures (the CLI reads them from here)
# ---------------------------------------------------------------------------------------------


def market_args(seed: int = 0, num_train_ids: int = 450, num_test_ids: int = 150,
                num_cameras: int = 6, images_per_id: Sequence[int] = (4, 8),
                num_distractors: int = 300, num_junk: int = 100, height: int = 128,
                width: int = 64, style_seed: Optional[int] = None,
                sanity=False) -> dict:
    """The labelled set's complete, checked generator arguments, as its manifest stores them.

    ``style_seed``: None = the original camera domain (drawn from ``seed``); an int = the
    cameras and scenes of that style domain (scenes.py). ``sanity``: the same plan rendered
    without nuisance (render.Renderer: plain background, ideal cameras, people differing only
    by garments), True / 'all' for all of it, or some parts of render.NUISANCE (e.g.
    'background,camera'). Each is stored only when set, so the manifests (and build names) of
    sets made before it existed stay as they were.
    """
    args = {
        "seed": seed,
        "num_train_ids": int(num_train_ids),
        "num_test_ids": int(num_test_ids),
        "num_cameras": int(num_cameras),
        "images_per_id": [int(images_per_id[0]), int(images_per_id[1])],
        "num_distractors": int(num_distractors),
        "num_junk": int(num_junk),
        "height": int(height),
        "width": int(width),
    }
    if style_seed is not None:
        args["style_seed"] = style_seed
    if sanity:
        args["sanity"] = sanity
    _check_common(args)
    if not 2 <= args["num_cameras"] <= 9:
        raise ValueError(f"num_cameras={num_cameras!r}: must be in 2..9 (Market names have one "
                         "camera digit)")
    if args["num_train_ids"] < 0 or args["num_test_ids"] < 0:
        raise ValueError(f"num_train_ids={num_train_ids!r}, num_test_ids={num_test_ids!r}: "
                         "must be >= 0")
    if args["num_train_ids"] + args["num_test_ids"] > 9999:
        raise ValueError(f"num_train_ids + num_test_ids = "
                         f"{args['num_train_ids'] + args['num_test_ids']}: at most 9999 ids fit "
                         "the 4-digit Market person id")
    lo, hi = args["images_per_id"]
    if not 4 <= lo <= hi:
        raise ValueError(f"images_per_id={tuple(images_per_id)!r}: must be (lo, hi) with "
                         "4 <= lo <= hi (two cameras x two images)")
    for key in ("num_distractors", "num_junk"):  # their people own blocks of 500,000 ids
        if not 0 <= args[key] < 500_000:
            raise ValueError(f"{key}={args[key]!r}: must be in 0..499999")
    return args


def pool_args(seed: int = 0, num_images: int = 20_000, num_cameras: int = 300,
              images_per_id: Sequence[int] = (1, 6), cameras_per_id: Sequence[int] = (1, 3),
              height: int = 128, width: int = 64, style_seed: Optional[int] = None,
              sanity=False) -> dict:
    """The unlabeled pool's complete, checked generator arguments: ``num_images`` images of new
    people (none of any labelled set's, plan.py), each person with ``images_per_id`` images
    (uniform, inclusive) seen by ``cameras_per_id`` of ``num_cameras`` cameras (each its own
    scene and colour style, none of them a labelled set's camera). ``style_seed`` and
    ``sanity`` as for the labelled set."""
    args = {
        "seed": seed,
        "num_images": int(num_images),
        "num_cameras": int(num_cameras),
        "images_per_id": [int(images_per_id[0]), int(images_per_id[1])],
        "cameras_per_id": [int(cameras_per_id[0]), int(cameras_per_id[1])],
        "height": int(height),
        "width": int(width),
    }
    if style_seed is not None:
        args["style_seed"] = style_seed
    if sanity:
        args["sanity"] = sanity
    _check_common(args)
    if not 1 <= args["num_images"] <= 5_000_000:
        raise ValueError(f"num_images={num_images!r}: must be in 1..5000000")
    if not 1 <= args["num_cameras"] <= 8999:
        raise ValueError(f"num_cameras={num_cameras!r}: must be in 1..8999")
    lo, hi = args["images_per_id"]
    if not 1 <= lo <= hi <= 99:
        raise ValueError(f"images_per_id={tuple(args['images_per_id'])!r}: must be (lo, hi) "
                         "with 1 <= lo <= hi <= 99")
    lo, hi = args["cameras_per_id"]  # more than a person's images or the bank: capped
    if not 1 <= lo <= min(hi, args["num_cameras"]):
        raise ValueError(f"cameras_per_id={tuple(args['cameras_per_id'])!r}: must be (lo, hi) "
                         f"with 1 <= lo <= hi and lo <= num_cameras ({args['num_cameras']})")
    return args


def _check_common(args: dict) -> None:
    for key in ("seed", "style_seed"):
        value = args.get(key, 0)
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"{key} must be a non-negative int, got {value!r}")
    if "sanity" in args:
        args["sanity"] = check_sanity(args["sanity"])
        if args["sanity"] is False:
            del args["sanity"]
    if args["height"] < 16 or args["width"] < 8:
        raise ValueError(f"height={args['height']}, width={args['width']}: height must be >= 16 "
                         "and width >= 8")


# ---------------------------------------------------------------------------------------------
# The two kinds of set
# ---------------------------------------------------------------------------------------------


def generate_synthetic_market(root: str, *, num_workers: int = 1,
                              log: Callable[[str], None] = lambda _: None,
                              **generator_args) -> str:
    """Writes the labelled set (Market-1501 layout, plan.py) to `root` if absent; returns root.

    `generator_args`: those of `market_args` (defaults there). Train ids are
    ``1..num_train_ids``, test ids follow. Each id has ``images_per_id`` images (uniform,
    inclusive) over >= 2 cameras with >= 2 images per camera; for test ids one image per camera
    goes to ``query`` and the rest to ``bounding_box_test``, together with ``num_distractors``
    (pid ``0000``) and ``num_junk`` (pid ``-1``) images.

    Deterministic: the same arguments give byte-identical files, whatever `num_workers`. An
    existing `root` with a matching manifest is returned untouched; a missing or different
    manifest raises ValueError naming the path and the differing arguments.
    """
    args = market_args(**generator_args)
    num_ids = args["num_train_ids"] + args["num_test_ids"]
    return _write_set(os.fspath(root), FORMAT_NAME, FORMAT_VERSION, args, plan_market,
                      _market_counts, num_ids, num_workers, log)


def generate_pool(root: str, *, num_workers: int = 1, log: Callable[[str], None] = lambda _: None,
                  **generator_args) -> str:
    """Writes the unlabeled pool (plan.py: ``<root>/<folder>/<pid>_c<camera>_<k>.jpg``) to
    `root` if absent; returns root. `generator_args`: those of `pool_args`. Same guarantees
    as `generate_synthetic_market`. Build it for pretraining with
    ``python -m personvit_jax.data.prepare --dataset=unlabeled_folder --source=ROOT``."""
    args = pool_args(**generator_args)
    return _write_set(os.fspath(root), POOL_FORMAT_NAME, POOL_FORMAT_VERSION, args, plan_pool,
                      _pool_counts, 0, num_workers, log)


def _market_counts(specs: list[ImageSpec]) -> dict:
    counts = {}
    for split in SPLITS:
        items = [s for s in specs if s.folder == split]
        counts[split] = {
            "images": len(items),
            "ids": len({s.pid for s in items if s.pid > 0}),
            "distractors": sum(s.pid == 0 for s in items),
            "junk": sum(s.pid < 0 for s in items),
        }
    return counts


def _pool_counts(specs: list[ImageSpec]) -> dict:
    return {"images": len(specs), "ids": len({s.pid for s in specs}),
            "cameras": len({s.cam for s in specs}), "folders": len({s.folder for s in specs})}


def read_manifest(root: str) -> Optional[dict]:
    """root/manifest.json as a dict, None if missing or unreadable."""
    try:
        with open(os.path.join(root, MANIFEST), encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


# ---------------------------------------------------------------------------------------------
# Writing atomically, never over something else
# ---------------------------------------------------------------------------------------------


def _write_set(root: str, format_name: str, version: int, args: dict,
               plan: Callable[[dict], list[ImageSpec]], count: Callable[[list[ImageSpec]], dict],
               num_ids: int, num_workers: int, log: Callable[[str], None]) -> str:
    """Writes the set `plan(args)` to root atomically (or checks the one there); `num_ids`: the
    labelled identities junk boxes may show."""
    head = {"format": format_name, "version": version}
    if os.path.lexists(root):
        _check_existing(root, head, args)
        return root

    def write(staging: str) -> str:
        out = os.path.join(staging, "set")
        specs = plan(args)
        for folder in sorted({s.folder for s in specs}):
            os.makedirs(os.path.join(out, folder))
        render_args = (args["seed"], args["height"], args["width"], args.get("style_seed"),
                       num_ids, args.get("sanity", False))
        _render_all(out, specs, render_args, num_workers, log)
        manifest = {**head, "args": args, "counts": count(specs)}
        with open(os.path.join(out, MANIFEST), "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2, sort_keys=True)
            f.write("\n")
        return out

    try:
        builders.build_atomically(root, write)
    except FileExistsError:
        # Someone else created root meanwhile (e.g. a concurrent run): keep theirs if it is
        # the same set, otherwise report it.
        _check_existing(root, head, args)
    return root


def _check_existing(root: str, head: dict, args: dict) -> None:
    """Accept an existing ``root`` only if it was written with these arguments."""
    manifest = read_manifest(root) if os.path.isdir(root) else None
    if manifest is None:
        raise ValueError(f"{root!r} exists but has no readable {MANIFEST} from this generator; "
                         "refusing to touch it (choose another path or remove it yourself)")
    expected = {**head, **args}
    found = {"format": manifest.get("format"), "version": manifest.get("version"),
             **manifest.get("args", {})}
    keys = sorted(set(expected) | set(found))
    diffs = [f"{k}: existing={found.get(k)!r}, requested={expected.get(k)!r}"
             for k in keys if found.get(k) != expected.get(k)]
    if diffs:
        raise ValueError(f"{root!r} holds a synthetic set built with different arguments "
                         f"({'; '.join(diffs)}); refusing to overwrite it. Existing: {found}; "
                         f"requested: {expected}")


# ---------------------------------------------------------------------------------------------
# Rendering, camera by camera
# ---------------------------------------------------------------------------------------------


def _render_all(out: str, specs: list[ImageSpec], render_args: tuple, num_workers: int,
                log: Callable[[str], None]) -> None:
    """Renders every spec into out/<folder>/<name>. One task per camera: its panorama is drawn
    once and dropped after its images. Workers are spawned, not forked: this may run inside a
    JAX process, whose threads a fork would copy in an unknown state."""
    by_cam: dict[int, list[ImageSpec]] = {}
    for spec in specs:
        by_cam.setdefault(spec.cam, []).append(spec)
    tasks = [(out, render_args, group) for _, group in sorted(by_cam.items())]
    start, done, last = time.perf_counter(), 0, 0.0
    if num_workers > 1:
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(num_workers, mp_context=ctx) as pool:
            counts: Sequence[int] = pool.map(_render_group, tasks)
            for n in counts:
                done, last = _progress(done + n, len(specs), start, last, log)
    else:
        for task in tasks:
            done, last = _progress(done + _render_group(task), len(specs), start, last, log)


def _render_group(task: tuple) -> int:
    """Renders one camera's images (worker entry point); returns how many."""
    out, (seed, height, width, style_seed, num_ids, sanity), specs = task
    renderer = Renderer(seed, height, width, style_seed, sanity)
    for spec in specs:
        image = render_spec(renderer, spec, num_ids)
        image.save(os.path.join(out, spec.folder, spec.name), "JPEG", quality=_JPEG_QUALITY)
    return len(specs)


def _progress(done: int, total: int, start: float, last: float,
              log: Callable[[str], None]) -> tuple[int, float]:
    """Logs `done / total` at most every 10 s (and at the end); returns (done, last log time)."""
    now = time.perf_counter()
    if now - last >= 10 or done == total:
        rate = done / max(now - start, 1e-9)
        log(f"rendered {done}/{total} images ({rate:.0f} img/s)")
        return done, now
    return done, last
