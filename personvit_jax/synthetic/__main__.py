r"""Writes a synthetic set to a folder (deterministic, atomic, never over another one).

  python -m personvit_jax.synthetic --out=data/my_synthetic [--seed=0 --num_train_ids=450 ...]
  python -m personvit_jax.synthetic --out=data/synthetic_b --seed=1 --style_seed=1
  python -m personvit_jax.synthetic --pool --out=data/synthetic_pool --num_images=20000
  python -m personvit_jax.data.prepare --dataset=unlabeled_folder --source=data/synthetic_pool

Labelled set (default): Market-1501 layout and names, the arguments of `write.market_args`.
Training with data.name=synthetic generates and builds its set by itself; this command is for
looking at one, or for handing the folder to other tools. --pool: the unlabeled pool of new
people in many scenes, the arguments of `write.pool_args`. --style_seed: the cameras and scenes
of another style domain. Defaults are those functions' defaults (--help lists them).
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
import time
from typing import Optional, Sequence

from personvit_jax.synthetic.plan import SPLITS
from personvit_jax.synthetic.write import (generate_pool, generate_synthetic_market, market_args,
                                           pool_args, read_manifest)

_PAIRS = ("images_per_id", "cameras_per_id")  # (lo, hi) arguments


def _defaults(fn) -> dict:
    return {k: p.default for k, p in inspect.signature(fn).parameters.items()}


def _parser() -> argparse.ArgumentParser:
    market, pool = _defaults(market_args), _defaults(pool_args)
    p = argparse.ArgumentParser(
        prog="python -m personvit_jax.synthetic", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="root directory to create")
    p.add_argument("--pool", action="store_true", help="write the unlabeled pool instead")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="rendering processes (the output does not depend on it)")
    for name in sorted(set(market) | set(pool)):
        where = ("both" if name in market and name in pool else
                 "labelled set" if name in market else "--pool")
        shown = {k: d[name] for k, d in (("set", market), ("pool", pool)) if name in d}
        help_text = f"{where}; default " + ", ".join(f"{k} {v}" for k, v in shown.items())
        if name in _PAIRS:
            p.add_argument(f"--{name}", type=int, nargs=2, metavar=("LO", "HI"), help=help_text)
        else:
            p.add_argument(f"--{name}", type=int, help=help_text)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m personvit_jax.synthetic [--pool] --out=DIR [...]``; returns the exit code."""
    parser = _parser()
    ns = parser.parse_args(argv)
    accepted = _defaults(pool_args if ns.pool else market_args)
    given = {k: v for k, v in vars(ns).items()
             if v is not None and k not in ("out", "pool", "workers")}
    wrong = sorted(set(given) - set(accepted))
    if wrong:
        parser.error(f"{', '.join('--' + w for w in wrong)}: not an argument of the "
                     f"{'pool' if ns.pool else 'labelled set (add --pool?)'}")
    generate = generate_pool if ns.pool else generate_synthetic_market
    start = time.perf_counter()
    try:
        root = generate(ns.out, num_workers=ns.workers, log=print, **given)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - start
    counts = (read_manifest(root) or {}).get("counts", {})
    print(f"{root} ({seconds:.1f} s)")
    if ns.pool:
        print("  " + " ".join(f"{k}={v}" for k, v in sorted(counts.items())))
        print(f"  build it: python -m personvit_jax.data.prepare --dataset=unlabeled_folder "
              f"--source={root}")
    for split in () if ns.pool else SPLITS:
        c = counts.get(split, {})
        print(f"  {split:<20} images={c.get('images')} ids={c.get('ids')} "
              f"distractors={c.get('distractors')} junk={c.get('junk')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
