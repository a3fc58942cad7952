"""Metrics: TensorBoard event files (tensorboardX, no TensorFlow needed), DIR/metrics.jsonl and a
progress line (step, loss, img/s, ETA). Only process 0 writes. A metrics.jsonl row that cannot
be written (disk full, I/O error) raises files.WriteError and leaves the rows before it intact;
a row cut short by a killed run is dropped when the next run opens the file. `read_metrics`
reads metrics.jsonl back as per-split columns and `plot_metrics` draws them (notebooks)."""

from __future__ import annotations

import json
import os
import time
from typing import Any, Optional, Sequence

import jax
import numpy as np
from absl import logging

from personvit_jax import files


def _to_python(v: Any) -> Any:
    v = np.asarray(v)
    return v.item() if v.ndim == 0 else v.tolist()


def _format(v: Any) -> str:
    """4 decimals for a float, 3 for each end of an interval ([lo, hi])."""
    if isinstance(v, float):
        return f"{v:.4f}"
    if isinstance(v, list) and len(v) == 2 and all(isinstance(x, float) for x in v):
        return f"[{v[0]:.3f}, {v[1]:.3f}]"
    return str(v)


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
            self._jsonl_path = os.path.join(workdir, "metrics.jsonl")
            self._jsonl = _open_rows(self._jsonl_path)

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
        self._append_row(json.dumps({"step": step, "split": prefix, **row}) + "\n")
        if prefix == "train":
            eta = row.get("eta_s")
            logging.info("step %d/%d  loss %.4f  %s  %s", step, self.total_steps,
                         row.get("loss", float("nan")),
                         f"{row['img_per_s']:.1f} img/s" if "img_per_s" in row else "",
                         f"ETA {time.strftime('%H:%M:%S', time.gmtime(eta))}" if eta else "")
        else:
            logging.info("%s @ step %d: %s", prefix, step,
                         "  ".join(f"{k} {_format(v)}" for k, v in row.items()))
        return row

    def _append_row(self, line: str) -> None:
        """One whole row at the end of metrics.jsonl, or none: a failed write is cut back."""
        end = os.fstat(self._jsonl).st_size
        try:
            data = line.encode()
            while data:
                data = data[os.write(self._jsonl, data):]
        except OSError as e:
            try:
                os.ftruncate(self._jsonl, end)
            except OSError:  # the next run drops the unterminated tail (_open_rows)
                pass
            raise files.write_failed(self._jsonl_path, e, "the rows before it are intact") from e

    def close(self) -> None:
        if self.enabled and self._jsonl is not None:
            self._tb.close()
            os.close(self._jsonl)
            self._jsonl = None


def _open_rows(path: str) -> int:
    """metrics.jsonl opened for appending whole rows: an unterminated last row (a run killed
    while writing it) is cut off first, so that the rows appended after it stay readable."""
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
    size = os.fstat(fd).st_size
    if size and os.pread(fd, 1, size - 1) != b"\n":
        tail = os.pread(fd, min(size, 1 << 20), max(0, size - (1 << 20)))  # rows are short
        os.ftruncate(fd, size - len(tail) + tail.rfind(b"\n") + 1)
    return fd


def read_metrics(path: str) -> dict[str, dict[str, np.ndarray]]:
    """metrics.jsonl of a run (`path`: the workdir or the file) as columns per split:
    {split ('train', 'eval', 'monitor'): {'step': [S] int, key: [S] float, ...}}, sorted by step.

    A resumed run logs again the steps after its last checkpoint (and a final evaluation can
    repeat the last periodic one): the LAST row of a (split, step) wins, i.e. the run that went
    on. A key missing from some rows of a split is NaN there. An unterminated last line (the
    process was killed while writing it) is ignored; any other unreadable line is an error
    naming the file and line.
    """
    if os.path.isdir(path):
        path = os.path.join(path, "metrics.jsonl")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist (a run's workdir holds metrics.jsonl "
                                "once it has logged its first steps)")
    with open(path) as f:
        lines = f.read().split("\n")
    rows: dict[str, dict[int, dict]] = {}
    for line_no, line in enumerate(lines, 1):
        if not line.strip() or (line_no == len(lines) and line):  # empty, or cut short
            continue
        try:
            row = json.loads(line)
            split, step = row.pop("split"), int(row.pop("step"))
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}:{line_no}: not a metrics row with 'step' and 'split' "
                             f"({e}): {line[:120]!r}") from None
        rows.setdefault(split, {})[step] = row
    out = {}
    for split, by_step in rows.items():
        steps = sorted(by_step)
        keys = sorted({k for r in by_step.values() for k, v in r.items()
                       if isinstance(v, (int, float))})
        cols = {"step": np.asarray(steps, np.int64)}
        for k in keys:
            cols[k] = np.asarray([by_step[s].get(k, np.nan) for s in steps], np.float64)
        out[split] = cols
    return out


def plot_metrics(ax, path: str, split: str, keys: Sequence[str], title: str = "",
                 **style) -> None:
    """Draws the columns `keys` of a run's `split` (see `read_metrics`; `path`: workdir or
    metrics.jsonl) against the step on a matplotlib Axes, with a legend. A split or key the run
    never logged is an error naming the file and what it holds."""
    metrics = read_metrics(path)
    if split not in metrics:
        raise KeyError(f"{path}: no {split!r} rows in metrics.jsonl (splits: {sorted(metrics)})")
    cols = metrics[split]
    missing = [k for k in keys if k not in cols]
    if missing:
        raise KeyError(f"{path}: {split!r} rows have no {missing} (columns: {sorted(cols)})")
    for k in keys:
        ax.plot(cols["step"], cols[k], label=k, **style)
    ax.set(xlabel="step", title=title)
    ax.legend()


class _DropLibraryInfo:
    """absl-handler filter: hides INFO chatter of Orbax/Grain (every save logs ~30 lines)."""

    prefixes = ("orbax", "grain", "jax", "tensorstore")

    def filter(self, record) -> bool:
        if record.levelno > 20:
            return True
        return not any(f"/{p}/" in record.pathname for p in self.prefixes)


_LIBRARY_INFO_FILTER = _DropLibraryInfo()


def quiet_library_logs() -> None:
    """Hides the libraries' INFO chatter, whichever handler prints absl's records: absl's own
    (command line, after app.run) or Python's root handlers (e.g. in a notebook)."""
    from absl import logging as absl_logging

    absl_logging.get_absl_handler().addFilter(_LIBRARY_INFO_FILTER)
    absl_logging.get_absl_logger().addFilter(_LIBRARY_INFO_FILTER)
