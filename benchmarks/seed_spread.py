r"""How much does a training command's result move from seed to seed? Runs one config over
several seeds, one `python -m personvit_jax.main` per seed, and reports mean +- sample SD.

  python benchmarks/seed_spread.py --config=configs/finetune.py:synthetic \
      --workdir=runs/spread/quickstart --seeds=0,1,2,3,4
  python benchmarks/seed_spread.py ... --set=optim.base_lr=5e-4 --set=optim.clip_grad=1.0
  python benchmarks/seed_spread.py --workdir=runs/spread/quickstart --report
  python benchmarks/seed_spread.py --config=configs/usl.py:synthetic,uda \
      --workdir=runs/spread/uda --seeds=0,1,2 --init_from_spread=runs/spread/quickstart

With --init_from_spread=DIR, seed n starts from DIR/seed_<n> (`--config.init_from`): each seed
of a second stage (UDA after a fine-tune) continues its own seed of the first, so the spread
covers both stages. Where the run writes start_eval.json (usl / uda: the starting model on the
target), its mAP and rank-1 go into the line too (start_mAP, start_rank1).

Resumable: each seed trains in WORKDIR/seed_<n> (a rerun resumes an interrupted one) and, once
finished, appends one JSON line to WORKDIR/seeds.jsonl (seed, mAP, rank-1, mINP, their bootstrap
intervals, wall seconds of the command, train steps); seeds already there are skipped.
WORKDIR/spread.json pins the config and overrides: a rerun with others is refused, so the lines
of one file always come from one command. The synthetic set is built before the first seed, so
each seed's wall time is training + evaluation only (what the quick start takes once built).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

RESULTS = "eval_results.json"
START = "start_eval.json"  # usl / uda: the starting model's evaluation (stages/usl.py START_EVAL)
METRICS = ("mAP", "rank1", "mINP")
START_METRICS = ("mAP", "rank1")  # read from START, logged as start_<metric>


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run_main(config: str, workdir: str, overrides: dict, log_path: str) -> dict:
    """`python -m personvit_jax.main` (resumes from `workdir`); its eval_results.json."""
    done = os.path.join(workdir, RESULTS)
    if os.path.isfile(done):
        with open(done) as f:
            return json.load(f)
    cmd = [sys.executable, "-m", "personvit_jax.main", f"--config={config}",
           f"--workdir={workdir}"] + [f"--config.{k}={v}" for k, v in overrides.items()]
    log(" ".join(cmd[1:]))
    with open(log_path, "a") as out:
        code = subprocess.call(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    if code != 0 or not os.path.isfile(done):
        raise SystemExit(f"{' '.join(cmd)} failed (exit {code}); see {log_path}")
    with open(done) as f:
        return json.load(f)


def parse_overrides(items: list[str]) -> dict:
    """['optim.base_lr=5e-4', ...] -> {'optim.base_lr': '5e-4', ...} (values as typed)."""
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise SystemExit(f"--set={item!r}: expected KEY=VALUE, e.g. optim.base_lr=5e-4")
        out[key] = value
    return out


def pin_spec(workdir: str, spec: dict, name: str = "spread.json") -> None:
    """Writes WORKDIR/`name` once; a later call with another spec is refused."""
    path = os.path.join(workdir, name)
    if os.path.isfile(path):
        with open(path) as f:
            pinned = json.load(f)
        if pinned != spec:
            raise SystemExit(f"{path} holds the runs of {pinned}; this command asks for {spec}. "
                             f"Use another --workdir (nothing in {workdir} was changed).")
        return
    with open(path, "w") as f:
        json.dump(spec, f, indent=1)


def read_lines(path: str) -> list[dict]:
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def summarize(rows: list[dict]) -> dict:
    """{metric: {mean, sd, min, max, n}} over the rows (sample SD, n - 1)."""
    out = {}
    for m in tuple(f"start_{m}" for m in START_METRICS) + METRICS + ("wall_s",):
        values = [r[m] for r in rows if r.get(m) is not None]
        if values:
            out[m] = {"mean": statistics.fmean(values),
                      "sd": statistics.stdev(values) if len(values) > 1 else float("nan"),
                      "min": min(values), "max": max(values), "n": len(values)}
    return out


def report(workdir: str, emit_json: bool = True) -> dict:
    """Logs each seed and mean +- SD; with `emit_json`, prints the summary as one JSON line."""
    rows = read_lines(os.path.join(workdir, "seeds.jsonl"))
    for r in rows:
        ci = r.get("mAP_ci95") or [float("nan")] * 2
        start = f"start mAP {r['start_mAP']:.4f} -> " if "start_mAP" in r else ""
        log(f"seed {r['seed']}: {start}mAP {r['mAP']:.4f} [{ci[0]:.3f}, {ci[1]:.3f}]  rank-1 "
            f"{r['rank1']:.4f}  mINP {r['mINP']:.4f}  {r['wall_s']:.0f} s")
    summary = summarize(rows)
    for m, s in summary.items():
        log(f"{m}: {s['mean']:.4f} +- {s['sd']:.4f} (min {s['min']:.4f}, max {s['max']:.4f}, "
            f"n {s['n']})")
    if emit_json:
        print(json.dumps({"workdir": workdir, "seeds": [r["seed"] for r in rows], **summary}))
    return summary


def init_dirs(spread_dir: str, seeds: list[int]) -> dict[int, str]:
    """{seed: DIR/seed_<seed>} for --init_from_spread; every one must be a finished run."""
    out = {}
    for seed in seeds:
        run = os.path.abspath(os.path.join(spread_dir, f"seed_{seed}"))
        if not os.path.isfile(os.path.join(run, RESULTS)):
            raise SystemExit(f"--init_from_spread={spread_dir}: {run} holds no finished run "
                             f"({RESULTS} missing); run that seed of the first stage first")
        out[seed] = run
    return out


def start_metrics(run_dir: str) -> dict:
    """{'start_mAP', 'start_rank1'} from RUN/start_eval.json, or {} where there is none."""
    path = os.path.join(run_dir, START)
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        start = json.load(f)
    return {f"start_{m}": start[m] for m in START_METRICS}


def build_data(config_spec: str, overrides: dict) -> None:
    """Builds a synthetic set before the first seed (so no seed's time includes it): the one
    the config names once its `data.*` overrides are applied (values read as Python literals
    where they are one, as the command line does)."""
    from personvit_jax.config_args import load_config_spec
    from personvit_jax import datasets

    config = load_config_spec(config_spec)
    for key, value in overrides.items():
        if not key.startswith("data."):
            continue
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            pass  # a plain string, e.g. a path
        *parents, leaf = key.split(".")
        node = config
        for part in parents:
            node = node[part]
        node[leaf] = value
    if config.data.name != "synthetic":
        return
    datasets.load_splits("synthetic", os.path.join(REPO, config.data.data_dir),
                         config.data.synthetic.to_dict())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True)
    p.add_argument("--config", default="configs/finetune.py:synthetic")
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override for every seed (--config.KEY=VALUE), repeatable")
    p.add_argument("--init_from_spread", default="", metavar="DIR",
                   help="seed n starts from DIR/seed_<n> (a finished seed_spread of a first stage)")
    p.add_argument("--report", action="store_true", help="only print what seeds.jsonl holds")
    a = p.parse_args(argv)
    workdir = os.path.abspath(a.workdir)
    if a.report:
        report(workdir)
        return 0
    try:
        seeds = [int(s) for s in a.seeds.split(",")]
    except ValueError:
        raise SystemExit(f"--seeds={a.seeds!r}: expected integers, e.g. 0,1,2")
    overrides = parse_overrides(a.set)
    if "seed" in overrides:
        raise SystemExit("--set=seed=...: the seeds come from --seeds")
    if "init_from" in overrides and a.init_from_spread:
        raise SystemExit("--set=init_from=... and --init_from_spread: give one of them")
    inits = init_dirs(a.init_from_spread, seeds) if a.init_from_spread else {}
    os.makedirs(workdir, exist_ok=True)
    spec = {"config": a.config, "overrides": overrides}
    if a.init_from_spread:
        spec["init_from_spread"] = os.path.abspath(a.init_from_spread)
    pin_spec(workdir, spec)
    lines = os.path.join(workdir, "seeds.jsonl")
    build_data(a.config, overrides)
    for seed in seeds:
        if any(r["seed"] == seed for r in read_lines(lines)):
            continue
        run_dir = os.path.join(workdir, f"seed_{seed}")
        start = time.time()
        seed_overrides = dict(overrides, seed=seed)
        if seed in inits:
            seed_overrides["init_from"] = inits[seed]
        result = run_main(a.config, run_dir, seed_overrides,
                          os.path.join(workdir, f"seed_{seed}.log"))
        row = {"seed": seed, **start_metrics(run_dir), **{m: result[m] for m in METRICS},
               **{k: result[k] for k in ("mAP_ci95", "rank1_ci95") if k in result},
               "wall_s": time.time() - start, "step": result.get("step")}
        with open(lines, "a") as f:
            f.write(json.dumps(row) + "\n")
        report(workdir, emit_json=False)
    report(workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
