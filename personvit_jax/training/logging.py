"""Metrics: TensorBoard event files (tensorboardX, no TensorFlow needed), DIR/metrics.jsonl and a
progress line (step, loss, img/s, ETA). Only process 0 writes."""

from __future__ import annotations

import json
import os
import time
from typing import Any, Optional

import jax
import numpy as np
from absl import logging


def _to_python(v: Any) -> Any:
    v = np.asarray(v)
    return v.item() if v.ndim == 0 else v.tolist()


class MetricLogger:
    def __init__(self, workdir: str, total_steps: int, images_per_step: int):
        self.enabled = jax.process_index() == 0
        self.total_steps, self.images_per_step = total_steps, images_per_step
        self._t0: Optional[float] = None
        self._step0 = 0
        self._tb = None
        if self.enabled:
            os.makedirs(workdir, exist_ok=True)
            from tensorboardX import SummaryWriter
            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
            self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")

    def start(self, step: int) -> None:
        """Starts the img/s and ETA clock at `step` (after compilation, ideally)."""
        self._t0, self._step0 = time.perf_counter(), step

    def write(self, step: int, metrics: dict[str, Any], prefix: str = "train") -> dict[str, Any]:
        """Logs scalars (device arrays are fetched here, once per logging interval)."""
        row = {k: _to_python(v) for k, v in metrics.items()}
        if self._t0 is not None and step > self._step0 and prefix == "train":
            dt = time.perf_counter() - self._t0
            row["img_per_s"] = (step - self._step0) * self.images_per_step / dt
            row["eta_s"] = (self.total_steps - step) * dt / (step - self._step0)
        if not self.enabled:
            return row
        for k, v in row.items():
            if isinstance(v, (int, float)):
                self._tb.add_scalar(f"{prefix}/{k}", v, step)
        self._jsonl.write(json.dumps({"step": step, "split": prefix, **row}) + "\n")
        self._jsonl.flush()
        if prefix == "train":
            eta = row.get("eta_s")
            logging.info("step %d/%d  loss %.4f  %s  %s", step, self.total_steps,
                         row.get("loss", float("nan")),
                         f"{row['img_per_s']:.1f} img/s" if "img_per_s" in row else "",
                         f"ETA {time.strftime('%H:%M:%S', time.gmtime(eta))}" if eta else "")
        else:
            logging.info("%s @ step %d: %s", prefix, step,
                         "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                   for k, v in row.items()))
        return row

    def close(self) -> None:
        if self.enabled:
            self._tb.close()
            self._jsonl.close()


class _DropLibraryInfo:
    """absl-handler filter: hides INFO chatter of Orbax/Grain (every save logs ~30 lines)."""

    prefixes = ("orbax", "grain", "jax", "tensorstore")

    def filter(self, record) -> bool:
        if record.levelno > 20:
            return True
        return not any(f"/{p}/" in record.pathname for p in self.prefixes)


def quiet_library_logs() -> None:
    from absl import logging as absl_logging

    absl_logging.get_absl_handler().addFilter(_DropLibraryInfo())
