"""The benchmark scripts run end to end (smallest settings) and print the JSON lines the README
documents. Their figures are speed, not checked here; this catches a script that no longer runs
against the package (a renamed function, a changed config)."""

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


def test_input_pipeline_bench(tmp_path):
    rows = _run("input_pipeline.py", "--pipeline=both", "--workers=0", "--batches=1",
                "--batch=8", f"--data_dir={tmp_path}")
    assert [(r["pipeline"], r["num_workers"], r["batch"]) for r in rows] == [
        ("finetune", 0, 8), ("pretrain", 0, 8)]
    assert all(r["img_per_s"] > 0 for r in rows)


# A one-block, 64-wide ViT: the scripts' code paths at a fraction of ViT-Tiny's compile time.
TINY = ("--set", "model.depth=1", "--set", "model.width=64", "--set", "model.num_heads=2")


def test_train_step_bench_tiny():
    (row,) = _run("train_step.py", "--stage=finetune", "--model=vit_tiny", "--batch=8",
                  "--steps=1", *TINY, "--set", "data.image_size=(64,32)")
    assert row["stage"] == "finetune" and row["batch"] == 8 and row["img_per_s"] > 0
    assert row["flops_per_step"] > 0 and 0 < row["fraction_of_matmul_peak"]


def test_torch_reference_bench_tiny():
    pytest.importorskip("torch", reason="the PyTorch reference needs requirements-convert.txt")
    (row,) = _run("torch_reference.py", "--model=vit_tiny", "--batch=8", "--steps=1")
    assert (row["framework"], row["stage"], row["batch"]) == ("pytorch", "finetune", 8)
    assert row["img_per_s"] > 0


def test_pretrain_step_bench_tiny():
    # uint8 views + drawn colour parameters: the colour augmentation runs inside the timed step
    (row,) = _run("train_step.py", "--stage=pretrain", "--model=vit_tiny", "--batch=2",
                  "--steps=1", *TINY, "--set", "data.global_size=(64,32)", "--set",
                  "data.local_size=(32,16)", "--set", "data.num_local_crops=2", "--set",
                  "head.out_dim=64", "--set", "head.patch_out_dim=64", "--set",
                  "head.hidden_dim=32", "--set", "head.bottleneck_dim=16")
    assert row["stage"] == "pretrain" and row["image_size"] == "2x64x32+2x32x16"
    assert row["img_per_s"] > 0 and row["flops_per_step"] > 0


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
