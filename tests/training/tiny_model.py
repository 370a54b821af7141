"""A tiny conv net with BatchNorm and a synthetic task for fast step tests."""

import flax.linen as nn
import jax.numpy as jnp
import numpy as np


class TinyNet(nn.Module):
  """Conv -> BatchNorm -> GELU -> flatten -> Dropout -> Dense."""

  # Dropout acts on the flat features: on this jax's CPU backend, random
  # bits of rank-4 shapes take ~10 s to compile (partitionable threefry).

  num_classes: int = 4
  batch_norm: bool = True

  @nn.compact
  def __call__(self, x, train: bool = False):
    # No conv bias before BatchNorm: its gradient is rounding noise, which
    # Adam would amplify into lr-sized steps that differ between devices.
    x = nn.Conv(8, (4, 4), strides=(4, 4), use_bias=not self.batch_norm)(x)
    if self.batch_norm:
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    x = nn.gelu(x)
    x = nn.Dropout(0.1, deterministic=not train)(x.reshape(x.shape[0], -1))
    return nn.Dense(self.num_classes)(x)


def synthetic_batch(seed: int, batch: int, size: int = 16, num_classes: int = 4):
  """Images whose class is the quadrant that is brighter than the rest.

  Returns:
    {'image': uint8 [B, size, size, 3], 'label': int32 [B]}.
  """
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, num_classes, batch).astype(np.int32)
  images = rng.integers(0, 120, (batch, size, size, 3))
  half = size // 2
  for i, label in enumerate(labels):
    y, x = divmod(int(label), 2)
    images[i, y * half:(y + 1) * half, x * half:(x + 1) * half] += 120
  return {"image": images.astype(np.uint8), "label": labels}


def init_variables(model, size: int = 16):
  """Variables of `model` for `[N, size, size, 3]` inputs (seed 0)."""
  import jax  # pylint: disable=g-import-not-at-top
  return model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)),
                    train=False)
