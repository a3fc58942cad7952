r"""Does self-supervised pretraining pay off? Label efficiency and label-free (USL) fine-tuning
from the teacher against the same runs from scratch, on the synthetic set, on CPU.

  python benchmarks/pretrain_payoff.py --workdir=runs/payoff            # everything, resumable
  python benchmarks/pretrain_payoff.py --workdir=runs/payoff10 --pretrained=runs/pt_synthetic \
      --fractions=0.1 --usl_seeds=                                       # one teacher, 10 % only
  python benchmarks/pretrain_payoff.py --workdir=runs/payoff --report   # only the tables

Steps (each skipped when its output is complete, resumed when it is partial):
1. the teacher: `--pretrain_config` (default `configs/pretrain.py:synthetic_pool`, whose pool of
   `--pool_images` new people is generated and built first under WORKDIR/data) with the
   `--pretrain_set KEY=VALUE` overrides -> WORKDIR/pretrain; or `--pretrained=RUN`, an existing
   pretraining run (its workdir or one step folder);
2. fine-tunes with the fine-tuning recipe as it ships (`configs/finetune.py:synthetic`: its
   epochs, schedule and evaluations) from that teacher and from scratch, at each label fraction
   of `--fractions` (`data.train_id_fraction`) and each seed of `--seeds`; the seed also draws
   the identities (`data.subset_seed`), so the two inits of one seed see the same ones;
3. USL (`configs/usl.py:synthetic`, no labels) from the teacher and from scratch, each seed of
   `--usl_seeds`;
4. raw 32x16 pixels on the same query / gallery (the floor a teacher should beat).
Prints every run and the summary (per fraction: mean +- sample SD of each init, and of the
paired gain pretrained - scratch over the seeds both have; the issue's target at the smallest
fraction: gain >= 0.05 and > 2x the larger SD), and writes WORKDIR/payoff.json and payoff.md.
WORKDIR/payoff_spec.json pins the teacher: a rerun with another is refused, so one table never
mixes teachers (fractions and seeds can grow).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from personvit_jax.config_args import load_config, load_config_spec  # noqa: E402
from personvit_jax import datasets  # noqa: E402
from personvit_jax.data import builders  # noqa: E402
from personvit_jax.evaluation.retrieval import RetrievalEvaluator  # noqa: E402
from personvit_jax.inference import Preprocessing  # noqa: E402
from personvit_jax.synthetic.write import generate_pool  # noqa: E402
from personvit_jax.training import sharding  # noqa: E402
from seed_spread import RESULTS, log, parse_overrides, pin_spec, run_main  # noqa: E402  (here)

FINETUNE = "configs/finetune.py:synthetic"
USL = "configs/usl.py:synthetic"
INITS = ("scratch", "pretrained")
GAIN_TARGET = 0.05  # the pretraining issue's target at the smallest fraction


# ---------------------------------------------------------------------------- 1. the teacher
def prepare_pool(workdir: str, num_images: int) -> str:
    folder = os.path.join(workdir, "data", "synthetic_pool_folder")
    data_dir = os.path.join(workdir, "data", "synthetic_pool")
    generate_pool(folder, num_images=num_images, log=log)  # returns at once when complete
    builders.build_unlabeled(folder, data_dir)  # builds the missing parts only
    return data_dir


def pretrain(workdir: str, config: str, overrides: dict, pool_images: int,
             labelled_dir: str) -> str:
    """Runs (or resumes) the pretraining into WORKDIR/pretrain; returns that run folder."""
    run_dir = os.path.join(workdir, "pretrain")
    over = {"data.labelled_data_dir": labelled_dir, "monitor.data_dir": labelled_dir}
    base = load_config_spec(config)
    if base.data.name == "unlabeled_folder" and "data.data_dir" not in overrides:
        over["data.data_dir"] = prepare_pool(workdir, pool_images)
    elif base.data.name == "synthetic":
        over["data.data_dir"] = labelled_dir
    run_main(config, run_dir, dict(over, **overrides), os.path.join(workdir, "logs",
                                                                    "pretrain.log"))
    return run_dir


def monitor_curve(run_dir: str) -> list[dict]:
    """The teacher-CLS monitor rows of a pretraining run (its folder or one step folder)."""
    for folder in (run_dir, os.path.dirname(os.path.dirname(run_dir))):
        path = os.path.join(folder, "metrics.jsonl")
        if os.path.isfile(path):
            with open(path) as f:
                rows = [json.loads(line) for line in f if line.strip()]
            return [{k: r.get(k) for k in ("step", "mAP", "rank1", "effective_rank",
                                           "top10_same_camera")}
                    for r in rows if r.get("split") == "monitor"]
    return []


# ---------------------------------------------------------------------------- 2-3. the runs
def run_plan(fractions: list[float], seeds: list[int], usl_seeds: list[int],
             teacher: str) -> list[dict]:
    """One dict per run (name, kind, init, fraction, seed, config, overrides), the smallest
    fraction first (where pretraining should matter most), USL last."""
    plan = []
    for fraction in sorted(fractions):
        for seed in seeds:
            for init in INITS:
                over = {"seed": seed, "data.subset_seed": seed,
                        "data.train_id_fraction": fraction,
                        "init_from": teacher if init == "pretrained" else ""}
                plan.append(dict(name=f"finetune/{init}_f{fraction:g}_s{seed}", kind="finetune",
                                 init=init, fraction=fraction, seed=seed, config=FINETUNE,
                                 overrides=over))
    for seed in usl_seeds:
        for init in INITS:
            over = {"seed": seed, "init_from": teacher if init == "pretrained" else ""}
            plan.append(dict(name=f"usl/{init}_s{seed}", kind="usl", init=init, fraction=None,
                             seed=seed, config=USL, overrides=over))
    return plan


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
def mean_sd(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values) if values else float("nan"),
            "sd": statistics.stdev(values) if len(values) > 1 else float("nan"),
            "n": len(values)}


def summarize(rows: list[dict]) -> list[dict]:
    """Per group (a fine-tune fraction, or USL): each init's mAP mean +- SD and the paired gain
    (pretrained - scratch) over the seeds both inits finished."""
    groups = sorted({(r["kind"], r["fraction"]) for r in rows},
                    key=lambda g: (g[0] != "finetune", g[1] or 0.0))
    out = []
    for kind, fraction in groups:
        by_init = {i: {r["seed"]: r["mAP"] for r in rows
                       if (r["kind"], r["fraction"], r["init"]) == (kind, fraction, i)}
                   for i in INITS}
        paired = sorted(set(by_init["scratch"]) & set(by_init["pretrained"]))
        gains = [by_init["pretrained"][s] - by_init["scratch"][s] for s in paired]
        out.append({"kind": kind, "fraction": fraction,
                    **{i: mean_sd(list(by_init[i].values())) for i in INITS},
                    "gain": mean_sd(gains), "paired_seeds": paired})
    return out


def target_check(summary: list[dict]) -> dict | None:
    """The issue's section-3 target on the fine-tune fractions: at the smallest, mean gain >=
    0.05 and > 2x the larger of the two inits' SDs; pretrained >= scratch at every fraction."""
    ft = [s for s in summary if s["kind"] == "finetune" and s["gain"]["n"] > 1]
    if not ft:
        return None
    small = ft[0]
    larger_sd = max(small["scratch"]["sd"], small["pretrained"]["sd"])
    return {"smallest_fraction": small["fraction"], "gain": small["gain"]["mean"],
            "larger_sd": larger_sd,
            "gain_met": small["gain"]["mean"] >= GAIN_TARGET
            and small["gain"]["mean"] > 2 * larger_sd,
            "never_worse": all(s["gain"]["mean"] >= 0 for s in ft)}


