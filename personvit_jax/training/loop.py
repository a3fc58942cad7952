"""The train loop both stages share: step, averaged metrics, checkpoints, periodic evaluation,
preemption (SIGTERM -> checkpoint -> exit 0), the non-finite guard, and the stop on a failed
write (checkpoint, metrics or results: one line naming the file and the checkpoint a rerun
resumes from)."""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import threading
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from personvit_jax import files
from personvit_jax.training import sharding
from personvit_jax.training.checkpointing import Checkpointer
from personvit_jax.training.logging import MetricLogger

NONFINITE_MODES = ("stop", "skip")


class NonFiniteError(FloatingPointError):
    """A train step produced a NaN/Inf loss or gradient (config.nonfinite = 'stop')."""


# ---------------------------------------------------------------------------- non-finite guard
def guard_nonfinite(old_state: dict, new_state: dict, metrics: dict) -> tuple[dict, dict]:
    """In-jit: when the loss or the gradient norm is not finite, keep every array of `old_state`
    (parameters, optimizer, EMA teacher, centres...) and only advance the step counter, so bad
    numbers never reach the state or a checkpoint. Adds metrics['nonfinite'] (0. or 1.)."""
    finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
    state = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new_state, old_state)
    state["step"] = new_state["step"]
    return state, dict(metrics, nonfinite=1.0 - finite.astype(jnp.float32))


def _check_pending(pending: collections.deque, mode: str) -> int:
    """Host side of the guard over the steps run since the last check: 'stop' raises at the
    first bad step (naming the step, loss terms and record ids), 'skip' logs each one. Returns
    the number of bad steps. Fetching only at checks keeps steps dispatched asynchronously."""
    flags = jax.device_get([m["nonfinite"] for _, _, m in pending])
    bad = 0
    for (step, indices, metrics), flag in zip(pending, flags):
        if not flag:
            continue
        bad += 1
        terms = {k: float(v) for k, v in jax.device_get(metrics).items()
                 if k.endswith("loss") or k == "grad_norm"}
        msg = (f"non-finite loss or gradient at step {step}: {terms}; batch record ids "
               f"{np.asarray(indices).ravel().tolist()}")
        if mode == "stop":
            raise NonFiniteError(msg + " (the state was not updated and no checkpoint was "
                                 "written after it; set config.nonfinite='skip' to skip such "
                                 "steps)")
        logging.warning("skipped: %s", msg)
    pending.clear()
    return bad


def _accumulate(metric_sum: dict | None, metrics: dict) -> dict:
    """Running on-device sums; a skipped (non-finite) step adds zeros, and 'nonfinite' counts."""
    ok = metrics["nonfinite"] == 0
    m = {k: (v if k == "nonfinite" else jnp.where(ok, v, 0.0)) for k, v in metrics.items()}
    return m if metric_sum is None else jax.tree.map(jnp.add, metric_sum, m)


def _interval_means(metric_sum: dict, count: int) -> dict:
    """Means over the finite steps of a logging interval (+ the number of skipped steps)."""
    good = jnp.maximum(count - metric_sum["nonfinite"], 1.0)
    return {k: (v if k == "nonfinite" else v / good) for k, v in metric_sum.items()}


