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

from etcjax.models.bias import Dense
from etcjax.models.depthwise_conv import DepthwiseConv
from etcjax.models.gelu import gelu, gelu_factors
from etcjax.models.patch_embedding import PatchEmbedding, check_images
from etcjax.models.per_position_embedding import PerPositionPatchEmbedding

# PyTorch's BatchNorm momentum 0.1 (weight of the new batch) is Flax's 0.9
# (weight of the running value).
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def _batch_statistics(a):
  """float32 mean and (biased, E[a^2] - E[a]^2) variance per channel."""
  axes = tuple(range(a.ndim - 1))
  a = a.astype(jnp.float32)
  mean = jnp.mean(a, axes)
  var = jnp.maximum(jnp.mean(jnp.square(a), axes) - jnp.square(mean), 0.0)
  return mean, var


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def gelu_batch_norm(x, scale, bias, epsilon):
  """BatchNorm(GELU(x)) with batch statistics, and the statistics.

  The same values as `nn.BatchNorm(use_running_average=False)(gelu(x))`
  (Flax's fast variance, float32 statistics), with a backward pass that
  keeps only `x`: it recomputes GELU(x) and the normalised values from x
  and the per-channel statistics. With autodiff of the two layers, XLA:CPU
  kept GELU(x) and the derivative's factors as well: a ConvMixer-256/8
  training step at patch 2 needed 1,159 MB of XLA temporaries, 606 MB with
  this, and ran 0.89x the time (alternated rounds).

  Args:
    x: float `[..., C]` (the pre-activation).
    scale: float32 `[C]`.
    bias: float32 `[C]`.
    epsilon: added to the variance.

  Returns:
    `(y, mean, var)`: y `x.shape` in `x.dtype`; mean and var float32 `[C]`,
    the batch statistics of GELU(x) over all axes but the last (treated as
    constants by the backward pass, as BatchNorm's running averages are).
  """
  y, mean, var, _ = _gelu_batch_norm_forward(x, scale, bias, epsilon)
  return y, mean, var


def _normalize(a, mean, inv, scale, bias):
  """`(a - mean) * inv * scale + bias` in float32, returned in a's dtype."""
  y = (a.astype(jnp.float32) - mean) * (inv * scale) + bias
  return y.astype(a.dtype)


def _gelu_batch_norm_forward(x, scale, bias, epsilon):
  a = gelu(x)
  mean, var = _batch_statistics(a)
  inv = jax.lax.rsqrt(var + epsilon)
  return _normalize(a, mean, inv, scale, bias), mean, var, inv


def _gelu_batch_norm_fwd(x, scale, bias, epsilon):
  y, mean, var, inv = _gelu_batch_norm_forward(x, scale, bias, epsilon)
  return (y, mean, var), (x, scale, mean, inv)


def _gelu_batch_norm_bwd(epsilon, residuals, cotangents):
  del epsilon
  x, scale, mean, inv = residuals
  dy = cotangents[0].astype(jnp.float32)
  axes = tuple(range(x.ndim - 1))
  count = x.size // x.shape[-1]
  dbias = jnp.sum(dy, axes)
  # Recomputing from x alone, XLA:CPU hoists the GELU factors into the
  # forward pass (right after x is computed) and keeps two more activations
  # per BatchNorm alive until the backward pass: twice the step's memory.
  # Adding 0 * dbias (exact for finite gradients; XLA does not fold
  # float x * 0) makes them wait for this layer's gradient.
  # jax.lax.optimization_barrier((x, dy)) did not prevent it.
  x = x + (0 * dbias).astype(x.dtype)
  cdf, pdf = gelu_factors(x)
  normalized = ((x * cdf).astype(jnp.float32) - mean) * inv
  dscale = jnp.sum(dy * normalized, axes)
  da = (scale * inv) * (dy - (dbias + normalized * dscale) / count)
  dx = (da * (cdf + x * pdf).astype(jnp.float32)).astype(x.dtype)
  return dx, dscale, dbias


gelu_batch_norm.defvjp(_gelu_batch_norm_fwd, _gelu_batch_norm_bwd)


class GeluBatchNorm(nn.Module):
  """BatchNorm(GELU(x)): `nn.BatchNorm`'s variables, a leaner backward pass.

  Variables are those of `nn.BatchNorm` (params `scale`, `bias`;
  batch_stats `mean`, `var`, all float32 `[C]`), so checkpoints are
  unchanged; see `gelu_batch_norm` for the training-mode computation.

  Attributes:
    use_running_average: normalise with the running statistics (eval)
      instead of the batch's (train, which also updates them).
    momentum: weight of the running value in the update.
    epsilon: added to the variance.
    dtype: compute dtype of GELU and of the output; statistics are float32.
  """

  use_running_average: bool
  momentum: float = BN_MOMENTUM
  epsilon: float = BN_EPSILON
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    """`[..., C]` pre-activations -> `[..., C]` in `dtype`."""
    c = x.shape[-1]
    x = x.astype(self.dtype)
    ra_mean = self.variable("batch_stats", "mean",
                            lambda: jnp.zeros((c,), jnp.float32))
    ra_var = self.variable("batch_stats", "var",
                           lambda: jnp.ones((c,), jnp.float32))
    scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    if self.use_running_average:
      return _normalize(gelu(x), ra_mean.value,
                        jax.lax.rsqrt(ra_var.value + self.epsilon), scale, bias)
    y, mean, var = gelu_batch_norm(x, scale, bias, self.epsilon)
    if not self.is_initializing():
      ra_mean.value = (self.momentum * ra_mean.value
                       + (1 - self.momentum) * jax.lax.stop_gradient(mean))
      ra_var.value = (self.momentum * ra_var.value
                      + (1 - self.momentum) * jax.lax.stop_gradient(var))
    return y


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
    norm = functools.partial(GeluBatchNorm, not self.train, dtype=self.dtype)
    y = DepthwiseConv(self.kernel_size, self.depthwise_method,
                      dtype=self.dtype, name="depthwise")(x)
    x = x + norm(name="depthwise_norm")(y)
    # A 1x1 conv is a Dense over channels; XLA:CPU runs the gradient of the
    # conv form ~10x slower.
    x = Dense(x.shape[-1], dtype=self.dtype, name="pointwise")(x)
    return norm(name="pointwise_norm")(x)


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
    x = GeluBatchNorm(not train, dtype=self.dtype, name="patch_norm")(x)
    for i in range(self.depth):
      x = MixerLayer(self.kernel_size, self.depthwise_method, train,
                dtype=self.dtype, name=f"layer_{i}")(x)
    x = jnp.mean(x, axis=(1, 2))
    x = Dense(self.num_classes, dtype=self.dtype, name="head")(x)
    return x.astype(jnp.float32)
