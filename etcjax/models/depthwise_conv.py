"""Depthwise k x k convolution ('SAME', stride 1) with a per-backend formulation.

On TPU and GPU a grouped convolution (`feature_group_count = C`) is the
natural and fast op. XLA:CPU instead runs it like a dense C x C convolution
(measured ~8x the FLOPs of a whole ConvMixer step), and its gradients even
slower. Two exact reformulations that XLA:CPU runs well are provided:

- 'toeplitz': for small token grids each channel's convolution is a
  `[H*W, H*W]` matrix built from the k x k kernel (zero outside the band).
  The convolution becomes one batched matmul over channels, which is
  what XLA:CPU is good at; the wasted multiplications by zero are cheap while
  H*W is small (8x8: 64 columns against k*k = 81 taps; 16x16: 256).
- 'shifted': a sum of k*k shifted multiply-adds, which XLA fuses into one
  loop, with a hand-written backward pass: the input gradient is the same
  shifted sum with the flipped kernel, and the kernel gradient is k batched
  matmuls (one per kernel row) followed by diagonal sums. Letting autodiff
  differentiate the shifted sum instead keeps k*k products alive (12.8 GB
  for ConvMixer-256/8 at patch 2).

Faster than both on CPU is 'native': compiled vectorised loops called
through the XLA FFI (`depthwise_cpu_kernel.py`), with the same backward
structure as 'shifted' (input gradient = forward with the flipped kernel).
It is float32 only and needs the C++ extension built at install; 'auto'
uses it whenever it can and falls back to the XLA formulations otherwise.

All formulations compute the same function (up to float rounding) and take
the same parameter `kernel` `[k, k, 1, C]` (the layout of
`nn.Conv(C, (k, k), feature_group_count=C)`), so checkpoints move between
backends unchanged. `depthwise_conv2d(..., method='auto')` picks one from
`jax.default_backend()`, the compute dtype, the grid size and the kernel
size at trace time, from measurements on CPU (see `select_method`).
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from etcjax.models import depthwise_cpu_kernel
from etcjax.models.bias import add_bias

METHODS = ("auto", "grouped", "toeplitz", "shifted", "native")

# 'auto' on CPU picks 'native' for float32 whenever the kernel was built:
# training steps, benchmarks/models_speed.py --method native
# --baseline_method toeplitz, same run, 4 alternated rounds of >= 10 s,
# quiet 2-vCPU AMD EPYC, median images/s ratio (min-max):
#
#   ConvMixer-256/8 P=4 (8x8, k=9)      native / toeplitz 1.36 (1.26-1.38)
#   ConvMixer-128/6 P=4 (8x8, k=5) :cpu native / toeplitz 1.44 (1.39-1.49)
#   ConvMixer-256/8 P=2 (16x16, k=9)    native / toeplitz 3.59 (3.53-3.86)
#
# and against 'shifted' at P=1 and P=2 the kernels alone are 3-4x faster
# (depthwise_cpu_kernel.py). Without it (no compiler, or bfloat16):
#
# 'toeplitz' costs (H*W)^2 multiply-adds per channel and
# image, 'shifted' k*k*H*W (plus its transposes), so the choice depends on
# H*W / (k*k). Measured with benchmarks/models_speed.py, training steps,
# batch 64, alternating rounds of >= 10 s, median ratio (min-max) of
# images/s, toeplitz / shifted in the same run (--method toeplitz
# --baseline_method shifted), 2 shared cores under load:
#
#   grid   k  H*W/k^2  model                    toeplitz / shifted
#   8x8    9  0.79     ConvMixer-256/8 P=4      1.93 (0.90-2.18)
#   8x8    5  2.56     ConvMixer-128/6 P=4 (:cpu) 1.08 (0.90-1.48)
#   16x16  9  3.16     ConvMixer-256/8 P=2      0.69 (0.47-0.84)
#   32x32  9  12.6     ConvMixer-256/8 P=1      (toeplitz: 1 GB of matrices
#                                               per layer; shifted)
#
# 'toeplitz' is used up to this H*W / k^2 ratio, 'shifted' beyond (at the
# :cpu model's 2.56 the two tie within noise and 'toeplitz' needs less
# memory: 511 against 584 MB peak).
TOEPLITZ_MAX_GRID_PER_TAP = 3.0


def select_method(backend: str, height: int, width: int,
                  kernel_size: int = 9, dtype: Any = jnp.float32,
                  native: Optional[bool] = None) -> str:
  """The formulation 'auto' uses.

  Args:
    backend: `jax.default_backend()`, e.g. 'cpu', 'tpu', 'gpu'.
    height: H of the input grid.
    width: W of the input grid.
    kernel_size: k.
    dtype: compute dtype.
    native: whether the compiled CPU kernel is available; default: whether
      it was built (`depthwise_cpu_kernel.available()`).

  Returns:
    'grouped' off CPU; on CPU 'native' for float32 when built, otherwise
    'toeplitz' when `H * W <= TOEPLITZ_MAX_GRID_PER_TAP * k * k` (the
    measured crossover, see the table above), else 'shifted'.
  """
  if backend != "cpu":
    return "grouped"
  if native is None:
    native = depthwise_cpu_kernel.available()
  if native and depthwise_cpu_kernel.supports(dtype):
    return "native"
  if height * width <= TOEPLITZ_MAX_GRID_PER_TAP * kernel_size**2:
    return "toeplitz"
  return "shifted"


def _same_padding(k: int):
  # XLA's 'SAME' for stride 1 puts the extra row of an even kernel at the end.
  lo = (k - 1) // 2
  return lo, k - 1 - lo


def _grouped(x, kernel):
  return jax.lax.conv_general_dilated(
      x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=x.shape[-1])


# --- 'shifted' ---------------------------------------------------------------


def _shifted_sum(padded, taps, height, width):
  """sum_{i,j} padded[:, i:i+H, j:j+W, :] * taps[i, j]; taps `[k, k, C]`."""
  out = None
  for i in range(taps.shape[0]):
    for j in range(taps.shape[1]):
      term = padded[:, i:i + height, j:j + width, :] * taps[i, j]
      out = term if out is None else out + term
  return out


@jax.custom_vjp
def _shifted(x, taps):
  k = taps.shape[0]
  lo, hi = _same_padding(k)
  padded = jnp.pad(x, ((0, 0), (lo, hi), (lo, hi), (0, 0)))
  return _shifted_sum(padded, taps, x.shape[1], x.shape[2])


def _shifted_fwd(x, taps):
  return _shifted(x, taps), (x, taps)


def _shifted_bwd(residuals, g):
  x, taps = residuals
  k = taps.shape[0]
  lo, hi = _same_padding(k)
  _, height, width, _ = x.shape
  # dx[h] = sum_i g[h - i + lo] * taps[i]: a correlation with the flipped
  # kernel, padded on the opposite sides.
  g_padded = jnp.pad(g, ((0, 0), (hi, lo), (hi, lo), (0, 0)))
  dx = _shifted_sum(g_padded, taps[::-1, ::-1], height, width)
  # dtaps[i, j, c] = sum_{n,h,w} xpad[n, h+i, w+j, c] * g[n, h, w, c]. For each
  # kernel row i, a matmul over (n, h) per channel gives m[c, v, w] for every
  # pair of columns; tap j is the sum of its diagonal v = w + j. Channel-major
  # copies make those matmuls batched over the leading axis, and a sequential
  # map keeps one row's operand alive at a time (unrolled, XLA scheduled all
  # k transposed copies at once: +5 GB for a ConvMixer-256/8 step at patch 1).
  x_cmajor = jnp.pad(x, ((0, 0), (lo, hi), (lo, hi), (0, 0))).transpose(
      3, 0, 1, 2)
  g_cmajor = g.transpose(3, 0, 1, 2)

  def kernel_row(i):
    rows = jax.lax.dynamic_slice_in_dim(x_cmajor, i, height, axis=2)
    m = jnp.einsum("cnhv,cnhw->cvw", rows, g_cmajor,
                   preferred_element_type=jnp.float32)
    return jnp.stack([jnp.diagonal(m, offset=-j, axis1=1, axis2=2).sum(-1)
                      for j in range(k)])

  dtaps = jax.lax.map(kernel_row, jnp.arange(k)).astype(taps.dtype)
  return dx, dtaps


_shifted.defvjp(_shifted_fwd, _shifted_bwd)


# --- 'toeplitz' --------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def _toeplitz_index(height: int, width: int, k: int) -> np.ndarray:
  """int32 `[H*W, H*W]`: tap index i*k+j of each matrix entry, k*k if none.

  Entry (p, q) with p = (h, w) the output and q = (h', w') the input position
  holds tap (h' - h + lo, w' - w + lo) when that lies in the kernel.
  """
  lo, _ = _same_padding(k)
  h = np.arange(height)
  w = np.arange(width)
  di = h[None, :] - h[:, None] + lo  # [h, h']
  dj = w[None, :] - w[:, None] + lo  # [w, w']
  valid = ((di >= 0) & (di < k))[:, None, :, None] & (
      (dj >= 0) & (dj < k))[None, :, None, :]
  index = di[:, None, :, None] * k + dj[None, :, None, :]
  index = np.where(valid, index, k * k).astype(np.int32)
  return index.reshape(height * width, height * width)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _toeplitz_matrices(taps, height, width):
  """`[C, H*W, H*W]` per-channel convolution matrices from taps `[k, k, C]`."""
  k, _, c = taps.shape
  table = jnp.concatenate(
      [taps.reshape(k * k, c), jnp.zeros((1, c), taps.dtype)])
  index = _toeplitz_index(height, width, k)
  return jnp.take(table.T, jnp.asarray(index), axis=1)


def _toeplitz_matrices_fwd(taps, height, width):
  return _toeplitz_matrices(taps, height, width), taps.shape


def _toeplitz_matrices_bwd(height, width, taps_shape, g):
  # The gradient of a tap is the sum of the matrix entries that hold it: a
  # gather of those entries (static positions) instead of XLA:CPU's slow
  # scatter-add, the transpose of the forward gather.
  k, _, c = taps_shape
  index = _toeplitz_index(height, width, k)
  flat = index.reshape(-1)
  order = np.argsort(flat, kind="stable")
  counts = np.bincount(flat, minlength=k * k + 1)[:k * k]
  width_max = int(counts.max())
  # positions[t, s]: s-th flat position of tap t, padded with a zero slot.
  positions = np.full((k * k, width_max), flat.size, np.int32)
  start = 0
  for t in range(k * k):
    positions[t, :counts[t]] = order[start:start + counts[t]]
    start += counts[t]
  g_flat = jnp.concatenate(
      [g.reshape(c, -1), jnp.zeros((c, 1), g.dtype)], axis=1)
  dtaps = jnp.take(g_flat, jnp.asarray(positions), axis=1).sum(-1)  # [C, k*k]
  return (dtaps.T.reshape(k, k, c),)


_toeplitz_matrices.defvjp(_toeplitz_matrices_fwd, _toeplitz_matrices_bwd)


def _toeplitz(x, taps):
  n, height, width, c = x.shape
  matrices = _toeplitz_matrices(taps, height, width)
  y = jnp.einsum("cpq,nqc->npc", matrices, x.reshape(n, height * width, c))
  return y.reshape(n, height, width, c)


# --- 'native' ----------------------------------------------------------------


@jax.custom_vjp
def _native(x, taps):
  lo, _ = _same_padding(taps.shape[0])
  return depthwise_cpu_kernel.correlate(x, taps, lo, lo)


def _native_fwd(x, taps):
  return _native(x, taps), (x, taps)


def _native_bwd(residuals, g):
  x, taps = residuals
  k = taps.shape[0]
  lo, hi = _same_padding(k)
  # As in _shifted_bwd: a correlation with the flipped kernel, padded on the
  # opposite sides.
  dx = depthwise_cpu_kernel.correlate(g, taps[::-1, ::-1], hi, hi)
  return dx, depthwise_cpu_kernel.tap_gradient(x, g, k, lo, lo)


_native.defvjp(_native_fwd, _native_bwd)


# --- public ------------------------------------------------------------------


def depthwise_conv2d(x, kernel, *, method: str = "auto"):
  """Depthwise convolution, stride 1, 'SAME' zero padding, no bias.

  `y[n, h, w, c] = sum_{i,j} x[n, h + i - lo, w + j - lo, c] * kernel[i, j, 0, c]`
  with `lo = (k - 1) // 2` and zeros outside the image, exactly like
  `lax.conv_general_dilated(..., 'SAME', feature_group_count=C)`.

  Args:
    x: float `[N, H, W, C]`.
    kernel: `[k, k, 1, C]`, same float dtype as `x` (cast by the caller).
    method: 'auto' (see `select_method`), 'grouped', 'toeplitz',
      'shifted' or 'native' (CPU, float32, compiled kernel). All give the
      same values and gradients.

  Returns:
    `[N, H, W, C]` in `x.dtype`.

  Raises:
    ValueError: unknown method or mismatched shapes; 'native' off CPU or
      not in float32.
    RuntimeError: 'native' without the compiled kernel.
  """
  if method not in METHODS:
    raise ValueError(f"unknown depthwise method {method!r}; known: {METHODS}")
  if x.ndim != 4:
    raise ValueError(f"depthwise_conv2d expects x [N, H, W, C], got {x.shape}")
  k = kernel.shape[0]
  if kernel.shape != (k, k, 1, x.shape[-1]):
    raise ValueError(
        f"depthwise kernel must be [k, k, 1, C={x.shape[-1]}], got "
        f"{kernel.shape}")
  if method == "auto":
    method = select_method(jax.default_backend(), x.shape[1], x.shape[2], k,
                           x.dtype)
  if method == "grouped":
    return _grouped(x, kernel)
  taps = kernel[:, :, 0, :]
  if method == "toeplitz":
    return _toeplitz(x, taps)
  if method == "native":
    return _native(x, taps)
  return _shifted(x, taps)


class DepthwiseConv(nn.Module):
  """k x k depthwise convolution with bias, 'SAME' padding.

  Parameters `kernel` `[k, k, 1, C]` and `bias` `[C]` are those of
  `nn.Conv(C, (k, k), feature_group_count=C)`.

  Attributes:
    kernel_size: k.
    method: see `depthwise_conv2d`; 'auto' picks per backend.
    dtype: compute dtype; the parameters stay float32.
  """

  kernel_size: int
  method: str = "auto"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    """Applies the convolution.

    Args:
      x: float `[N, H, W, C]`.

    Returns:
      `[N, H, W, C]` in `dtype`.
    """
    c = x.shape[-1]
    k = self.kernel_size
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (k, k, 1, c), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    y = depthwise_conv2d(x.astype(self.dtype), kernel.astype(self.dtype),
                         method=self.method)
    return add_bias(y, bias.astype(self.dtype))
