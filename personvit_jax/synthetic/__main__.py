r"""Writes a synthetic set to a folder (deterministic, atomic, never over another one).

  python -m personvit_jax.synthetic --out=data/my_synthetic [--seed=0 --num_train_ids=450 ...]
  python -m personvit_jax.synthetic --out=data/synthetic_b --seed=1 --style_seed=1
  python -m personvit_jax.synthetic --pool --out=data/synthetic_pool --num_images=20000
  python -m personvit_jax.data.prepare --dataset=unlabeled_folder --source=data/synthetic_pool

Labelled set (default): Market-1501 layout and names, the arguments of `write.market_args`.
Training with data.name=synthetic generates and builds its set by itself; this command is for
looking at one, or for handing the folder to other tools. --pool: the unlabeled pool of new
people in many scenes, the arguments of `write.pool_args`. --style_seed: the cameras and scenes
of another style domain. --sanity: the same people without nuisance (plain background, ideal
cameras, only garments differ). Defaults are those functions' defaults (--help lists them).
"""

from __future__ import annotations

import inspect
import os
import sys
import time
from typing import Optional, Sequence

from absl import flags

from personvit_jax import cli
from personvit_jax.synthetic.plan import SPLITS
from personvit_jax.synthetic.write import (generate_pool, generate_synthetic_market, market_args,
                                           pool_args, read_manifest)

PROG = "python -m personvit_jax.synthetic"
_PAIRS = ("images_per_id", "cameras_per_id")  # (lo, hi) arguments: --images_per_id=4,8
_OWN = ("out", "pool", "workers", "help")


def _defaults(fn) -> dict:
    return {k: p.default for k, p in inspect.signature(fn).parameters.items()}


def define_flags(fv: flags.FlagValues) -> None:
    market, pool = _defaults(market_args), _defaults(pool_args)
    flags.DEFINE_string("out", None, "root directory to create", flag_values=fv)
    flags.DEFINE_boolean("pool", False, "write the unlabeled pool instead", flag_values=fv)
    flags.DEFINE_integer("workers", os.cpu_count() or 1, "rendering processes (the output does "
                         "not depend on it)", flag_values=fv)
    for name in sorted(set(market) | set(pool)):
        where = ("both" if name in market and name in pool else
                 "labelled set" if name in market else "--pool")
        shown = {k: d[name] for k, d in (("set", market), ("pool", pool)) if name in d}
        help_text = f"{where}; default " + ", ".join(f"{k} {v}" for k, v in shown.items())
        if name in _PAIRS:
            flags.DEFINE_list(name, None, help_text + " (LO,HI)", flag_values=fv)
        elif isinstance(shown.get("set", shown.get("pool")), bool):
            flags.DEFINE_boolean(name, None, help_text, flag_values=fv)
        else:
            flags.DEFINE_integer(name, None, help_text, flag_values=fv)
    flags.mark_flag_as_required("out", flag_values=fv)


def _given(fv: flags.FlagValues) -> dict:
    """The generator arguments set on the command line, checked against the chosen kind."""
    accepted = _defaults(pool_args if fv.pool else market_args)
    given = {}
    for name in fv:
        value = fv[name].value
        if name in _OWN or value is None or not fv[name].present:
            continue
        if name not in accepted:
            raise ValueError(f"--{name}: not an argument of the "
                             f"{'pool' if fv.pool else 'labelled set (add --pool?)'}")
        if name in _PAIRS:
            try:
                lo, hi = (int(v) for v in value)
            except ValueError:
                raise ValueError(f"--{name}={','.join(value)}: expected two integers LO,HI")
            value = (lo, hi)
        given[name] = value
    return given


def run(fv: flags.FlagValues) -> int:
    given = _given(fv)
    generate = generate_pool if fv.pool else generate_synthetic_market
    start = time.perf_counter()
    root = generate(fv.out, num_workers=fv.workers, log=print, **given)
    seconds = time.perf_counter() - start
    counts = (read_manifest(root) or {}).get("counts", {})
    print(f"{root} ({seconds:.1f} s)")
    if fv.pool:
        print("  " + " ".join(f"{k}={v}" for k, v in sorted(counts.items())))
        print(f"  build it: python -m personvit_jax.data.prepare --dataset=unlabeled_folder "
              f"--source={root}")
    for split in () if fv.pool else SPLITS:
        c = counts.get(split, {})
        print(f"  {split:<20} images={c.get('images')} ids={c.get('ids')} "
              f"distractors={c.get('distractors')} junk={c.get('junk')}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m personvit_jax.synthetic [--pool] --out=DIR [...]``; returns the exit code."""
    return cli.run_tool(PROG, __doc__, define_flags, run, argv)


if __name__ == "__main__":
    sys.exit(main())
