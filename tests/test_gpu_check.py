"""benchmarks/gpu/run.sh, the one-command GPU check, dry-run with --cpu: every part runs (tiny
models, one step) and writes the JSON the README says it does. Figures are not checked (speed
on a CPU means nothing here); that each file exists, parses and describes the right run is.

The dry run is also the end-to-end test of benchmarks/train_step.py (both stages, with and
without --remat, on a one-block ViT) and benchmarks/input_pipeline.py (both pipelines, no
workers): tests/test_benchmarks.py covers the other benchmark scripts."""

import json
import os
import subprocess
import sys

from conftest import REPO

TRAIN = {"train_finetune_vit_small": ("finetune", "vit_small", False),
         "train_finetune_vit_base": ("finetune", "vit_base", False),
         "train_pretrain_vit_small": ("pretrain", "vit_small", False),
         "train_pretrain_vit_base": ("pretrain", "vit_base", False),
         "train_pretrain_vit_small_remat": ("pretrain", "vit_small", True),
         "train_pretrain_vit_base_remat": ("pretrain", "vit_base", True)}
PARTS = ["env", "attention", "smoke", *TRAIN, "finetune_e2e", "input_pipeline"]


def _rows(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_gpu_check_dry_run_writes_every_part_as_json(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable}
    for k in ("XLA_FLAGS", "JAX_PLATFORMS", "PERSONVIT_TESTS_ON_DEVICE", "GPU_CHECK_PARTS"):
        env.pop(k, None)
    r = subprocess.run(["bash", os.path.join(REPO, "benchmarks", "gpu", "run.sh"), str(out),
                        "--cpu"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]

    status = {row["part"]: row for row in _rows(out / "parts.jsonl")}
    assert sorted(status) == sorted(PARTS)
    assert all(row["status"] == "ok" for row in status.values()), {
        k: v for k, v in status.items() if v["status"] != "ok"}
    rows = {part: _rows(out / f"{part}.jsonl") for part in PARTS}
    assert all(rows.values()), [p for p, v in rows.items() if not v]

    (e,) = rows["env"]
    assert e["jax_backend"] == "cpu" and "jax" in e["packages"]
    attn = {row["impl"]: row for row in rows["attention"]}
    assert sorted(attn) == ["auto", "cudnn", "explicit", "xla"]
    assert "error" in attn["cudnn"] and attn["auto"]["auto_picks"] == "xla"  # no cuDNN on a CPU
    for impl in ("auto", "xla", "explicit"):  # bfloat16 inputs against the float32 reference
        assert 0 < attn[impl]["rel_err_out"] < 2e-2 and attn[impl]["fwd_bwd_ms"] > 0
    assert rows["smoke"] and all(t["outcome"] == "passed" for t in rows["smoke"])
    for part, (stage, model, remat) in TRAIN.items():
        (t,) = rows[part]
        assert (t["stage"], t["model"], t["remat"]) == (stage, model, remat)
        assert t["img_per_s"] > 0 and t["flops_per_step"] > 0 and t["backend"] == "cpu"
        assert 0 < t["fraction_of_matmul_peak"] and t["batch"] == (8 if stage == "finetune" else 2)
        # uint8 views + drawn colour parameters: the colour augmentation runs in the timed step
        assert t["image_size"] == ("64x32" if stage == "finetune" else "2x64x32+2x32x16")
    (ft,) = rows["finetune_e2e"]
    assert 0 <= ft["mAP"] <= 1 and ft["img_per_s"] > 0 and ft["steps"] > 0
    assert [(p["pipeline"], p["num_workers"], p["batch"]) for p in rows["input_pipeline"]] == [
        ("finetune", 0, 8), ("pretrain", 0, 8)]
    assert all(p["img_per_s"] > 0 for p in rows["input_pipeline"])

    tagged = _rows(out / "results.jsonl")
    assert len(tagged) == sum(map(len, rows.values())) + len(status)
    assert {row["file"] for row in tagged} == {*PARTS, "parts"}
    assert "train_finetune_vit_small" in r.stdout  # the closing table
