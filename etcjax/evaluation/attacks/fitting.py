"""The learned attacks' training loop, data-parallel over every device.

The GAN and ITN attacks differ in their step functions and in how they
draw batches; the loop around them is shared. Batches are split over the
'data' mesh axis of `etcjax.data.sharding` and the networks' parameters
and optimizer state are replicated, so the same code trains on one CPU
and on every chip of an accelerator host (paper-length attacks need the
latter). A step's state is donated to the next.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Dict, List, Optional, Tuple

import jax
import numpy as np
import tqdm
from jax.sharding import Mesh

from etcjax.data import sharding

# (state, batch) -> (state, metrics): a pure step, every argument but these
# two bound (networks, optimizer).
StepFn = Callable[[Any, Dict[str, jax.Array]], Tuple[Any, Dict[str, jax.Array]]]


@functools.lru_cache(maxsize=16)
def _compiled(step_fn: StepFn, mesh: Mesh):
  # Cached per step function and mesh so that attacks on several schemes
  # with the same networks compile once.
  replicated = sharding.replicated(mesh)
  return jax.jit(step_fn, out_shardings=(replicated, replicated),
                 donate_argnums=0)


def check_batch(batch_size: int, mesh: Optional[Mesh] = None) -> None:
  """Raises ValueError unless `batch_size` splits evenly over the devices.

  Args:
    batch_size: the learned attacks' global batch size.
    mesh: the mesh to train on (default: every device).
  """
  devices = (sharding.make_mesh() if mesh is None else mesh).devices.size
  if batch_size < 1 or batch_size % devices:
    raise ValueError(
        f"the learned attacks' batch size ({batch_size}, --train_batch) must "
        f"be a positive multiple of the number of devices ({devices}), so "
        "every device trains on the same number of images")


def fit(step_fn: StepFn, state: Any, next_batch: Callable[[], Dict[str, np.ndarray]],
        steps: int, batch_size: int, mesh: Optional[Mesh] = None,
        desc: str = "", progress: bool = True
        ) -> Tuple[Any, List[Dict[str, float]]]:
  """Runs `steps` optimizer steps with batches split over the devices.

  Args:
    step_fn: pure `(state, batch) -> (state, metrics)`; `batch` is a dict of
      arrays `[batch_size, ...]`, `metrics` a dict of scalars. Pass the same
      object again (e.g. from an `lru_cache`d builder) to reuse its
      compilation.
    state: the initial state, a pytree of arrays (identical on every host).
    next_batch: returns the next global batch, a dict of numpy arrays with
      leading axis `batch_size`.
    steps: number of steps.
    batch_size: images per step; a positive multiple of the device count.
    mesh: the mesh to train on (default: `sharding.make_mesh()`, every
      device).
    desc: progress bar label.
    progress: show a progress bar.

  Returns:
    `(state, history)`: the final state (replicated jax arrays) and every
    step's metrics as floats.

  Raises:
    ValueError: `batch_size` does not split evenly over the devices.
  """
  mesh = sharding.make_mesh() if mesh is None else mesh
  check_batch(batch_size, mesh)
  step = _compiled(step_fn, mesh)
  state = sharding.replicate(state, mesh)
  metrics = []
  for _ in tqdm.trange(steps, desc=desc, leave=False, disable=not progress):
    batch = sharding.global_batch(next_batch(), mesh)
    state, step_metrics = step(state, batch)
    # Kept on device: fetching every step would stall the accelerator.
    metrics.append(step_metrics)
  history = [{k: float(v) for k, v in m.items()} for m in jax.device_get(metrics)]
  return state, history