def fmt(s: dict) -> str:
    return f"{s['mean']:.3f} +- {s['sd']:.3f} (n {s['n']})"


def report(workdir: str, plan: list[dict], teacher: str) -> dict:
    rows = []
    for p in plan:
        path = os.path.join(workdir, p["name"], RESULTS)
        if os.path.isfile(path):
            with open(path) as f:
                r = json.load(f)
            rows.append({**{k: p[k] for k in ("kind", "init", "fraction", "seed")},
                         "mAP": r["mAP"], "rank1": r["rank1"], "step": r.get("step")})
    summary = summarize(rows)
    target = target_check(summary)
    raw = None
    raw_path = os.path.join(workdir, "raw_pixels.json")
    if os.path.isfile(raw_path):
        with open(raw_path) as f:
            raw = json.load(f)
    curve = monitor_curve(teacher)
    lines = ["| run | label fraction | seed | steps | mAP | rank-1 |", "|---|---|---|---|---|---|"]
    for r in rows:
        what = f"{r['kind']} from {r['init']}"
        frac = "-" if r["fraction"] is None else f"{r['fraction']:g}"
        lines.append(f"| {what} | {frac} | {r['seed']} | {r['step']} | {r['mAP']:.4f} | "
                     f"{r['rank1']:.4f} |")
    if raw:
        lines.append(f"| raw 32x16 pixels | - | - | - | {raw['mAP']:.4f} | {raw['rank1']:.4f} |")
    lines += ["", "| run | label fraction | scratch mAP | pretrained mAP | gain (paired) |",
              "|---|---|---|---|---|"]
    for s in summary:
        frac = "-" if s["fraction"] is None else f"{s['fraction']:g}"
        lines.append(f"| {s['kind']} | {frac} | {fmt(s['scratch'])} | {fmt(s['pretrained'])} | "
                     f"{fmt(s['gain'])} |")
    if target:
        lines += ["", f"Target at fraction {target['smallest_fraction']:g}: gain "
                      f"{target['gain']:.3f} >= {GAIN_TARGET} and > 2 x {target['larger_sd']:.3f}"
                      f": {'met' if target['gain_met'] else 'NOT met'}; pretrained >= scratch "
                      f"at every fraction: {'yes' if target['never_worse'] else 'NO'}"]
    lines += ["", f"Teacher: {teacher}", "", "| pretrain step | teacher-CLS mAP | rank-1 | "
              "effective rank | top-10 same camera |", "|---|---|---|---|---|"]
    for c in curve:
        lines.append(f"| {c['step']} | {c['mAP']:.4f} | {c['rank1']:.4f} | "
                     f"{c['effective_rank']:.2f} | {c['top10_same_camera']:.3f} |")
    text = "\n".join(lines)
    out = {"teacher": teacher, "runs": rows, "summary": summary, "target": target,
           "monitor": curve, "raw_pixels": raw}
    if os.path.isdir(workdir):
        with open(os.path.join(workdir, "payoff.json"), "w") as f:
            json.dump(out, f, indent=1)
        with open(os.path.join(workdir, "payoff.md"), "w") as f:
            f.write(text + "\n")
    print(text, flush=True)
    return out


