r"""Input-pipeline speed: images per second delivered by the training pipelines, one JSON line per
(pipeline, number of Grain worker processes), so runs on different hosts can be compared.

  python benchmarks/input_pipeline.py --pipeline=finetune --workers=0,1,2
  python benchmarks/input_pipeline.py --pipeline=pretrain --workers=0,2 --batches=10

finetune: the P x K pipeline of configs/finetune.py (256x128, flip, pad + crop, random erasing;
          batch 64). pretrain: the multi-crop pipeline of configs/pretrain.py (2 global 256x128
          + 8 local 128x64 crops, uint8, with their colour-jitter / grayscale / blur / solarise
          parameters, which the train step applies on the device, and the student masks;
          batch 64). Images: Market-1501-size JPEGs (128x64) of the synthetic set, read from
          its TFDS records as every dataset is, generated and built under --data_dir (default:
          a temporary folder) unless already there.
workers=0 runs the loaders in the iterator's prefetch threads inside this process; N > 0 uses
N Grain worker processes. The first batch (worker start-up) is not timed.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

from absl import flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from personvit_jax.config_args import load_config  # noqa: E402
from personvit_jax import datasets  # noqa: E402
from personvit_jax.data import pipeline  # noqa: E402
from personvit_jax.models.vit import grid_size  # noqa: E402

# A few hundred Market-size images are enough: every batch is decoded and augmented afresh.
SYNTHETIC = {"seed": 0, "num_train_ids": 120, "num_test_ids": 10, "images_per_id": (4, 8),
             "num_distractors": 10, "num_junk": 5}


def finetune_iterator(split, config, num_steps, workers):
    config.data.num_workers = workers
    return pipeline.train_iterator(split, config.data, num_steps, config.seed)


def pretrain_iterator(split, config, num_steps, workers):
    d = config.data
    d.num_workers = workers
    grid = grid_size(d.global_size, config.model.patch_size, config.model.patch_stride)
    return pipeline.pretrain_iterator(split, d, config.mask, grid, d.batch_size,
                                      num_steps, config.seed)


def measure(make_iter, batches: int) -> tuple[float, int, list[float]]:
    """(img/s over the timed batches, images per batch, per-batch seconds)."""
    it = iter(make_iter(batches + 1))
    first = next(it)  # worker start-up, first decode
    n = len(first["indices"])
    times = []
    t_all = time.perf_counter()
    for _ in range(batches):
        t = time.perf_counter()
        next(it)
        times.append(time.perf_counter() - t)
    return n * batches / (time.perf_counter() - t_all), n, times


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--pipeline", choices=["finetune", "pretrain", "both"], default="both")
    p.add_argument("--workers", default="0,1,2",
                   help="comma-separated Grain worker counts to measure")
    p.add_argument("--batches", type=int, default=20, help="timed batches per figure")
    p.add_argument("--batch", type=int, default=64, help="images per batch")
    p.add_argument("--data_dir", default=None,
                   help="where the synthetic set's build is (made if absent); default: a temp "
                   "dir")
    args = p.parse_args()
    flags.FLAGS.mark_as_parsed()  # Grain's worker processes read absl flags (defaults here)
    if args.batch % 4:
        p.error("--batch must be a multiple of K = 4")

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data_dir or tmp
        split = datasets.load_splits("synthetic", data_dir, SYNTHETIC)["train"]
        stages = ["finetune", "pretrain"] if args.pipeline == "both" else [args.pipeline]
        for stage in stages:
            config = load_config(stage, "")
            if stage == "finetune":
                config.data.num_ids_per_batch = args.batch // config.data.num_instances
            else:
                config.data.batch_size = args.batch
            make = finetune_iterator if stage == "finetune" else pretrain_iterator
            for workers in (int(w) for w in args.workers.split(",")):
                rate, n, times = measure(lambda s: make(split, config, s, workers),
                                         args.batches)
                print(json.dumps({
                    "pipeline": stage, "num_workers": workers, "batch": n,
                    "img_per_s": round(rate, 1),
                    "img_per_s_per_worker": round(rate / workers, 1) if workers else None,
                    "batch_time_median_s": round(statistics.median(times), 4),
                    "timed_batches": args.batches, "cpu_count": os.cpu_count(),
                    "source_images": len(split)}), flush=True)


if __name__ == "__main__":
    main()
