"""The labelled synthetic set as a TFDS build, read like any real dataset.

``data.name=synthetic`` (``datasets.load_splits``) comes here: the set of the config's generator
arguments (``data.synthetic``) is generated and built on first use into::

    <data_dir>/synthetic_market1501/<name>/    the Market-1501 folder + manifest.json (write.py)
    <data_dir>/synthetic/<name>/1.0.0/         its ArrayRecord build (data/builders.py Synthetic)

each step atomic and never over an existing folder, and then read by
``builders.load_record_splits`` exactly as market1501 is.

``<name>`` = ``s<seed>-<first 10 hex digits of the SHA-256 of the format, its version and every
argument, defaults included>``. Why a name per argument set rather than one folder that refuses
other arguments: a different ``data.synthetic`` can never reuse another set's build (its name
differs), yet nothing has to be moved away to switch: several sets (seeds, style domains for
domain adaptation, the tests' tiny sets) live side by side in one data_dir. A folder or build
under a name whose manifest disagrees with the request (copied by hand, say) is refused with
both argument sets.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from typing import Optional

from absl import logging

from personvit_jax.data import builders, layouts
from personvit_jax.synthetic.write import (FORMAT_NAME, FORMAT_VERSION, generate_synthetic_market,
                                           market_args)


def build_name(args: dict) -> str:
    """Name of the folder and TFDS config of the complete arguments `args` (market_args)."""
    identity = json.dumps({"format": FORMAT_NAME, "version": FORMAT_VERSION, "args": args},
                          sort_keys=True)
    return f"s{args['seed']}-{hashlib.sha256(identity.encode()).hexdigest()[:10]}"


def resolve_args(synthetic_kwargs: Optional[dict]) -> dict:
    """config.data.synthetic -> complete, checked generator arguments (errors name the key)."""
    kwargs = dict(synthetic_kwargs or {})
    valid = set(inspect.signature(market_args).parameters)
    unknown = sorted(set(kwargs) - valid)
    if unknown:
        raise ValueError(f"config.data.synthetic: unknown generator argument(s) {unknown}; "
                         f"expected some of {sorted(valid)}")
    try:
        return market_args(**kwargs)
    except ValueError as e:
        raise ValueError(f"config.data.synthetic: {e}") from e


def prepare(data_dir: str, synthetic_kwargs: Optional[dict] = None) -> str:
    """Generates and builds (where absent) the labelled set of `synthetic_kwargs` under
    `data_dir`; returns its config name for ``builders.load_record_splits('synthetic', ...)``."""
    args = resolve_args(synthetic_kwargs)
    name = build_name(args)
    root = os.path.join(layouts.dataset_root("synthetic", data_dir), name)
    if not os.path.isdir(root):
        logging.info("generating the synthetic set %s into %s", args, root)
    generate_synthetic_market(root, **args)  # returns at once if it is there (and matches)
    final = os.path.join(data_dir, builders.Synthetic.name, name, builders.VERSION)
    if not os.path.isfile(os.path.join(final, "dataset_info.json")):
        logging.info("building %s from %s", final, root)
        try:
            builders.build_synthetic(root, data_dir, name)
        except FileExistsError:
            if not os.path.isdir(final):
                raise  # not another process's build: report it
    _check_build(final, builders.built_metadata(builders.Synthetic.name, data_dir, name), args)
    return name


def _check_build(final: str, metadata: Optional[dict], args: dict) -> None:
    """The build under this name must have been made from a set of exactly these arguments."""
    manifest = (metadata or {}).get("synthetic") or {}
    found = {"format": manifest.get("format"), "version": manifest.get("version"),
             "args": manifest.get("args")}
    expected = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "args": args}
    if found != expected:
        raise ValueError(f"{final} is not the build of the requested synthetic set: it was made "
                         f"from {found}, the request is {expected}. Move it away (it is rebuilt "
                         "from the generated folder) or point data.data_dir elsewhere")
