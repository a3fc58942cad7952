"""The train loop both stages share: step, averaged metrics, checkpoints, periodic evaluation."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from personvit_jax.training import sharding
from personvit_jax.training.checkpointing import Checkpointer
from personvit_jax.training.logging import MetricLogger


def run(state: dict, data_iter, train_step: Callable, *, mesh: Mesh, ckpt: Checkpointer,
        logger: MetricLogger, total_steps: int, log_every: int, eval_every: int,
        eval_fn: Callable[[dict], dict[str, Any]], eval_prefix: str) -> tuple[dict, int]:
    """Trains from state["step"] to `total_steps`; returns (state, last step).

    Metrics are averaged over each logging interval (kept on device in between, so no host
    round-trip per step). Every step is offered to the checkpointer (it saves on its interval;
    the last step is always saved, with the data-iterator position). `eval_fn(state)` runs every
    `eval_every` steps (0 = never) except at the end, which the stage evaluates itself.
    """
    step = first_step = int(state["step"])
    metric_sum, metric_count = None, 0
    while step < total_steps:
        batch = next(data_iter)
        batch.pop("indices")  # record ids stay on the host (for error reports)
        state, metrics = train_step(state, sharding.to_global(batch, mesh))
        step += 1
        metric_sum = metrics if metric_sum is None else jax.tree.map(jnp.add, metric_sum, metrics)
        metric_count += 1
        if step == first_step + 1:
            logger.start(step)  # img/s and ETA clock starts after the compiling step
        if step % log_every == 0 or step == total_steps:
            logger.write(step, jax.tree.map(lambda x: x / metric_count, metric_sum))
            metric_sum, metric_count = None, 0
        ckpt.save(step, state, data_iter, force=step == total_steps)
        if eval_every and step % eval_every == 0 and step != total_steps:
            logger.write(step, eval_fn(state), prefix=eval_prefix)
    return state, step
