"""JSON for benchmarks/gpu/run.sh: the parts that print no JSON of their own, each part's status
row, and the closing table. Standard library only (it also runs before the wheels are in).

  python3 report.py env                          # machine, versions, devices: one JSON line
  python3 report.py status PART RC SECONDS LOG   # one status row (rc 124 = timed out)
  python3 report.py junit FILE.xml               # one line per test of a pytest --junitxml
  python3 report.py finetune WORKDIR WALL_S      # img/s and mAP of a personvit_jax.main run
  python3 report.py table OUT_DIR                # the short table run.sh prints last
"""

import glob
import json
import os
import platform
import subprocess
import sys
import xml.etree.ElementTree as ET

PACKAGES = ["jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda12-plugin", "flax", "optax",
            "orbax-checkpoint", "numpy", "grain", "tensorflow-datasets", "array_record",
            "ml-collections", "tensorboardX", "protobuf", "etils", "nvidia-cudnn-cu13",
            "nvidia-cudnn-cu12"]


def env() -> dict:
    from importlib import metadata

    row = {"python": platform.python_version(), "cpu_count": os.cpu_count(),
           "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS"), "packages": {}}
    for name in PACKAGES:
        try:
            row["packages"][name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    try:
        q = "name,memory.total,driver_version,clocks.sm,clocks.max.sm,temperature.gpu"
        out = subprocess.run(["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20).stdout.strip()
        row["nvidia_smi"] = out or None
    except (OSError, subprocess.TimeoutExpired):
        row["nvidia_smi"] = None
    try:
        import jax

        row["jax_backend"] = jax.default_backend()
        row["devices"] = [f"{d.platform}:{d.device_kind}" for d in jax.devices()]
        try:
            from jax._src.lib import cuda_versions
            row["cudnn_version"] = cuda_versions.cudnn_get_version() if cuda_versions else None
        except Exception:  # noqa: BLE001 -- a private module: absent or changed is fine
            row["cudnn_version"] = None
    except Exception as e:  # noqa: BLE001 -- recorded: no usable JAX is itself the finding
        row["jax_error"] = f"{type(e).__name__}: {e}"[:500]
    return row


def status(part: str, rc: int, seconds: float, log: str) -> dict:
    kind = ("ok" if rc == 0 else "timeout" if rc in (124, 137) else "skipped" if rc == -1
            else "failed")
    row = {"part": part, "status": kind, "rc": rc, "seconds": round(seconds, 1)}
    if kind in ("failed", "timeout") and os.path.exists(log):
        with open(log, errors="replace") as f:
            row["log_tail"] = f.read()[-1500:]
    return row


def junit(path: str) -> list[dict]:
    rows = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome = "passed"
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                message = (node.get("message") or node.text or "")[:800]
                break
        row = {"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
               "seconds": round(float(case.get("time", 0)), 2)}
        if outcome != "passed":
            row["message"] = message
        rows.append(row)
    return rows


def finetune(workdir: str, wall_s: float) -> dict:
    """The run's last training img/s (since the first step after compilation), its final
    evaluation and its loss at the first and last logged steps."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    train = [r for r in rows if r.get("split") == "train"]
    with open(os.path.join(workdir, "eval_results.json")) as f:
        result = json.load(f)
    return {"img_per_s": round(train[-1]["img_per_s"], 1) if "img_per_s" in train[-1] else None,
            "steps": result.get("step"), "wall_s": round(wall_s, 1),
            "loss_first": train[0].get("loss"), "loss_last": train[-1].get("loss"),
            **{k: result[k] for k in ("mAP", "mINP", "rank1", "rank5", "num_valid_queries")
               if k in result}}


def _fmt(row: dict, keys) -> str:
    return "  ".join(f"{k}={row[k]}" for k in keys if row.get(k) is not None)


def table(out_dir: str) -> str:
    """One line per figure, for the end of the output the device tool returns."""
    lines = []
    for path in sorted(glob.glob(os.path.join(out_dir, "*.jsonl"))):
        name = os.path.basename(path)[:-6]
        if name in ("parts", "results"):
            continue
        with open(path) as f:
            for line in f:
                r = json.loads(line)
                if "img_per_s" in r and "stage" in r:
                    keys = ("model", "batch", "dtype", "remat", "img_per_s",
                            "achieved_tflop_per_s", "mfu", "fraction_of_matmul_peak", "setup_s")
                elif "impl" in r:
                    keys = ("impl", "shape_bnhd", "fwd_bwd_ms", "rel_err_out", "rel_err_dq",
                            "error")
                elif "pipeline" in r:
                    keys = ("pipeline", "num_workers", "img_per_s")
                elif "test" in r:
                    keys = ("test", "outcome", "seconds")
                elif "mAP" in r:
                    keys = ("img_per_s", "mAP", "rank1", "steps", "wall_s")
                else:
                    keys = ("jax_backend", "devices", "cudnn_version", "nvidia_smi")
                lines.append(f"{name:22s} {_fmt(r, keys)}")
    with open(os.path.join(out_dir, "parts.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            lines.append(f"{'part':22s} {r['part']}: {r['status']} ({r['seconds']} s)")
    return "\n".join(lines)


def main(argv):
    cmd, args = argv[1], argv[2:]
    if cmd == "env":
        print(json.dumps(env()))
    elif cmd == "status":
        print(json.dumps(status(args[0], int(args[1]), float(args[2]), args[3])))
    elif cmd == "junit":
        for row in junit(args[0]):
            print(json.dumps(row))
    elif cmd == "finetune":
        print(json.dumps(finetune(args[0], float(args[1]))))
    elif cmd == "table":
        print(table(args[0]))
    else:
        sys.exit(f"unknown command {cmd!r}; see {__file__}'s docstring")


if __name__ == "__main__":
    main(sys.argv)
