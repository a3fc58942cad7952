"""Seeded random streams: every draw of the generator comes from one of these.

A stream is keyed by ``(salt, seed, tag, ids...)``: the person, the camera, the layout of an
identity and each image have their own, so the output does not depend on the order in which
images are drawn (or on how they are spread over worker processes), and the same arguments always
give the same pixels.

Keys are numpy ``SeedSequence`` entropy, which zero-pads keys shorter than four words (salt and
seed included): ``(seed, 3)`` and ``(seed, 3, 0)`` are the SAME stream. Every tag below is
non-zero, and no two keys in use differ only by trailing zeros.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

# The salt keeps our streams apart from any other use of the same user seed.
_SALT = 0x5EED_1501
TAG_PERSON = 1  # (seed, TAG_PERSON, pid): a person's attributes
TAG_CAMERA = 2  # (seed, TAG_CAMERA, cam): a camera's style; (..., cam, 1) its panorama
TAG_CAMERA_SET = 3  # (seed, TAG_CAMERA_SET): which scene type each camera shows
TAG_LAYOUT = 4  # (seed, TAG_LAYOUT, pid): an identity's cameras, image counts and names
TAG_IMAGE = 5  # (seed, TAG_IMAGE, pid, cam, j): one image of a person
TAG_TRACK = 6  # (seed, TAG_TRACK, pid, cam): the walking direction of a person in a camera
TAG_DISTRACTOR = 7  # (seed, TAG_DISTRACTOR, i, 0): name; (..., i, 1): image
TAG_JUNK = 8  # (seed, TAG_JUNK, i, 0): name; (..., i, 1): image
# (style_seed, TAG_DOMAIN): a domain's shared shift; (style_seed, TAG_DOMAIN, TAG_CAMERA, ...)
# etc.: its cameras and scenes, the same families as above moved into the domain's own space.
TAG_DOMAIN = 9
TAG_POOL_LAYOUT = 10  # (seed, TAG_POOL_LAYOUT, j): pool person j's cameras and image counts


def stream(seed: int, *keys: int) -> np.random.Generator:
    """Independent generator for one (seed, stream tag, ids...) key."""
    return np.random.default_rng([_SALT, seed, *keys])


def choice(rng: np.random.Generator, options: Sequence[tuple[object, float]]):
    """Weighted choice from ``(value, weight)`` pairs."""
    weights = np.array([w for _, w in options], dtype=np.float64)
    index = rng.choice(len(options), p=weights / weights.sum())
    return options[int(index)][0]
