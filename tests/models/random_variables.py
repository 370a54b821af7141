"""Random model variables without running the (slow-to-compile) initialisers."""

import jax
import numpy as np


def random_variables(shapes, seed=0, scale=0.3):
  """Fills `jax.ShapeDtypeStruct`s with random values.

  Args:
    shapes: variables as `jax.eval_shape` gives them.
    seed: numpy seed.
    scale: standard deviation of the normal values.

  Returns:
    The same tree of numpy float32 arrays: normal values, except BatchNorm
    running variances (`var`), which are uniform in [0.5, 1.5].
  """
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    if jax.tree_util.keystr(path).endswith("['var']"):
      return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
    return (scale * rng.normal(size=leaf.shape)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, shapes)
