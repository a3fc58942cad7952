"""The benchmark scripts run end to end (smallest settings) and print the JSON lines the README
documents. Their figures are speed, not checked here; this catches a script that no longer runs
against the package (a renamed function, a changed config).

train_step.py (both stages) and input_pipeline.py are run end to end by the GPU check's dry
run, at these tests' sizes, and checked there (tests/test_gpu_check.py)."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO


def _run(script: str, *args: str) -> list[dict]:
    env = {**os.environ, "XLA_FLAGS": ""}  # one CPU device, as a user runs them
    out = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", script), *args],
                         capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    assert out.returncode == 0, f"benchmarks/{script} failed:\n{out.stderr[-3000:]}"
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def test_torch_reference_bench_tiny():
    pytest.importorskip("torch", reason="the PyTorch reference needs requirements-convert.txt")
    (row,) = _run("torch_reference.py", "--model=vit_tiny", "--batch=8", "--steps=1")
    assert (row["framework"], row["stage"], row["batch"]) == ("pytorch", "finetune", 8)
    assert row["img_per_s"] > 0


def test_block_parts_bench_tiny():
    rows = _run("block_parts.py", "--batch=1", "--reps=1", "--width=64", "--heads=2")
    assert [r["part"] for r in rows][:3] == ["block fwd+bwd", "mlp fwd+bwd",
                                             "attention core fwd+bwd"]
    assert len(rows) == 7 and all(r["ms"] > 0 and r["gflop"] > 0 for r in rows)


def test_extract_speed_bench_tiny():
    pytest.importorskip("onnxruntime", reason="the ONNX backends need requirements-onnx.txt")
    rows = _run("extract_speed.py", "--model=vit_tiny", "--image_size=64,32", "--batches=1",
                "--runs=1", "--images_per_sample=1")
    backends = ["jax", "jax_export", "onnx", "torch", "torch_onnx"]
    have_torch = any(r["backend"] == "torch" for r in rows)
    assert [r["backend"] for r in rows] == backends[:5 if have_torch else 3]
    assert all(r["batch"] == 1 and r["img_per_s"] > 0 for r in rows)
    assert all(r["max_abs_vs_jax"] < 1e-4 for r in rows)  # one function, five ways to run it


def test_seed_spread_runs_each_seed_once_and_pins_its_command(tiny_data_dir, tmp_path):
    from conftest import TINY_SYNTHETIC

    tiny = {"data.data_dir": tiny_data_dir, "data.image_size": "(64,32)",
            "data.num_ids_per_batch": 4, "data.pad": 4, "model.width": 64, "model.depth": 2,
            "model.num_heads": 2, "model.patch_size": 8, "model.patch_stride": 8,
            "model.pos_grid": "(8,4)", "eval.batch_size": 32, "optim.epochs": 1,
            **{f"data.synthetic.{k}": v for k, v in TINY_SYNTHETIC.items()
               if k != "images_per_id"}, "data.synthetic.images_per_id": "(6,10)"}
    sets = [f"--set={k}={v}" for k, v in tiny.items()]
    work = str(tmp_path / "spread")
    (summary,) = _run("seed_spread.py", f"--workdir={work}", "--seeds=0,1", *sets)
    assert summary["seeds"] == [0, 1] and summary["mAP"]["n"] == 2
    rows = [json.loads(l) for l in open(os.path.join(work, "seeds.jsonl"))]
    assert [r["seed"] for r in rows] == [0, 1]
    assert all(len(r["mAP_ci95"]) == 2 and r["step"] > 0 for r in rows)
    assert summary["mAP"]["mean"] == pytest.approx((rows[0]["mAP"] + rows[1]["mAP"]) / 2)
    assert len(os.listdir(os.path.join(tiny_data_dir, "synthetic"))) == 1  # the tiny set only
    # a rerun adds only the missing seed; another command in the same workdir is refused
    (summary,) = _run("seed_spread.py", f"--workdir={work}", "--seeds=0,1,2", *sets)
    assert summary["seeds"] == [0, 1, 2]
    out = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "seed_spread.py"),
                          f"--workdir={work}", "--set=optim.base_lr=1", *sets],
                         capture_output=True, text=True, cwd=REPO, timeout=600)
    assert out.returncode != 0 and "spread.json holds the runs of" in out.stderr

    # a second stage: seed n of uda starts from seed n of the fine-tune spread
    uda = {k: v for k, v in tiny.items() if k != "optim.epochs"}
    # its target domain is another build: its own data dir keeps the shared tiny one as it is
    uda.update({"data.data_dir": str(tmp_path / "uda_data"), "data.num_ids_per_batch": 2,
                "cluster.k1": 6, "cluster.k2": 2,
                "cluster.min_samples": 2, "cluster.eps": 0.7, "optim.epochs": 1,
                "optim.iters_per_epoch": 2})
    sets = [f"--set={k}={v}" for k, v in uda.items()]
    args = ["--config=configs/usl.py:synthetic,uda", f"--workdir={tmp_path / 'uda'}"]
    out = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "seed_spread.py"),
                          *args, "--seeds=0,5", f"--init_from_spread={work}", *sets],
                         capture_output=True, text=True, cwd=REPO, timeout=600)
    assert out.returncode != 0 and "seed_5 holds no finished run" in out.stderr
    assert not (tmp_path / "uda").exists()  # refused before anything was written
    (summary,) = _run("seed_spread.py", *args, "--seeds=1", f"--init_from_spread={work}", *sets)
    (row,) = [json.loads(l) for l in open(tmp_path / "uda" / "seeds.jsonl")]
    start = json.load(open(tmp_path / "uda" / "seed_1" / "start_eval.json"))
    assert row["start_mAP"] == start["mAP"] and summary["start_mAP"]["n"] == 1
    result = json.load(open(tmp_path / "uda" / "seed_1" / "eval_results.json"))
    assert result["init_from"] == os.path.join(work, "seed_1")
    assert len(os.listdir(os.path.join(tiny_data_dir, "synthetic"))) == 1


def test_pretrain_probe_reads_a_runs_signals(pretrain_reference, tmp_path):
    out = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "pretrain_probe.py"),
                          str(pretrain_reference)], capture_output=True, text=True, cwd=REPO,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    header, _, row, raw = out.stdout.splitlines()[:4]
    assert header.startswith("| run | steps | CLS loss (ln K)")
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert int(cells[1]) > 0 and "(4.159)" in cells[2]  # ln 64
    assert raw.startswith("raw 32x16 pixels on synthetic") and "mAP 0." in raw
    log = tmp_path / "run.out"  # a shell glob's stray log file
    log.write_text("log\n")
    out = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "pretrain_probe.py"),
                          str(pretrain_reference), str(log)], capture_output=True, text=True,
                         cwd=REPO, timeout=600)
    assert out.returncode != 0 and f"{log}: not a run's workdir" in out.stderr


def _payoff():
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    import pretrain_payoff

    return pretrain_payoff


def test_payoff_plan_pairs_the_inits_on_the_same_identities():
    payoff = _payoff()
    plan = payoff.run_plan([1.0, 0.1], [0, 1], [2], "/t")
    assert [p["fraction"] for p in plan[:4]] == [0.1] * 4  # the smallest fraction first
    assert [p["kind"] for p in plan[-2:]] == ["usl", "usl"] and len(plan) == 10
    for p in plan:
        o = p["overrides"]
        assert o["init_from"] == ("/t" if p["init"] == "pretrained" else "")
        if p["kind"] == "finetune":  # the seed also draws the identities of both inits
            assert o["seed"] == o["data.subset_seed"] == p["seed"]
    assert len({p["name"] for p in plan}) == len(plan)


def test_payoff_summary_pairs_gains_by_seed_and_checks_the_target():
    payoff = _payoff()

    def rows(fraction, scratch, pretrained):
        return ([dict(kind="finetune", init="scratch", fraction=fraction, seed=s, mAP=m)
                 for s, m in enumerate(scratch)]
                + [dict(kind="finetune", init="pretrained", fraction=fraction, seed=s, mAP=m)
                   for s, m in enumerate(pretrained)])

    # a clear gain at 10 % (+0.06, SDs 0.01); at 100 % the pretrained seed 2 is missing
    table = rows(0.1, [0.20, 0.21, 0.22], [0.26, 0.27, 0.28]) + rows(1.0, [0.60, 0.62, 0.64],
                                                                     [0.61, 0.64])
    summary = payoff.summarize(table)
    assert [s["fraction"] for s in summary] == [0.1, 1.0]
    assert summary[0]["gain"]["mean"] == pytest.approx(0.06)
    assert summary[1]["paired_seeds"] == [0, 1]  # seed 2 has no pair
    assert summary[1]["gain"]["mean"] == pytest.approx(0.015)
    assert summary[1]["scratch"]["n"] == 3 and summary[1]["pretrained"]["n"] == 2
    target = payoff.target_check(summary)
    assert target["gain_met"] and target["never_worse"]
    # the same mean gain with seeds spread wider than half of it: not met
    noisy = payoff.summarize(rows(0.1, [0.15, 0.21, 0.27], [0.21, 0.27, 0.33]))
    assert not payoff.target_check(noisy)["gain_met"]
    # pretrained below scratch at one fraction
    worse = payoff.summarize(table + rows(0.25, [0.4, 0.41, 0.42], [0.39, 0.40, 0.41]))
    assert not payoff.target_check(worse)["never_worse"]
