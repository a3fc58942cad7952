r"""One table row per pretraining run: does its teacher leave DINO's uniform plateau?

  python -m personvit_jax.main --config=configs/pretrain.py:sanity --workdir=runs/pt_sanity \
      --config.optim.epochs=8
  python benchmarks/pretrain_probe.py runs/pt_sanity [runs/pt_other ...]

Reads each workdir's config.json and metrics.jsonl (no training) and prints a markdown row:
steps, the CLS / patch losses at the end against ln K, the teacher's per-image entropy and
entropy of the batch mean, the share of prototypes used as an argmax, the std of the
L2-normalised teacher CLS (against 1/sqrt(D)), each loss's gradient at the logits, the monitor's
teacher-CLS mAP at every evaluation, the last effective rank and camera bias; then, once per
monitor set, the mAP of raw 32x16 pixels on the same query / gallery (what the teacher must
beat). End-of-run figures are means over the last 5 logged train rows.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from personvit_jax.models.vit import VIT_SIZES  # noqa: E402
from personvit_jax.training.logging import read_metrics  # noqa: E402

COLUMNS = ("run", "steps", "CLS loss (ln K)", "CLS loss at 1/4, 1/2, 3/4", "patch loss",
           "teacher entropy / of mean", "prototypes used", "feature std (1/sqrt D)",
           "grad at logits CLS / patch",
           "monitor mAP", "effective rank", "top-10 same camera")


def tail_mean(train: dict, key: str, n: int = 5) -> float:
    values = train.get(key)
    if values is None:
        return float("nan")
    values = values[~np.isnan(values)]
    return float(values[-n:].mean()) if len(values) else float("nan")


def at_fractions(train: dict, key: str, fractions=(0.25, 0.5, 0.75)) -> str:
    """The logged values of `key` nearest to these fractions of the run's steps: where a
    plateau is reached or left (a run can start below ln K and climb back)."""
    if key not in train or not len(train["step"]):
        return "-"
    steps, values = np.asarray(train["step"]), np.asarray(train[key])
    picks = [values[np.abs(steps - f * steps[-1]).argmin()] for f in fractions]
    return " / ".join(f"{v:.2f}" for v in picks)


def probe_row(workdir: str) -> tuple[dict, dict]:
    """(the row's fields, the run's config) of one pretrain workdir."""
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):  # e.g. a run's .out log
        raise SystemExit(f"{workdir}: not a run's workdir (it holds no config.json)")
    with open(path) as f:
        config = json.load(f)
    if config.get("stage") != "pretrain":
        raise SystemExit(f"{workdir}: config.json has stage={config.get('stage')!r}, not "
                         "'pretrain'")
    m = read_metrics(workdir)
    train, monitor = m.get("train", {}), m.get("monitor", {})
    k = config["head"]["out_dim"]
    width = config["model"].get("width") or VIT_SIZES[config["model"]["name"]]["width"]
    curve = [f"{v:.4f}" for v in monitor.get("mAP", [])]
    last = lambda key: float(monitor[key][-1]) if key in monitor else float("nan")
    row = {
        "run": os.path.basename(os.path.normpath(workdir)),
        "steps": int(train["step"][-1]) if "step" in train else 0,
        "CLS loss (ln K)": f"{tail_mean(train, 'cls_loss'):.3f} ({math.log(k):.3f})",
        "CLS loss at 1/4, 1/2, 3/4": at_fractions(train, "cls_loss"),
        "patch loss": f"{tail_mean(train, 'patch_loss'):.3f}",
        "teacher entropy / of mean": f"{tail_mean(train, 'teacher_mean_entropy'):.2f} / "
                                     f"{tail_mean(train, 'teacher_entropy_of_mean'):.2f}",
        "prototypes used": f"{tail_mean(train, 'teacher_prototypes_used'):.3f}",
        "feature std (1/sqrt D)": f"{tail_mean(train, 'teacher_feature_std'):.4f}"
                                  + f" ({1 / math.sqrt(width):.4f})",
        "grad at logits CLS / patch": f"{tail_mean(train, 'cls_logit_grad_norm'):.3g} / "
                                      f"{tail_mean(train, 'patch_logit_grad_norm'):.3g}",
        "monitor mAP": " -> ".join(curve) or "-",
        "effective rank": f"{last('effective_rank'):.1f}",
        "top-10 same camera": f"{last('top10_same_camera'):.2f}",
    }
    return row, config


def raw_pixels(config: dict) -> dict:
    """mAP / rank-1 of raw 32x16 pixels on the run's monitor query / gallery."""
    from personvit_jax import datasets
    from pretrain_payoff import raw_pixel_baseline  # (this folder)

    mon = config["monitor"]
    splits = datasets.load_splits(mon["dataset"], mon["data_dir"], config["data"]["synthetic"])
    return raw_pixel_baseline(splits)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("workdirs", nargs="+")
    p.add_argument("--no_raw_pixels", action="store_true", help="skip the raw-pixel baseline")
    a = p.parse_args(argv)
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    configs = []
    for workdir in a.workdirs:
        row, config = probe_row(workdir)
        configs.append(config)
        print("| " + " | ".join(str(row[c]) for c in COLUMNS) + " |")
    if not a.no_raw_pixels:
        seen = set()
        for config in configs:
            key = json.dumps([config["monitor"], config["data"]["synthetic"]], sort_keys=True)
            if key not in seen:
                seen.add(key)
                r = raw_pixels(config)
                print(f"raw 32x16 pixels on {config['monitor']['dataset']} "
                      f"{config['data']['synthetic']}: mAP {r['mAP']:.4f}, rank-1 "
                      f"{r['rank1']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
