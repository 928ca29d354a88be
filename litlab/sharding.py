"""Device mesh and shardings, big_vision style: batch over devices, params replicated or FSDP."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

STRATEGIES = ("replicate", "fsdp")


def make_mesh(data: int = -1) -> Mesh:
    """A 1-D mesh named 'data' over `data` devices (-1: all of them, across all processes)."""
    devices = jax.devices()
    n = len(devices) if data == -1 else data
    if not 1 <= n <= len(devices):
        raise ValueError(f"mesh.data={data} but {len(devices)} devices are available.")
    return Mesh(np.asarray(devices[:n]), ("data",))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P("data"))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def check_strategy(strategy: str) -> None:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown sharding_strategy {strategy!r}; choose one of {STRATEGIES}.")


def param_shardings(mesh: Mesh, params, strategy: str):
    """'replicate': every device holds all params. 'fsdp': each array is split along its largest
    dimension that the device count divides (small or indivisible arrays stay replicated), so
    parameter and optimizer memory shrink with the number of devices."""
    check_strategy(strategy)
    n = mesh.shape["data"]

    def spec(x):
        if strategy == "replicate" or n == 1 or not getattr(x, "shape", ()):
            return replicated(mesh)
        for axis in np.argsort(x.shape)[::-1]:
            if x.shape[axis] % n == 0 and x.shape[axis] >= n:
                parts = [None] * len(x.shape)
                parts[axis] = "data"
                return NamedSharding(mesh, P(*parts))
        return replicated(mesh)

    return jax.tree.map(spec, params)
