"""Planning: which images a set holds, their folders, file names and random streams (no drawing).

Labelled set (Market-1501 layout and naming)::

    bounding_box_train/0002_c1s1_000451_03.jpg     train ids 1..num_train_ids
    query/..., bounding_box_test/...                test ids after them; the gallery also holds
                                                    0000_* distractors and -1_* junk

``PPPP_cCsS_FFFFFF_NN.jpg``: person id (4 digits, ``-1`` junk, ``0000`` distractor), camera,
sequence (1-6), frame (6 digits), box index within the frame.

Unlabeled pool (a small LUPerson: new people, many scenes)::

    0000/2000000_c1042_00.jpg       <pool person j // 1000>/<pid>_c<camera>_<k>.jpg
    0000/2000000_c1042_01.jpg       pid = POOL_PERSON_BASE + j, camera = POOL_CAMERA_BASE + c

Person ids live in disjoint blocks, so no two roles ever share a person (a person is
``person_attributes(pid, seed)``): 1..9999 the labelled identities, DISTRACTOR_PERSON_BASE + i the
people on distractor images, JUNK_PERSON_BASE + i the strangers on junk images, POOL_PERSON_BASE + j
the pool's people. Cameras too: 1..9 the labelled set's, POOL_CAMERA_BASE + c the pool's scenes.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from personvit_jax.data.layouts import MARKET_SUBDIRS
from personvit_jax.synthetic.streams import (TAG_DISTRACTOR, TAG_IMAGE, TAG_JUNK, TAG_LAYOUT,
                                             TAG_POOL_LAYOUT, stream)

SPLITS = tuple(MARKET_SUBDIRS.values())  # bounding_box_train, query, bounding_box_test
DISTRACTOR_PERSON_BASE = 1_000_000  # far above any labelled id (at most 9999)
JUNK_PERSON_BASE = 1_500_000  # so at most 500,000 distractors
POOL_PERSON_BASE = 2_000_000  # so at most 500,000 junk images
POOL_CAMERA_BASE = 1000  # far above any labelled camera (at most 9)
_POOL_IDS_PER_FOLDER = 1000


@dataclasses.dataclass(frozen=True)
class ImageSpec:
    """One planned image: written to <root>/<folder>/<name>, drawn from stream ``key``."""

    folder: str
    name: str
    pid: int  # -1 junk, 0 distractor, else the person id
    cam: int
    kind: str  # "person", "distractor", "junk"
    key: tuple[int, ...]  # random stream of this image


def market_name(pid: int, cam: int, seq: int, frame: int, box: int) -> str:
    """``PPPP_cCsS_FFFFFF_NN.jpg``, e.g. (2, 1, 1, 451, 3) -> 0002_c1s1_000451_03.jpg."""
    pid_str = "-1" if pid < 0 else f"{pid:04d}"
    return f"{pid_str}_c{cam}s{seq}_{frame:06d}_{box:02d}.jpg"


def _plan_identity(seed: int, pid: int, test: bool, num_cameras: int,
                   images_per_id: tuple[int, int]) -> list[ImageSpec]:
    """Images of one id: >= 2 cameras, >= 2 images per camera (so every query
    keeps a cross-camera match in the gallery), one tracklet per camera."""
    rng = stream(seed, TAG_LAYOUT, pid)
    n = int(rng.integers(images_per_id[0], images_per_id[1] + 1))
    max_cams = min(num_cameras, n // 2)
    k = int(rng.integers(2, max_cams + 1))
    cams = sorted(int(c) + 1 for c in rng.choice(num_cameras, size=k, replace=False))
    counts = np.full(k, 2) + rng.multinomial(n - 2 * k, np.full(k, 1.0 / k))
    specs = []
    for cam, count in zip(cams, counts):
        seq = int(rng.integers(1, 7))
        step = int(rng.integers(5, 60))
        start = int(rng.integers(0, 999_999 - step * int(count)))
        query_index = int(rng.integers(0, count)) if test else -1
        for j in range(int(count)):
            box = int(rng.choice([1, 1, 1, 2, 3, 4]))
            name = market_name(pid, cam, seq, start + step * j, box)
            if test:
                split = "query" if j == query_index else "bounding_box_test"
            else:
                split = "bounding_box_train"
            specs.append(ImageSpec(split, name, pid, cam, "person", (TAG_IMAGE, pid, cam, j)))
    return specs


def _plan_extras(seed: int, tag: int, count: int, pid: int, num_cameras: int,
                 used: set[str]) -> list[ImageSpec]:
    """Distractors (pid 0) or junk (pid -1); names bumped until unique."""
    specs = []
    kind = "distractor" if pid == 0 else "junk"
    for i in range(count):
        rng = stream(seed, tag, i, 0)
        cam = int(rng.integers(1, num_cameras + 1))
        seq, frame = int(rng.integers(1, 7)), int(rng.integers(0, 1_000_000))
        box = int(rng.integers(1, 6))
        name = market_name(pid, cam, seq, frame, box)
        while name in used:  # deterministic: plan order is fixed
            box = box % 99 + 1
            frame = (frame + (1 if box == 1 else 0)) % 1_000_000
            name = market_name(pid, cam, seq, frame, box)
        used.add(name)
        specs.append(ImageSpec("bounding_box_test", name, pid, cam, kind, (tag, i, 1)))
    return specs


def plan_market(args: dict) -> list[ImageSpec]:
    """Every image of the labelled set of generator arguments ``args``: the identities in id
    order, then distractors, then junk."""
    seed, ntr, nte, cams = (args["seed"], args["num_train_ids"], args["num_test_ids"],
                            args["num_cameras"])
    specs: list[ImageSpec] = []
    for pid in range(1, ntr + nte + 1):
        specs += _plan_identity(seed, pid, pid > ntr, cams, tuple(args["images_per_id"]))
    used = {s.name for s in specs}
    specs += _plan_extras(seed, TAG_DISTRACTOR, args["num_distractors"], 0, cams, used)
    specs += _plan_extras(seed, TAG_JUNK, args["num_junk"], -1, cams, used)
    return specs


def _plan_pool_person(seed: int, j: int, num_cameras: int, images_per_id: tuple[int, int],
                      cameras_per_id: tuple[int, int]) -> list[ImageSpec]:
    """Images of pool person j: n of them over k cameras of the pool's bank (k <= n, one
    tracklet and at least one image per camera), like a person crossing a few videos."""
    rng = stream(seed, TAG_POOL_LAYOUT, j)
    n = int(rng.integers(images_per_id[0], images_per_id[1] + 1))
    k_max = min(cameras_per_id[1], n, num_cameras)
    k = int(rng.integers(min(cameras_per_id[0], k_max), k_max + 1))
    cams = sorted(POOL_CAMERA_BASE + 1 + int(c)
                  for c in rng.choice(num_cameras, size=k, replace=False))
    counts = 1 + rng.multinomial(n - k, np.full(k, 1.0 / k))
    pid, folder = POOL_PERSON_BASE + j, f"{j // _POOL_IDS_PER_FOLDER:04d}"
    return [ImageSpec(folder, f"{pid:07d}_c{cam:04d}_{t:02d}.jpg", pid, cam, "person",
                      (TAG_IMAGE, pid, cam, t))
            for cam, count in zip(cams, counts) for t in range(int(count))]


def plan_pool(args: dict) -> list[ImageSpec]:
    """Exactly ``num_images`` pool images: people 0, 1, ... in order, the last one cut short."""
    specs: list[ImageSpec] = []
    j = 0
    while len(specs) < args["num_images"]:
        specs += _plan_pool_person(args["seed"], j, args["num_cameras"],
                                   tuple(args["images_per_id"]), tuple(args["cameras_per_id"]))
        j += 1
    return specs[:args["num_images"]]

