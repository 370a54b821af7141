"""Data parallelism over every device of every host with one mesh axis.

Batches are split along their first axis over the 'data' mesh axis;
parameters, optimizer state and the encryption plan are replicated. The
same code runs on one CPU, one TPU host and a multi-host pod slice: each
host feeds its local part of the global batch and jit sees global arrays.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from etcjax.data import errors

DATA_AXIS = "data"


def make_mesh(devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A 1-D mesh with axis 'data'.

  Args:
    devices: the devices (default: all devices of all processes).

  Returns:
    A `Mesh` of shape `[len(devices)]`.
  """
  devices = jax.devices() if devices is None else list(devices)
  # Auto axes: the batch sharding is propagated by the compiler through
  # model code that carries no sharding annotations of its own.
  return jax.make_mesh((len(devices),), (DATA_AXIS,),
                       axis_types=(AxisType.Auto,), devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
  """Sharding of values every device holds in full (params, plans)."""
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Sharding of arrays split along their leading (batch) axis."""
  return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(global_batch: int, what: str = "config.batch_size") -> int:
  """Checks that a global batch splits evenly over hosts and devices.

  Args:
    global_batch: the global batch size.
    what: the setting's name (config field or flag), for the error message.

  Returns:
    The per-host batch size, `global_batch // jax.process_count()`.

  Raises:
    ValueError: the batch is not a positive multiple of the device count.
  """
  devices = jax.device_count()
  if global_batch < 1 or global_batch % devices:
    raise errors.DataError(
        f"{what}={global_batch} must be a positive multiple of the "
        f"number of devices ({devices} over {jax.process_count()} "
        "process(es)), so every device gets the same number of images")
  return global_batch // jax.process_count()


def global_batch(batch: Any, mesh: Mesh) -> Any:
  """Assembles per-host batches into global arrays sharded over 'data'.

  Args:
    batch: a pytree of numpy arrays with the host's local batch
      `[B_local, ...]` as leading axis (B_local = B / process_count).
    mesh: the mesh of `make_mesh`.

  Returns:
    The same pytree of global jax arrays `[B, ...]` sharded on the batch
    axis.
  """
  sharding = batch_sharded(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
      batch)


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places a pytree of host values (identical on every host) on all devices.

  Args:
    tree: a pytree of numpy or jax arrays.
    mesh: the mesh of `make_mesh`.

  Returns:
    The pytree as global, replicated jax arrays.
  """
  sharding = replicated(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(
          sharding, np.asarray(x), np.shape(x)), tree)
