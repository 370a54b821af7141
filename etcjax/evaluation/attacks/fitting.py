"""The learned attacks' training loop, data-parallel over every device.

The GAN and ITN attacks differ in their step functions and in how they
draw batches; the loop around them is shared. Batches are split over the
'data' mesh axis of `etcjax.data.sharding` and the networks' parameters
and optimizer state are replicated, so the same code trains on one CPU
and on every chip of an accelerator host (paper-length attacks need the
latter). A step's state is donated to the next.

With a checkpoint folder, the state, the batch sampler's position and the
losses so far are saved every few hundred steps (orbax), and an
interrupted training resumes from the newest save with exactly the
batches and results of an uninterrupted one.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable, Dict, List, Optional, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp
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


def fit(step_fn: StepFn, state: Any,
        next_batch: Callable[[np.random.Generator], Dict[str, np.ndarray]],
        steps: int, batch_size: int, seed: int, mesh: Optional[Mesh] = None,
        checkpoint_dir: Optional[str] = None, checkpoint_every: int = 500,
        desc: str = "", progress: bool = True
        ) -> Tuple[Any, List[Dict[str, float]]]:
  """Runs `steps` optimizer steps with batches split over the devices.

  Args:
    step_fn: pure `(state, batch) -> (state, metrics)`; `batch` is a dict of
      arrays `[batch_size, ...]`, `metrics` a dict of scalars. Pass the same
      object again (e.g. from an `lru_cache`d builder) to reuse its
      compilation.
    state: the initial state, a pytree of arrays (identical on every host).
    next_batch: draws the next global batch with the given generator (its
      only source of randomness), a dict of numpy arrays with leading axis
      `batch_size`.
    steps: number of steps.
    batch_size: images per step; a positive multiple of the device count.
    seed: seed of the batch generator.
    mesh: the mesh to train on (default: `sharding.make_mesh()`, every
      device).
    checkpoint_dir: save every `checkpoint_every` steps here and resume
      from the newest save (None: no checkpoints).
    checkpoint_every: steps between saves.
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
  rng = np.random.default_rng(seed)
  done, history = 0, []
  manager = None
  if checkpoint_dir is not None:
    manager = ocp.CheckpointManager(
        os.path.abspath(checkpoint_dir), item_names=("state", "progress"),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=1, save_interval_steps=checkpoint_every, create=True,
            # Synchronous: the next step donates the saved state's buffers.
            enable_async_checkpointing=False))
    if manager.latest_step() is not None:
      state, done, history = _restore(manager, state, rng)
  metrics = []
  for i in tqdm.trange(done, steps, initial=done, total=steps, desc=desc,
                       leave=False, disable=not progress):
    batch = sharding.global_batch(next_batch(rng), mesh)
    state, step_metrics = step(state, batch)
    # Kept on device: fetching every step would stall the accelerator.
    metrics.append(step_metrics)
    if manager is not None and (i + 1) % checkpoint_every == 0 and i + 1 < steps:
      history += _floats(metrics)
      metrics = []
      manager.save(i + 1, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          progress=ocp.args.JsonSave({"rng": rng.bit_generator.state,
                                      "history": history})))
  history += _floats(metrics)
  if manager is not None:
    manager.wait_until_finished()
    manager.close()
  return state, history


def _floats(metrics: List[Dict[str, jax.Array]]) -> List[Dict[str, float]]:
  return [{k: float(v) for k, v in m.items()} for m in jax.device_get(metrics)]


def _restore(manager, state, rng: np.random.Generator):
  """(state, steps done, history) of the newest save; sets `rng`'s position."""
  done = manager.latest_step()
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
      state)
  restored = manager.restore(done, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract),
      progress=ocp.args.JsonRestore()))
  rng.bit_generator.state = restored["progress"]["rng"]
  return restored["state"], done, list(restored["progress"]["history"])
