r"""Feature extraction speed on this CPU: ViT-S/16 at 256x128, img/s, per backend and batch size.

  python benchmarks/extract_speed.py                          # batch 1 and 64, 2 threads
  python benchmarks/extract_speed.py --batches=1,64 --runs=7 --threads=2
  python benchmarks/extract_speed.py --model=vit_tiny --image_size=64,32 --batches=1 --runs=1 \
      --images_per_sample=1                                   # a smoke run (tests)

One function, several ways to run it, each end to end from decoded pixels (uint8 [B, 256, 128,
3] RGB in host memory) to L2-normalised features in host memory (the retrieval feature before
the BNNeck):

  jax           our jitted extractor (`tools/export.extractor_fn`, what extract/evaluate use)
  jax_export    the `jax.export` artifact of `tools/export.py`, deserialised and called
  onnx          ONNX Runtime (CPU provider) on our ONNX graph (`--format=onnx`, uint8 input)
  torch         PyTorch eager with the original model code (the PersonViT / TransReID modules
                of tests/fixtures/make_weights_fixtures.py), normalisation in the module
  torch_onnx    that module exported by PyTorch's own ONNX exporter, in ONNX Runtime

With PyTorch installed, the weights are random (benchmarks/convert_parity.py's `torch_model`),
saved as .pth and converted by `tools/convert`, so every backend computes the same function
(`max_abs_vs_jax` says how closely); without it, a random JAX initialisation and the first
three backends. Threads: ONNX Runtime's and PyTorch's intra-op pools are set to --threads;
XLA's pool follows the CPU affinity, which is narrowed to --threads CPUs before JAX loads.
Each timed sample is ceil(--images_per_sample / batch) calls; the backends alternate
within each of --runs rounds (after a warm-up round), and each JSON line reports the median:

  {"backend", "batch", "img_per_s", "ms_per_batch", "runs", "threads", "max_abs_vs_jax",
   "vs_torch_onnx" (img/s ratio to torch_onnx at that batch, when it ran)}
"""

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLASSES = 751
BACKENDS = ("jax", "jax_export", "onnx", "torch", "torch_onnx")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="vit_small", help="one of models/vit.py's VIT_SIZES")
    p.add_argument("--image_size", default="256,128", help="H,W (multiples of 16)")
    p.add_argument("--batches", default="1,64", help="comma-separated batch sizes")
    p.add_argument("--images_per_sample", type=int, default=16,
                   help="a timed sample is ceil(this / batch) calls")
    p.add_argument("--runs", type=int, default=5, help="timed rounds (after one warm-up)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for every backend")
    p.add_argument("--backends", default=",".join(BACKENDS), help="subset of " + ",".join(BACKENDS))
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    a.batches = [int(b) for b in a.batches.split(",")]
    a.image_size = tuple(int(x) for x in a.image_size.split(","))
    a.backends = a.backends.split(",")
    unknown = sorted(set(a.backends) - set(BACKENDS))
    if unknown or a.runs < 1 or a.threads < 1 or min(a.batches) < 1:
        p.error(f"--backends {unknown} unknown / --runs, --threads, --batches must be >= 1")
    return a


def limit_threads(threads: int) -> list[int]:
    """Before numerical libraries load: at most `threads` CPUs (XLA sizes its pool from the
    affinity) and OpenMP / MKL pools of that size. Returns the CPUs kept."""
    cpus = sorted(os.sched_getaffinity(0))[:threads]
    os.sched_setaffinity(0, cpus)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    return cpus


# ---------------------------------------------------------------------------- the model
def torch_reference(model_name: str, seed: int, image_hw, workdir: str):
    """(PyTorch module uint8 BHWC -> features, converted checkpoint folder), or (None, folder of
    a random JAX initialisation) without PyTorch."""
    from personvit_jax.tools import convert

    ckpt = os.path.join(workdir, "converted")
    try:
        import torch
    except ImportError:
        return None, random_jax_checkpoint(model_name, seed, image_hw, ckpt)
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    from convert_parity import torch_model  # noqa: E402  (this folder; needs PyTorch)

    model = torch_model(model_name, seed, image_hw)
    torch.save(model.state_dict(), os.path.join(workdir, "model.pth"))
    convert.convert(os.path.join(workdir, "model.pth"), ckpt, image_size=image_hw,
                    log=lambda *_: None)
    return model, ckpt


