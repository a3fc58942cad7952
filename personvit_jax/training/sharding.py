"""Device mesh and shardings: one place for how arrays are laid out over devices.

The mesh has two axes, `data` x `fsdp` (`config.mesh`; -1 = the devices the other axis leaves).
Batches are split over BOTH axes (every device gets its own images). The train state follows
`STATE_RULES`, regexes over array paths ("params/backbone/blocks_0/attn/qkv/kernel",
"opt_state/0/mu/...", "teacher/head/last_layer/weight_v", ...), first match wins:

  replicated  every device holds the whole array;
  fsdp        the array is split over the `fsdp` axis along its largest dimension divisible by
              the axis size, when it has at least `config.mesh.fsdp_min_size` elements (else
              replicated: gathering a bias costs more than storing it).

With fsdp = 1 everything is replicated (plain data parallelism). XLA's SPMD partitioner inserts
the all-gathers (forward/backward) and reduce-scatters (gradients), so the stages' train steps
are the same code on 1 device, N local devices, FSDP or N hosts.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from personvit_jax.trees import path_name

MESH_AXES = ("data", "fsdp")
BATCH_AXES = MESH_AXES  # the leading (batch) axis is split over every device

REPLICATED, FSDP = "replicated", "fsdp"
STATE_RULES = (
    # Class / position / mask / camera tokens are added to every token of every image, and the
    # pretraining centres [1, K] to every teacher output: keep them whole.
    (r"(^|/)(cls_token|pos_embed|mask_token|sie_embed|center|center_patch)$", REPLICATED),
    # Everything else (kernels, their optimizer moments, the EMA teacher): FSDP when large.
    (r".*", FSDP),
)
DEFAULT_FSDP_MIN_SIZE = 2 ** 16  # elements (256 KB in float32)


def mesh_shape(mesh_cfg, num_devices: int) -> tuple[int, int]:
    """(data, fsdp) axis sizes from `config.mesh` (-1 on one axis = the devices left over)."""
    data = mesh_cfg.get("data", -1) if mesh_cfg is not None else -1
    fsdp = mesh_cfg.get("fsdp", 1) if mesh_cfg is not None else 1
    if data == -1 and fsdp == -1:
        raise ValueError("config.mesh.data and config.mesh.fsdp are both -1: at most one axis "
                         "can take the remaining devices")
    for key, v in (("data", data), ("fsdp", fsdp)):
        if v != -1 and v < 1:
            raise ValueError(f"config.mesh.{key}={v}: expected -1 or a positive device count")
    if data == -1 or fsdp == -1:
        known, key = (fsdp, "fsdp") if data == -1 else (data, "data")
        if num_devices % known:
            raise ValueError(f"config.mesh.{key}={known} does not divide the {num_devices} "
                             "devices here")
        rest = num_devices // known
        data, fsdp = (rest, fsdp) if data == -1 else (data, rest)
    if data * fsdp > num_devices:
        raise ValueError(f"config.mesh.data x config.mesh.fsdp = {data} x {fsdp} = "
                         f"{data * fsdp} devices, but only {num_devices} are here")
    return data, fsdp


def make_mesh(mesh_cfg=None, devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
    """Mesh (`data`, `fsdp`) from `config.mesh` (None: all devices on `data`).

    Devices are taken in `jax.devices()` order (process-major), so `fsdp` (the inner axis)
    stays within a host while it fits there and `data` spans hosts: the frequent parameter
    all-gathers run over the fast intra-host links.
    """
    devices = list(jax.devices() if devices is None else devices)
    data, fsdp = mesh_shape(mesh_cfg, len(devices))
    if jax.process_count() > 1 and data * fsdp != len(devices):
        raise ValueError(f"config.mesh = (data {data}, fsdp {fsdp}): multi-process runs must "
                         f"use all {len(devices)} devices (set one axis to -1)")
    return Mesh(np.asarray(devices[:data * fsdp]).reshape(data, fsdp), MESH_AXES)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over `data` x `fsdp`."""
    return NamedSharding(mesh, P(BATCH_AXES))


def state_spec(name: str, shape: Sequence[int], fsdp_size: int,
               min_size: int = DEFAULT_FSDP_MIN_SIZE) -> P:
    """PartitionSpec of one state array from `STATE_RULES` (see the module docstring)."""
    rule = next(kind for pattern, kind in STATE_RULES if re.search(pattern, name))
    if rule == REPLICATED or fsdp_size == 1 or int(np.prod(shape)) < min_size:
        return P()
    divisible = [i for i, n in enumerate(shape) if n % fsdp_size == 0]
    if not divisible:
        return P()
    axis = max(divisible, key=lambda i: shape[i])  # ties: the first such axis
    return P(*[FSDP if i == axis else None for i in range(len(shape))])


def state_shardings(state: Any, mesh: Mesh, min_size: int = DEFAULT_FSDP_MIN_SIZE) -> Any:
    """NamedSharding per leaf of a (possibly abstract) train state, by `STATE_RULES`."""
    fsdp_size = mesh.shape[FSDP]
    return jax.tree_util.tree_map_with_path(
        lambda path, x: NamedSharding(mesh, state_spec(path_name(path), x.shape, fsdp_size,
                                                       min_size)), state)


def init_sharded(init_fn: Callable[[], Any], mesh: Mesh, mesh_cfg=None) -> tuple[Any, Any]:
    """(state, shardings): `init_fn()` run under jit straight into its shardings (large arrays
    are created sharded; no device ever holds a full copy of an FSDP array)."""
    min_size = (mesh_cfg.get("fsdp_min_size", DEFAULT_FSDP_MIN_SIZE) if mesh_cfg is not None
                else DEFAULT_FSDP_MIN_SIZE)
    shardings = state_shardings(jax.eval_shape(init_fn), mesh, min_size)
    return jax.jit(init_fn, out_shardings=shardings)(), shardings


def jit_train_step(step_fn: Callable, state_shardings: Any, mesh: Mesh) -> Callable:
    """jit of a stage's `step_fn(state, batch) -> (state, metrics)`: the state keeps its
    shardings and is donated (updated in place), the batch is split over the batch axes,
    metrics come back replicated."""
    return jax.jit(step_fn, in_shardings=(state_shardings, batch_sharded(mesh)),
                   out_shardings=(state_shardings, replicated(mesh)), donate_argnums=0)


def jit_embed(embed_fn: Callable, variables_sharding: Any, mesh: Mesh) -> Callable:
    """jit of an `embed_fn(variables, images [B, ...], camids [B]) -> features [B, D]`: the
    variables keep their shardings, images and camera ids are split over the batch axes, the
    features come back replicated (every process holds all rows)."""
    batch = batch_sharded(mesh)
    return jax.jit(embed_fn, in_shardings=(variables_sharding, batch, batch),
                   out_shardings=replicated(mesh))


def check_batch_divisible(global_batch: int, mesh: Mesh, what: str) -> None:
    n = mesh.devices.size
    if global_batch % n:
        raise ValueError(f"{what} = {global_batch} is not divisible by the {n} devices of the mesh")


def to_global(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Process-local numpy batch -> global arrays split over the batch axes (multi-host safe)."""
    sharding = batch_sharded(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in local_batch.items()}
