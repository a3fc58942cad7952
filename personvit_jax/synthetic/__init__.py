"""Procedural, seeded stand-in for Market-1501 (labelled set) and LUPerson (unlabeled pool).

Why this exists
---------------
Real re-identification data cannot be downloaded on the machines this project runs on, yet the
training / evaluation code must be exercised on something that *is* a re-identification
problem. This package draws simple people with numpy + ``PIL.ImageDraw`` and writes them as
JPEGs: the labelled set in the exact Market-1501 folder layout and file naming, built and read
through the same TFDS path as market1501 (``build.py``); the unlabeled pool as a folder tree of
new people in many scenes for ``data.prepare --dataset=unlabeled_folder``.

The flow, one module per step::

    streams.py   seeded random streams (one per person, camera, layout, image)
    people.py    identity: a person's attributes, and drawing them in a pose
    scenes.py    nuisance per camera: colour / optics style and scene panorama; style domains
    render.py    one image: background window, person, bystanders, occluders, camera optics
    plan.py      which images a set holds, their folders and names (labelled set, pool)
    write.py     checked arguments -> rendered folder + manifest.json, atomically
    build.py     the labelled set under data_dir -> its TFDS build (data.name=synthetic)
    __main__.py  ``python -m personvit_jax.synthetic [--pool] --out=DIR``

Identity versus nuisance
------------------------
What identifies a person (``people.py``) is fixed per person id; everything else varies per
camera (``scenes.py``) or per image (``render.py``). A model can only learn re-identification
if identity survives every nuisance, and a trivial baseline must fail because nuisance dominates
raw colour statistics.

Calibration (default arguments, Market-1501 protocol, 363 queries)
-----------------------------------------------------------------
Features without learning: whole-crop 8x8x8 RGB histogram (L2-normalised, Euclidean) mAP 0.022;
the same per 6 horizontal stripes 0.037; raw 32x16 pixels 0.059; HSV stripe histograms 0.086.
Same-camera background and colour cast dominate such features, as in real footage. Learned: a
linear discriminant fitted on ``bounding_box_train`` over the HSV stripe histograms reaches
0.66, and the CPU-sized ViT fine-tune (``configs/finetune.py:synthetic``) learns it from scratch
(numbers in the README). Version 1 used stronger colour nuisance (0.7): there the ViT was
data-starved and reached only ~0.1 in the CPU budget, while a small CNN reached 0.5.

Determinism and safety
----------------------
Every draw comes from its own stream (``streams.py``), so the output does not depend on
iteration order or worker count and the same arguments always give byte-identical files (PIL's
JPEG encoder is deterministic). A set appears at its root only once complete, and an existing
root is returned untouched when its manifest matches and is never overwritten or deleted
otherwise (``write.py``).
"""

from personvit_jax.synthetic.people import PersonAttributes, person_attributes
from personvit_jax.synthetic.plan import POOL_PERSON_BASE, SPLITS
from personvit_jax.synthetic.scenes import CameraStyle, camera_style, domain_shift
from personvit_jax.synthetic.write import (FORMAT_NAME, FORMAT_VERSION, MANIFEST, POOL_FORMAT_NAME,
                                           POOL_FORMAT_VERSION, generate_pool,
                                           generate_synthetic_market, market_args, pool_args,
                                           read_manifest)

__all__ = [
    "FORMAT_NAME", "FORMAT_VERSION", "MANIFEST", "POOL_FORMAT_NAME", "POOL_FORMAT_VERSION",
    "POOL_PERSON_BASE", "SPLITS", "CameraStyle", "PersonAttributes", "camera_style",
    "domain_shift", "generate_pool", "generate_synthetic_market", "market_args", "person_attributes",
    "pool_args", "read_manifest",
]
