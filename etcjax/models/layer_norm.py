"""LayerNorm with `nn.LayerNorm`'s parameters and a lean backward pass.

Autodiff of `nn.LayerNorm` makes XLA:CPU run each of its reductions, the
broadcasts of the statistics and the normalised activations as separate
passes over the tokens, and keep the broadcast statistics until the backward
pass: in a ViT-Ti/16 training step (batch 16) its 25 LayerNorms took 175 ms
of about 1.5 s, against 22 ms in PyTorch. Here the forward pass keeps only
its input and two numbers per token, and the backward pass is the closed
form `dx = rstd * (g - mean(g) - xhat * mean(g * xhat))` with
`g = dy * scale`: 77 ms for the same step (with the attention and GELU
of this commit; profiled per fusion). For float32 on the CPU backend both
passes are compiled loops over rows (`layer_norm_cpu_kernel.py`) when the
extension was built: XLA:CPU still ran the formulation below as about ten
separate passes per LayerNorm (forward and backward).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from etcjax.models import layer_norm_cpu_kernel


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm(x, scale, bias, epsilon):
  """Normalises the last axis: `(x - mean) / sqrt(var + epsilon) * scale + bias`.

  Statistics are taken in float32 whatever x's dtype, with the two-pass
  variance `mean((x - mean)^2)`.

  Args:
    x: float `[..., D]`.
    scale: float32 `[D]`.
    bias: float32 `[D]`.
    epsilon: added to the variance.

  Returns:
    `x.shape`, in x's dtype.
  """
  return _layer_norm_fwd(x, scale, bias, epsilon)[0]


def _statistics(x, epsilon):
  x = x.astype(jnp.float32)
  mean = jnp.mean(x, axis=-1, keepdims=True)
  centered = x - mean
  rstd = jax.lax.rsqrt(jnp.mean(centered * centered, axis=-1, keepdims=True)
                       + epsilon)
  return centered, mean, rstd


def _layer_norm_fwd(x, scale, bias, epsilon):
  if layer_norm_cpu_kernel.usable(x.dtype):
    rows = x.reshape(-1, x.shape[-1])
    y, mean, rstd = layer_norm_cpu_kernel.forward(rows, scale, bias, epsilon)
    return y.reshape(x.shape), (x, mean, rstd, scale)
  centered, mean, rstd = _statistics(x, epsilon)
  y = (centered * rstd * scale + bias).astype(x.dtype)
  return y, (x, mean, rstd, scale)


def _layer_norm_bwd(epsilon, residuals, dy):
  del epsilon
  x, mean, rstd, scale = residuals
  if layer_norm_cpu_kernel.usable(x.dtype):
    dx, dscale, dbias = layer_norm_cpu_kernel.backward(
        x.reshape(-1, x.shape[-1]), scale, mean, rstd,
        dy.reshape(-1, x.shape[-1]).astype(x.dtype))
    return dx.reshape(x.shape), dscale, dbias
  # Without the 0 * dy (exact for finite dy; XLA does not fold float x * 0)
  # XLA merges `normalized` with the forward pass's identical expression and
  # keeps it, an activation, until the backward pass.
  x = x + (0 * dy).astype(x.dtype)
  normalized = (x.astype(jnp.float32) - mean) * rstd
  dy = dy.astype(jnp.float32)
  axes = tuple(range(x.ndim - 1))
  dscale = jnp.sum(dy * normalized, axes)
  dbias = jnp.sum(dy, axes)
  g = dy * scale
  dx = rstd * (g - jnp.mean(g, axis=-1, keepdims=True)
               - normalized * jnp.mean(g * normalized, axis=-1, keepdims=True))
  return dx.astype(x.dtype), dscale, dbias


layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


class LayerNorm(nn.Module):
  """`nn.LayerNorm` over the last axis, computed by `layer_norm`.

  Parameters `scale` (ones) and `bias` (zeros), float32 `[D]`, as
  `nn.LayerNorm`'s, so checkpoints load unchanged.

  Attributes:
    epsilon: added to the variance.
    dtype: output dtype; statistics are taken in float32 from x as given.
  """

  epsilon: float = 1e-6
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    """`[..., D]` -> `[..., D]` in `dtype`."""
    features = (x.shape[-1],)
    scale = self.param("scale", nn.initializers.ones, features, jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, features, jnp.float32)
    return layer_norm(x, scale, bias, self.epsilon).astype(self.dtype)