# ---------------------------------------------------------------------------- preemption
class PreemptionWatch:
    """SIGTERM (a scheduler's preemption notice) -> the loop saves at the next step and stops.

    Multi-process runs use JAX's preemption sync service, which catches SIGTERM itself and makes
    every process agree on the same step; a single process uses its own handler."""

    def __init__(self):
        self.requested = False
        self._distributed = jax.process_count() > 1
        self._previous = None
        if not self._distributed and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        del frame
        logging.warning("signal %d received: saving a checkpoint after this step, then exiting",
                        signum)
        self.requested = True

    def reached(self, step: int) -> bool:
        if self._distributed:
            return multihost_utils.reached_preemption_sync_point(step)
        return self.requested

    def close(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


# ---------------------------------------------------------------------------- failed writes
@contextlib.contextmanager
def stop_on_failed_write(ckpt: Checkpointer, logger: MetricLogger):
    """A write that failed in the block (files.WriteError: a checkpoint, metrics.jsonl,
    eval_results.json) stops the run: the logger is closed, any save in flight completes, and
    the error goes on with the latest complete checkpoint, read back, named as the rerun's
    starting point. Nothing is retried: the disk is full, or the folder not writable."""
    try:
        yield
    except files.WriteError as e:
        with contextlib.suppress(Exception):
            logger.close()
        err = files.WriteError(f"{e}; {ckpt.resume_note()}")
        err.errno = e.errno
        raise err from e


# ---------------------------------------------------------------------------- the loop
def run(state: dict, data_iter, train_step: Callable, *, mesh: Mesh, ckpt: Checkpointer,
        logger: MetricLogger, total_steps: int, log_every: int, eval_every: int,
        eval_fn: Callable[[dict], dict[str, Any]], eval_prefix: str,
        nonfinite: str = "stop", checkpoint_data: bool = True) -> tuple[dict, int, bool]:
    """Trains from state["step"] to `total_steps`; returns (state, last step, preempted).

    Metrics are averaged over each logging interval (kept on device in between, so no host
    round-trip per step). Every step is offered to the checkpointer (it saves on its interval;
    the last step is always saved, with the data-iterator position). The non-finite flags are
    checked before every save, log and evaluation, so a checkpoint never follows a bad step in
    'stop' mode. `eval_fn(state)` runs every `eval_every` steps (0 = never) except at the end,
    which the stage evaluates itself. On SIGTERM: save at the next step, return preempted=True.
    checkpoint_data=False: the iterator position is not saved (a stage whose batches follow
    from the saved state alone, e.g. usl's, rebuilds its iterator at state["step"]).
    """
    step = first_step = int(state["step"])
    metric_sum, metric_count = None, 0
    pending: collections.deque = collections.deque()
    preempted = False
    with contextlib.closing(PreemptionWatch()) as watch, stop_on_failed_write(ckpt, logger):
        while step < total_steps:
            batch = next(data_iter)
            indices = batch.pop("indices")  # record ids stay on the host (for error reports)
            state, metrics = train_step(state, sharding.to_global(batch, mesh))
            step += 1
            pending.append((step, indices, metrics))
            metric_sum = _accumulate(metric_sum, metrics)
            metric_count += 1
            if step == first_step + 1:
                logger.start(step)  # img/s and ETA clock starts after the compiling step
            preempted = watch.reached(step)
            log_now = step % log_every == 0 or step == total_steps
            eval_now = bool(eval_every) and step % eval_every == 0 and step != total_steps
            force = step == total_steps or preempted
            if log_now or eval_now or force or ckpt.manager.should_save(step):
                try:
                    _check_pending(pending, nonfinite)
                except NonFiniteError:
                    ckpt.wait_until_finished()  # the last good checkpoint completes
                    raise
            if log_now:
                logger.write(step, _interval_means(metric_sum, metric_count))
                metric_sum, metric_count = None, 0
            ckpt.save(step, state, data_iter if checkpoint_data else None, force=force)
            if preempted:
                ckpt.wait_until_finished()
                logging.warning("preempted: checkpoint of step %d saved in %s; rerun the same "
                                "command to resume", step, ckpt.directory)
                break
            if eval_now:
                logger.write(step, eval_fn(state), prefix=eval_prefix)
    return state, step, preempted


def finish(state: dict, step: int, *, eval_fn: Callable[[dict], dict[str, Any]],
           eval_prefix: str, logger: MetricLogger, ckpt: Checkpointer, workdir: str,
           results: dict[str, Any]) -> dict[str, Any]:
    """A stage's end after the last step: the final evaluation, logged and written by process 0
    to <workdir>/eval_results.json (`results` fields first, then step and the summary); the
    logger and checkpointer closed. Returns the summary."""
    with stop_on_failed_write(ckpt, logger):
        summary = eval_fn(state)
        logger.write(step, summary, prefix=eval_prefix)
        if jax.process_index() == 0:
            files.write_json(os.path.join(workdir, "eval_results.json"),
                             {**results, "step": step, **summary})
        logger.close()
        ckpt.close()
    return summary


def close_preempted(logger: MetricLogger, ckpt: Checkpointer, step: int) -> dict:
    """A stage's exit after preemption: no final evaluation, files closed, exit status 0."""
    logger.close()
    ckpt.close()
    return {"preempted": True, "step": step}
