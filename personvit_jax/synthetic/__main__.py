r"""Writes the synthetic set to a folder (deterministic, atomic, never over another one).

  python -m personvit_jax.synthetic --out=data/my_synthetic [--seed=0 --num_train_ids=450 ...]
  python -m personvit_jax.synthetic --out=data/synthetic_b --seed=1 --style_seed=1

Market-1501 layout and names, the arguments of `write.market_args` (its defaults; --help lists
them). Training with data.name=synthetic generates and builds its set by itself; this command is
for looking at one, or for handing the folder to other tools. --style_seed: the cameras and
scenes of another style domain (default: the set's own).
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
import time
from typing import Optional, Sequence

from personvit_jax.synthetic.plan import SPLITS
from personvit_jax.synthetic.write import generate_synthetic_market, market_args, read_manifest


def _defaults(fn) -> dict:
    return {k: p.default for k, p in inspect.signature(fn).parameters.items()}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m personvit_jax.synthetic --out=DIR [...]``; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m personvit_jax.synthetic", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="root directory to create")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="rendering processes (the output does not depend on it)")
    # Defaults come from market_args's signature: one place for them.
    defaults = {k: p.default for k, p in inspect.signature(market_args).parameters.items()}
    for name, default in defaults.items():
        if name == "images_per_id":
            parser.add_argument(f"--{name}", type=int, nargs=2, default=default,
                                metavar=("LO", "HI"), help=f"default {default}")
        else:
            parser.add_argument(f"--{name}", type=int, default=default, help=f"default {default}")
    ns = parser.parse_args(argv)
    given = {k: v for k, v in vars(ns).items() if k not in ("out", "workers")}
    start = time.perf_counter()
    try:
        root = generate_synthetic_market(ns.out, num_workers=ns.workers, log=print, **given)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    counts = (read_manifest(root) or {}).get("counts", {})
    print(f"{root} ({time.perf_counter() - start:.1f} s)")
    for split in SPLITS:
        c = counts.get(split, {})
        print(f"  {split:<20} images={c.get('images')} ids={c.get('ids')} "
              f"distractors={c.get('distractors')} junk={c.get('junk')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
