"""ConvMixer (Trockman & Kolter, "Patches Are All You Need?").

ConvMixer-D/depth with patch size P and kernel size k:

    patch conv (stride P) -> GELU -> BN
    depth x [ x + BN(GELU(depthwise k x k conv(x)))  -> 1x1 conv -> GELU -> BN ]
    global average pool -> dense head

GELU is exact (erf), as `torch.nn.GELU` in the authors' code.

BatchNorm and data parallelism: the statistics are means over the batch
axis of the array the module sees. Under `jax.jit` with the batch sharded
over devices (the global-array / `NamedSharding` model), that array is the
global batch, so the statistics are global-batch statistics with no
`axis_name`; XLA inserts the cross-device reductions. (`axis_name` would
only be needed under `pmap` / `shard_map`, which etcjax does not use.)
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from etcjax.models.depthwise_conv import DepthwiseConv
from etcjax.models.patch_embedding import PatchEmbedding, check_images
from etcjax.models.per_position_embedding import PerPositionPatchEmbedding

# PyTorch's BatchNorm momentum 0.1 (weight of the new batch) is Flax's 0.9
# (weight of the running value).
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


@jax.custom_vjp
def gelu(x):
  """Exact (erf) GELU, `x * Phi(x)`, whose backward pass keeps only `x`.

  Autodiff of `jax.nn.gelu(approximate=False)` keeps two extra tensors per
  call (the erf and exp factors of the derivative), and XLA:CPU schedules
  the derivative as soon as `x` exists; here it is computed from `x` once the
  incoming gradient exists. Same values as `nn.gelu(x, approximate=False)`;
  a ConvMixer-256/8 training step at patch 1 needs 5.2 instead of 7.5 GB.

  Args:
    x: float array.

  Returns:
    GELU(x), same shape and dtype.
  """
  return nn.gelu(x, approximate=False)


def _gelu_fwd(x):
  return gelu(x), x


def _gelu_bwd(x, g):
  x, g = jax.lax.optimization_barrier((x, g))
  # Python floats are weakly typed: bfloat16 stays bfloat16.
  cdf = 0.5 * (1 + jax.lax.erf(x * float(1 / np.sqrt(2))))
  pdf = jnp.exp(-0.5 * x * x) * float(1 / np.sqrt(2 * np.pi))
  return ((g * (cdf + x * pdf)).astype(x.dtype),)


gelu.defvjp(_gelu_fwd, _gelu_bwd)


class MixerLayer(nn.Module):
  """x + BN(GELU(depthwise(x))) -> 1x1 conv -> GELU -> BN.

  Attributes:
    kernel_size: k of the depthwise convolution.
    depthwise_method: see `depthwise_conv2d`.
    train: batch statistics (True) or running statistics (False).
    dtype: compute dtype.
  """

  kernel_size: int
  depthwise_method: str
  train: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    """`[N, h, w, D]` -> `[N, h, w, D]`."""
    norm = functools.partial(
        nn.BatchNorm, use_running_average=not self.train,
        momentum=BN_MOMENTUM, epsilon=BN_EPSILON, dtype=self.dtype)
    y = DepthwiseConv(self.kernel_size, self.depthwise_method,
                      dtype=self.dtype, name="depthwise")(x)
    x = x + norm(name="depthwise_norm")(gelu(y))
    # A 1x1 conv is a Dense over channels; XLA:CPU runs the gradient of the
    # conv form ~10x slower.
    x = nn.Dense(x.shape[-1], dtype=self.dtype, name="pointwise")(x)
    return norm(name="pointwise_norm")(gelu(x))


class ConvMixer(nn.Module):
  """ConvMixer-dim/depth.

  Attributes:
    num_classes: size of the head.
    dim: channels D.
    depth: number of mixer layers.
    patch_size: P, side and stride of the patch embedding.
    kernel_size: k of the depthwise convolutions.
    depthwise_method: formulation of the depthwise convolution, see
      `etcjax.models.depthwise_conv.depthwise_conv2d` ('auto' picks the
      fast one for the backend; all give the same result).
    in_channels: channels of the input images.
    per_position_embedding: one patch-embedding kernel per patch position
      (`patch_embed/kernel` `[nb, P, P, C, D]`), a key-aware first layer for
      EtC; see `per_position_embedding.py`.
    dtype: compute dtype; parameters and BatchNorm statistics stay float32.
  """

  num_classes: int
  dim: int
  depth: int
  patch_size: int
  kernel_size: int = 9
  depthwise_method: str = "auto"
  in_channels: int = 3
  per_position_embedding: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images, *, train: bool = False):
    """Classifies images.

    Args:
      images: float `[N, H, W, in_channels]` in [-1, 1] (pixel / 127.5 - 1);
        H and W multiples of `patch_size`.
      train: normalise with batch statistics and update the running ones
        (apply with `mutable=['batch_stats']`); otherwise use the running
        statistics.

    Returns:
      float32 logits `[N, num_classes]`.
    """
    check_images(images, patch_size=self.patch_size,
                 channels=self.in_channels, model="ConvMixer")
    embed = (PerPositionPatchEmbedding if self.per_position_embedding
             else PatchEmbedding)
    x = embed(self.dim, self.patch_size, dtype=self.dtype,
              name="patch_embed")(images)
    x = nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM,
                     epsilon=BN_EPSILON, dtype=self.dtype, name="patch_norm")(
                         gelu(x))
    for i in range(self.depth):
      x = MixerLayer(self.kernel_size, self.depthwise_method, train,
                dtype=self.dtype, name=f"layer_{i}")(x)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
    return x.astype(jnp.float32)