def parse_list(flag: str, text: str, kind) -> list:
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"{flag}={text!r}: expected a comma-separated list of {kind.__name__}")
    if kind is float and not all(0 < v <= 1 for v in values):
        raise SystemExit(f"{flag}={text!r}: fractions in (0, 1]")
    return values


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True)
    p.add_argument("--pretrained", default="",
                   help="the teacher: an existing pretraining run (workdir or step folder) "
                        "instead of step 1")
    p.add_argument("--pretrain_config", default="configs/pretrain.py:synthetic_pool")
    p.add_argument("--pretrain_set", action="append", default=[], metavar="KEY=VALUE",
                   help="a pretraining config override (--config.KEY=VALUE), repeatable")
    p.add_argument("--pool_images", type=int, default=10_000)
    p.add_argument("--fractions", default="0.1,0.25,1.0", help="label fractions")
    p.add_argument("--seeds", default="0,1,2", help="fine-tune seeds at every fraction")
    p.add_argument("--usl_seeds", default="0,1,2", help="USL seeds ('' = no USL runs)")
    p.add_argument("--report", action="store_true", help="only print the tables")
    a = p.parse_args(argv)
    workdir = os.path.abspath(a.workdir)
    fractions = parse_list("--fractions", a.fractions, float)
    seeds = parse_list("--seeds", a.seeds, int)
    usl_seeds = parse_list("--usl_seeds", a.usl_seeds, int)
    pretrain_over = parse_overrides(a.pretrain_set)
    if a.pretrained and not os.path.isdir(a.pretrained):
        raise SystemExit(f"--pretrained={a.pretrained!r}: no such folder")
    teacher = os.path.abspath(a.pretrained) if a.pretrained else os.path.join(workdir, "pretrain")
    plan = run_plan(fractions, seeds, usl_seeds, teacher)
    if a.report:
        report(workdir, plan, teacher)
        return 0
    os.makedirs(os.path.join(workdir, "logs"), exist_ok=True)
    pin_spec(workdir, {"teacher": teacher, "pretrain_config": "" if a.pretrained
                       else a.pretrain_config, "pretrain_set": pretrain_over,
                       "pool_images": a.pool_images}, "payoff_spec.json")

    ft_config = load_config("configs/finetune.py", "synthetic")
    labelled_dir = os.path.join(REPO, ft_config.data.data_dir)
    splits = datasets.load_splits("synthetic", labelled_dir, ft_config.data.synthetic.to_dict())
    raw_path = os.path.join(workdir, "raw_pixels.json")  # cheap; first, so the table has it
    if not os.path.isfile(raw_path):
        with open(raw_path, "w") as f:
            json.dump(raw_pixel_baseline(splits), f)
    if not a.pretrained:
        pretrain(workdir, a.pretrain_config, pretrain_over, a.pool_images, labelled_dir)
    report(workdir, plan, teacher)
    for run in plan:
        over = dict(run["overrides"], **{"data.data_dir": labelled_dir})
        run_main(run["config"], os.path.join(workdir, run["name"]), over,
                 os.path.join(workdir, "logs", run["name"].replace("/", "_") + ".log"))
        report(workdir, plan, teacher)
    return 0


if __name__ == "__main__":
    sys.exit(main())
