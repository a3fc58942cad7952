r"""Does self-supervised pretraining pay off? Label-efficiency on the synthetic set, on CPU.

  python benchmarks/pretrain_payoff.py --workdir=runs/payoff            # everything, resumable
  python benchmarks/pretrain_payoff.py --workdir=runs/payoff --report   # only the table

Steps (each skipped when its output is complete, resumed when it is partial):
1. the unlabeled pool: `--pool_images` new people (personvit_jax.synthetic --pool) built as
   `unlabeled_folder` under WORKDIR/data/synthetic_pool;
2. pretraining `configs/pretrain.py:synthetic_pool` on it plus the labelled train images
   (labels unused) -> WORKDIR/pretrain (its monitor: teacher-CLS retrieval mAP, collapse signals);
3. fine-tunes `configs/finetune.py:synthetic` from that teacher and from scratch at each label
   fraction of `--fractions` (FRACTION:STEPS, the same steps for both inits), with the seeds of
   `--seeds` at the smallest fraction; `--variants` adds pretrained-only runs at the smallest
   fraction: `layer_decay` (AdamW + layer-wise LR decay 0.65) and `sgd` (the PersonViT SGD
   recipe of configs/finetune.py, warm-up included);
4. a raw-pixel baseline (32x16 pixels, L2-normalised) on the same query / gallery.
Prints one table (mAP and rank-1 per init x fraction x seed) and the monitor curve, and writes
them to WORKDIR/payoff.json and WORKDIR/payoff.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from personvit_jax.config_args import load_config  # noqa: E402
from personvit_jax import datasets  # noqa: E402
from personvit_jax.data import builders, pipeline  # noqa: E402
from personvit_jax.evaluation.retrieval import RetrievalEvaluator  # noqa: E402
from personvit_jax.inference import Preprocessing  # noqa: E402
from personvit_jax.synthetic.write import generate_pool  # noqa: E402
from personvit_jax.training import sharding  # noqa: E402
from seed_spread import RESULTS, log, run_main  # noqa: E402  (this folder)

VARIANTS = {
    "layer_decay": {"optim.layer_decay": 0.65},
    "sgd": "PersonViT",  # the optim block of configs/finetune.py (SGD recipe)
}


# ---------------------------------------------------------------------------- 1. the pool
def prepare_pool(workdir: str, num_images: int) -> str:
    folder = os.path.join(workdir, "data", "synthetic_pool_folder")
    data_dir = os.path.join(workdir, "data", "synthetic_pool")
    generate_pool(folder, num_images=num_images, log=log)  # returns at once when complete
    builders.build_unlabeled(folder, data_dir)  # builds the missing parts only
    return data_dir


# ---------------------------------------------------------------------------- 3. fine-tunes
def finetune_plan(fractions, seeds, variants, pretrain_dir: str) -> list[dict]:
    """One dict per fine-tune: name, init, fraction, seed, steps, variant."""
    smallest = min(f for f, _ in fractions)
    plan = []
    for fraction, steps in fractions:
        for seed in (seeds if fraction == smallest else seeds[:1]):
            for init in ("scratch", "pretrained"):
                plan.append(dict(init=init, fraction=fraction, seed=seed, steps=steps,
                                 variant="adamw"))
    for variant in variants:
        steps = dict(fractions)[smallest]
        plan.append(dict(init="pretrained", fraction=smallest, seed=seeds[0], steps=steps,
                         variant=variant))
    for p in plan:
        p["name"] = f"{p['init']}_f{p['fraction']:g}_s{p['seed']}_{p['variant']}"
        p["init_from"] = pretrain_dir if p["init"] == "pretrained" else ""
    return plan


def finetune_overrides(p: dict, steps_per_epoch: int, recipe_optim) -> dict:
    """Config overrides of one fine-tune: `p['steps']` rounded up to whole epochs, a warm-up of
    a tenth of them, one evaluation at the end."""
    epochs = max(1, math.ceil(p["steps"] / steps_per_epoch))
    over = {"init_from": p["init_from"], "seed": p["seed"], "data.subset_seed": p["seed"],
            "data.train_id_fraction": p["fraction"], "optim.epochs": epochs,
            "optim.warmup_epochs": max(1, round(epochs / 10)), "eval.every_epochs": 0}
    if p["variant"] == "sgd":
        for key in ("name", "base_lr", "momentum", "weight_decay", "weight_decay_bias",
                    "bias_lr_factor", "warmup_factor", "final_lr_factor"):
            over[f"optim.{key}"] = recipe_optim[key]
    elif p["variant"] != "adamw":
        over.update(VARIANTS[p["variant"]])
    return over


# ---------------------------------------------------------------------------- 4. raw pixels
def raw_pixel_baseline(splits) -> dict:
    """mAP / rank-1 of 32x16 raw pixels (normalised to [-1, 1], L2-normalised rows)."""
    mesh = sharding.make_mesh(load_config("configs/finetune.py", "synthetic").mesh)
    evaluator = RetrievalEvaluator(splits["query"], splits["gallery"],
                                   Preprocessing((32, 16), (0.5,) * 3, (0.5,) * 3), mesh, 128)

    @jax.jit
    def embed(images, camids):
        del camids
        x = images.reshape(images.shape[0], -1)
        return x / jnp.linalg.norm(x, axis=-1, keepdims=True).clip(1e-12)

    return evaluator.run(embed).summary


# ---------------------------------------------------------------------------- the report
def report(workdir: str, plan: list[dict]) -> dict:
    rows = []
    for p in plan:
        path = os.path.join(workdir, "finetune", p["name"], RESULTS)
        if os.path.isfile(path):
            with open(path) as f:
                r = json.load(f)
            rows.append({**{k: p[k] for k in ("init", "fraction", "seed", "variant", "steps")},
                         "mAP": r["mAP"], "rank1": r["rank1"], "final_step": r["step"]})
    curve, entropies = [], []  # monitor rows; train rows with the collapse signals
    metrics = os.path.join(workdir, "pretrain", "metrics.jsonl")
    if os.path.isfile(metrics):
        with open(metrics) as f:
            for line in f:
                m = json.loads(line)
                if m.get("split") == "monitor":
                    curve.append({k: m.get(k) for k in ("step", "mAP", "rank1", "effective_rank",
                                                        "top10_same_camera")})
                elif m.get("split") == "train" and "teacher_mean_entropy" in m:
                    entropies.append({k: m.get(k) for k in (
                        "step", "cls_loss", "patch_loss", "teacher_mean_entropy",
                        "teacher_entropy_of_mean", "teacher_prototypes_used",
                        "teacher_feature_std", "cls_logit_grad_norm",
                        "patch_logit_grad_norm")})
    raw = None
    raw_path = os.path.join(workdir, "raw_pixels.json")
    if os.path.isfile(raw_path):
        with open(raw_path) as f:
            raw = json.load(f)
    out = {"pretrained": next((p["init_from"] for p in plan if p["init_from"]), ""),
           "finetunes": rows, "monitor": curve, "collapse": entropies[::10] + entropies[-1:],
           "raw_pixels": raw}
    lines = ["| init | label fraction | seed | optimiser | steps | mAP | rank-1 |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['init']} | {r['fraction']:g} | {r['seed']} | {r['variant']} | "
                     f"{r['final_step']} | {r['mAP']:.3f} | {r['rank1']:.3f} |")
    if raw:
        lines.append(f"| raw 32x16 pixels | - | - | - | - | {raw['mAP']:.3f} | "
                     f"{raw['rank1']:.3f} |")
    lines += ["", "| pretrain step | teacher-CLS mAP | rank-1 | effective rank | "
              "top-10 same camera |", "|---|---|---|---|---|"]
    for c in curve:
        lines.append(f"| {c['step']} | {c['mAP']:.4f} | {c['rank1']:.4f} | "
                     f"{c['effective_rank']:.2f} | {c['top10_same_camera']:.3f} |")
    text = "\n".join(lines)
    with open(os.path.join(workdir, "payoff.json"), "w") as f:
        json.dump(out, f, indent=1)
    with open(os.path.join(workdir, "payoff.md"), "w") as f:
        f.write(text + "\n")
    print(text)
    return out


def parse_fractions(text: str) -> list[tuple[float, int]]:
    try:
        pairs = [item.split(":") for item in text.split(",")]
        out = [(float(f), int(s)) for f, s in pairs]
    except ValueError as e:
        raise SystemExit(f"--fractions={text!r}: expected FRACTION:STEPS,... ({e})")
    if not all(0 < f <= 1 and s > 0 for f, s in out):
        raise SystemExit(f"--fractions={text!r}: fractions in (0, 1], steps > 0")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True)
    p.add_argument("--pool_images", type=int, default=10_000)
    p.add_argument("--pretrain_epochs", type=int, default=0, help="0 = the config's")
    p.add_argument("--fractions", default="1.0:500,0.25:300,0.1:200",
                   help="FRACTION:STEPS of the fine-tunes")
    p.add_argument("--seeds", default="0,1", help="seeds at the smallest fraction")
    p.add_argument("--variants", default="layer_decay,sgd",
                   help=f"pretrained-only optimiser variants at the smallest fraction "
                        f"({', '.join(VARIANTS)}; '' = none)")
    p.add_argument("--pretrained", default="",
                   help="fine-tune from this checkpoint (a workdir or a step folder, e.g. of "
                        "an unfinished step 2) instead of running step 2")
    p.add_argument("--report", action="store_true", help="only print the table")
    a = p.parse_args(argv)
    workdir = os.path.abspath(a.workdir)
    fractions = parse_fractions(a.fractions)
    seeds = [int(s) for s in a.seeds.split(",")]
    variants = [v for v in a.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown}; expected some of {sorted(VARIANTS)}")
    pretrain_dir = os.path.join(workdir, "pretrain")
    init_dir = os.path.abspath(a.pretrained) if a.pretrained else pretrain_dir
    plan = finetune_plan(fractions, seeds, variants, init_dir)
    if a.report:
        report(workdir, plan)
        return 0
    os.makedirs(workdir, exist_ok=True)
    logs = os.path.join(workdir, "logs")
    os.makedirs(logs, exist_ok=True)

    # 1. the pool; the labelled set (built on first use)
    pool_dir = prepare_pool(workdir, a.pool_images)
    ft_config = load_config("configs/finetune.py", "synthetic")
    labelled_dir = os.path.join(REPO, ft_config.data.data_dir)
    splits = datasets.load_splits("synthetic", labelled_dir, ft_config.data.synthetic.to_dict())
    batch = ft_config.data.num_ids_per_batch * ft_config.data.num_instances

    # 4. raw pixels (cheap; first, so the table always has it)
    raw_path = os.path.join(workdir, "raw_pixels.json")
    if not os.path.isfile(raw_path):
        with open(raw_path, "w") as f:
            json.dump(raw_pixel_baseline(splits), f)

    # 2. pretraining
    over = {"data.data_dir": pool_dir, "data.labelled_data_dir": labelled_dir,
            "monitor.data_dir": labelled_dir}
    if a.pretrain_epochs:
        over["optim.epochs"] = a.pretrain_epochs
    if not a.pretrained:
        run_main("configs/pretrain.py:synthetic_pool", pretrain_dir, over,
                 os.path.join(logs, "pretrain.log"))
    report(workdir, plan)

    # 3. fine-tunes, the smallest fraction first (where pretraining should matter most)
    recipe = load_config("configs/finetune.py", None).optim
    for p_ in sorted(plan, key=lambda q: (q["fraction"], q["variant"] != "adamw")):
        subset = pipeline.subset_identities(splits["train"], p_["fraction"], p_["seed"])
        spe = max(1, len(subset) // batch)
        over = dict(finetune_overrides(p_, spe, recipe), **{"data.data_dir": labelled_dir})
        run_main("configs/finetune.py:synthetic", os.path.join(workdir, "finetune", p_["name"]),
                 over, os.path.join(logs, p_["name"] + ".log"))
        report(workdir, plan)
    return 0


if __name__ == "__main__":
    sys.exit(main())
