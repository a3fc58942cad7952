"""Device mesh and shardings: one place for how arrays are laid out over devices.

The mesh has one axis, `data`: batches are split over it, the train state is replicated. The same
jitted step runs unchanged on 1 device, N local devices or N hosts.
"""

from __future__ import annotations

from typing import Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def make_mesh(mesh_cfg=None, devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
    """Mesh with axis `data` of `mesh_cfg.data` devices (-1 = all of them)."""
    devices = list(jax.devices() if devices is None else devices)
    n = mesh_cfg.data if mesh_cfg is not None else -1
    if n == -1:
        n = len(devices)
    if not 1 <= n <= len(devices):
        raise ValueError(f"config.mesh.data={n}: must be -1 or 1..{len(devices)} (devices here)")
    if jax.process_count() > 1 and n != len(devices):
        raise ValueError(f"config.mesh.data={n}: multi-process runs must use all "
                         f"{len(devices)} devices (-1)")
    return Mesh(np.asarray(devices[:n]).reshape(n), ("data",))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over `data`."""
    return NamedSharding(mesh, P("data"))


def check_batch_divisible(global_batch: int, mesh: Mesh, what: str) -> None:
    n = mesh.devices.size
    if global_batch % n:
        raise ValueError(f"{what} = {global_batch} is not divisible by the {n} devices of the mesh")


def to_global(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Process-local numpy batch -> global arrays sharded over `data` (multi-host safe)."""
    sharding = batch_sharded(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in local_batch.items()}