def random_jax_checkpoint(model_name: str, seed: int, image_hw, ckpt: str) -> str:
    import jax
    import numpy as np

    from personvit_jax.config_args import load_config
    from personvit_jax.models.reid import reid_model_from_config
    from personvit_jax.tools.convert import write_checkpoint

    config = load_config("finetune", f"model={model_name}")
    config.data.image_size = tuple(image_hw)
    x = np.zeros((1, *image_hw, 3), np.float32)
    variables = reid_model_from_config(config, NUM_CLASSES).init(jax.random.key(seed), x)
    write_checkpoint(ckpt, jax.tree.map(np.asarray, dict(variables)), config)
    return ckpt


def torch_extractor(model, mean, std):
    """The PyTorch ReID model behind uint8 BHWC -> normalised pixels, L2-normalised output."""
    import torch

    class Extractor(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model.eval()
            self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

        def forward(self, images_bhwc_u8):
            x = images_bhwc_u8.permute(0, 3, 1, 2).float() / 255.0
            return torch.nn.functional.normalize(self.model((x - self.mean) / self.std), dim=-1)
    return Extractor().eval()


# ---------------------------------------------------------------------------- the backends
def ort_session(path_or_bytes, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(path_or_bytes, opts, providers=["CPUExecutionProvider"])
    return lambda images: session.run(None, {"images": images})[0]


def build_backends(names, model, ckpt: str, workdir: str, threads: int) -> dict:
    """name -> fn(uint8 images [B, H, W, 3] numpy) -> features numpy [B, D]."""
    import jax
    import numpy as np

    from personvit_jax.tools import export

    out = {}
    fn, info = export.extractor_fn(ckpt)
    if "jax" in names:
        jitted = jax.jit(fn)
        out["jax"] = lambda images: np.asarray(jitted(images))
    if "jax_export" in names:
        exported, _ = export.export_extractor(ckpt, platforms=("cpu",))
        called = jax.jit(jax.export.deserialize(exported.serialize()).call)
        out["jax_export"] = lambda images: np.asarray(called(images))
    if "onnx" in names:
        graph, _, _ = export.export_onnx(ckpt)
        out["onnx"] = ort_session(graph.SerializeToString(), threads)
    if model is not None and {"torch", "torch_onnx"} & set(names):
        import torch

        torch.set_num_threads(threads)
        extractor = torch_extractor(model, info["mean"], info["std"])

        def eager(images):
            with torch.inference_mode():
                return extractor(torch.from_numpy(images)).numpy()
        if "torch" in names:
            out["torch"] = eager
        if "torch_onnx" in names:
            path = os.path.join(workdir, "torch.onnx")
            example = torch.zeros((2, *info["image_size"], 3), dtype=torch.uint8)
            torch.onnx.export(extractor, (example,), path, input_names=["images"],
                              output_names=["features"], dynamic_axes={"images": {0: "batch"}},
                              opset_version=17, dynamo=False)
            out["torch_onnx"] = ort_session(path, threads)
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    cpus = limit_threads(args.threads)
    sys.path.insert(0, REPO)
    import warnings

    import numpy as np

    warnings.filterwarnings("ignore")  # the legacy ONNX exporter's and tracer's warnings
    with tempfile.TemporaryDirectory() as workdir:
        model, ckpt = torch_reference(args.model, args.seed, args.image_size, workdir)
        backends = build_backends(args.backends, model, ckpt, workdir, args.threads)
        rng = np.random.default_rng(args.seed + 1)
        rows = []
        for batch in args.batches:
            images = rng.integers(0, 256, (batch, *args.image_size, 3), dtype=np.uint8)
            reference = backends["jax"](images) if "jax" in backends else None
            calls = math.ceil(args.images_per_sample / batch)
            names = list(backends)
            times, gaps = {name: [] for name in names}, {}
            for run in range(args.runs + 1):  # round 0 warms up (compilation, allocations)
                for name in names[run % len(names):] + names[:run % len(names)]:
                    start = time.perf_counter()
                    for _ in range(calls):
                        features = backends[name](images)
                    if run:
                        times[name].append((time.perf_counter() - start) / calls)
                    elif reference is not None:
                        gaps[name] = float(np.abs(features - reference).max())
            for name in names:
                seconds = statistics.median(times[name])
                rows.append({"backend": name, "batch": batch,
                             "img_per_s": round(batch / seconds, 2),
                             "ms_per_batch": round(seconds * 1e3, 2), "runs": args.runs,
                             "threads": args.threads, "cpus": cpus, "model": args.model,
                             "image_size": list(args.image_size),
                             "max_abs_vs_jax": gaps.get(name)})
    for row in rows:
        ref_row = next((r for r in rows if r["backend"] == "torch_onnx"
                        and r["batch"] == row["batch"]), None)
        if ref_row is not None:
            row["vs_torch_onnx"] = round(row["img_per_s"] / ref_row["img_per_s"], 3)
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
