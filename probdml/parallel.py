"""Data parallelism with JAX's SPMD API: a 1-D 'data' mesh, batch sharded along it, state replicated.

Because the train step is one `jax.jit` over the global batch, every batch loss (pair, proxy,
Mixup permutation) sees all samples: N devices compute the same loss as one device.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from probdml.errors import ConfigError

DATA_AXIS = "data"
T = TypeVar("T")


def initialize_distributed(cfg: ml_collections.ConfigDict | None) -> None:
    """`jax.distributed.initialize` for multi-process runs when `cfg.enabled`.

    With an empty coordinator address JAX auto-detects the cluster (TPU pods, SLURM, Kubernetes);
    otherwise `coordinator_address`, `num_processes` and `process_id` are passed through.
    """
    if cfg is None or not cfg.get("enabled", False):
        return
    if jax.distributed.is_initialized():
        return
    kwargs = {}
    if cfg.get("coordinator_address"):
        kwargs = dict(
            coordinator_address=cfg.coordinator_address,
            num_processes=int(cfg.num_processes),
            process_id=int(cfg.process_id),
        )
    jax.distributed.initialize(**kwargs)


def make_mesh(num_devices: int = 0) -> Mesh:
    """A 1-D mesh named 'data' over the first `num_devices` devices (0 = all devices of all processes)."""
    available = jax.device_count()
    n = num_devices or available
    if not 1 <= n <= available:
        raise ConfigError(f"num_devices={num_devices} but {available} device(s) are available")
    devices = jax.devices()[:n]
    return Mesh(np.asarray(devices), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split across the 'data' axis."""
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """A full copy on every device (parameters, optimizer state, proxies)."""
    return NamedSharding(mesh, P())


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "batch size") -> None:
    """The global batch must split evenly over the devices and the processes."""
    n = mesh.devices.size
    if batch_size % n or batch_size % jax.process_count():
        raise ConfigError(f"{what} {batch_size} must be divisible by the number of devices ({n}) and processes ({jax.process_count()})")


def global_batch(mesh: Mesh, local: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """The global batch array from each process's host-local slice of it (rows of its devices)."""
    sharding = batch_sharding(mesh)
    return {
        k: jax.make_array_from_process_local_data(sharding, v, (v.shape[0] * jax.process_count(), *v.shape[1:]))
        for k, v in local.items()
    }


def replicate(mesh: Mesh, tree: Any) -> Any:
    """Place every leaf of `tree` on all devices of the mesh."""
    return jax.device_put(tree, replicated(mesh))


def to_host(x: jax.Array | np.ndarray) -> np.ndarray:
    """The whole value of `x` as a NumPy array on every process.

    A global array with shards on other processes' devices (e.g. a batch-sharded result on a
    multi-process mesh) is gathered with `multihost_utils.process_allgather` (a collective: every
    process must call it); an array this process can read entirely is copied to the host as is.
    """
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def lead_first(fn: Callable[[], T], name: str) -> T:
    """`fn()` on process 0, then, after a barrier named `name`, on every other process.

    For work on a shared filesystem that must not run concurrently, e.g. preparing a TFDS dataset:
    the other processes find it done (or, on hosts without a shared filesystem, do it themselves).
    """
    if jax.process_count() == 1:
        return fn()
    result = fn() if jax.process_index() == 0 else None
    multihost_utils.sync_global_devices(name)
    return result if jax.process_index() == 0 else fn()
