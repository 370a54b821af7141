"""Compiled XLA:CPU kernels for the depthwise convolution ('native' method).

XLA:CPU has no fast depthwise convolution: a grouped convolution runs like a
dense one, and the fused shifted-sum loop of the 'shifted' method reaches
about a tenth of the core's matmul speed. `_depthwise_cpu.cc` holds two
vectorised loops, called from jitted code through the XLA FFI
(`jax.ffi.ffi_call`, no Python at run time):

- `correlate(x, taps, pad_top, pad_left)`:
  `y[n, h, w, c] = sum_{i,j} x[n, h + i - pad_top, w + j - pad_left, c] * taps[i, j, c]`
  (zeros outside x): the forward pass, and the input gradient with the
  flipped taps;
- `tap_gradient(x, g, k, pad_top, pad_left)`:
  `dt[i, j, c] = sum_{n,h,w} x[n, h + i - pad_top, w + j - pad_left, c] * g[n, h, w, c]`:
  the kernel gradient (summed in float64 over the batch).

Both split the batch over XLA's intra-op thread pool (the calling thread
included). Measured on this project's 2-vCPU AMD EPYC (a ConvMixer-256/8
layer at patch 1: 64x32x32x256, k=9, float32), one thread: forward 61-75 ms
and kernel gradient 85 ms, against 230-300 ms and 580 ms for the XLA
'shifted' formulation and 127 ms (forward) for PyTorch's channels_last
depthwise convolution; on an AVX-512 EPYC of the same pool, alternated,
two threads against one: forward 43-55 against 72-115 ms, kernel gradient
32-40 against 54-70 ms (at patch 2, 16x16: 9-17 against 15-19 ms and 8-12
against 15-17 ms).
README.md ("CPU speed") has whole training steps against PyTorch.

The library is a C++ extension built by `pip install` against jaxlib's FFI
headers (a build requirement in pyproject.toml). Without a C++ compiler
the install still succeeds, `available()` is False, and 'auto' uses the
XLA formulations, with the same results.

Only float32 on the CPU backend; `depthwise_conv.select_method` checks
`supports(dtype)` before choosing it.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from etcjax.models import cpu_kernel_library

_LIBRARY = "_depthwise_cpu"
_CORRELATE = "etcjax_depthwise_correlate"
_TAP_GRADIENT = "etcjax_depthwise_tap_gradient"
_TARGETS = ((_CORRELATE, "EtcjaxDepthwiseCorrelate"),
            (_TAP_GRADIENT, "EtcjaxDepthwiseTapGradient"))


def available() -> bool:
  """Whether the compiled kernels were built and load."""
  return cpu_kernel_library.register(_LIBRARY, _TARGETS)


def supports(dtype) -> bool:
  """Whether the kernels run for this compute dtype (float32 only)."""
  return jnp.dtype(dtype) == jnp.float32


def _require(x, what: str):
  cpu_kernel_library.require(
      _LIBRARY, _TARGETS, "depthwise method 'native'", x, what,
      "method 'shifted' / 'toeplitz' / 'auto'")


def correlate(x, taps, pad_top: int, pad_left: int):
  """Per-channel 2-D correlation with zero padding, on the CPU.

  Args:
    x: float32 `[N, H, W, C]`.
    taps: float32 `[k, k, C]`.
    pad_top: rows of zeros above x, `0 <= pad_top < k`.
    pad_left: columns of zeros left of x, `0 <= pad_left < k`.

  Returns:
    float32 `[N, H, W, C]`,
    `y[n,h,w,c] = sum_{i,j} x[n, h+i-pad_top, w+j-pad_left, c] * taps[i,j,c]`.
  """
  _require(x, "x")
  k = taps.shape[0]
  if taps.shape != (k, k, x.shape[-1]):
    raise ValueError(f"taps must be [k, k, C={x.shape[-1]}], got {taps.shape}")
  return _correlate(pad_top, pad_left)(x, taps.astype(x.dtype))


def tap_gradient(x, g, k: int, pad_top: int, pad_left: int):
  """The gradient of `correlate`'s taps.

  Args:
    x: float32 `[N, H, W, C]`, correlate's input.
    g: float32 `[N, H, W, C]`, the gradient of its output.
    k: kernel size.
    pad_top: as given to `correlate`.
    pad_left: as given to `correlate`.

  Returns:
    float32 `[k, k, C]`,
    `dt[i,j,c] = sum_{n,h,w} x[n, h+i-pad_top, w+j-pad_left, c] * g[n,h,w,c]`.
  """
  _require(x, "x")
  if g.shape != x.shape:
    raise ValueError(f"g must have x's shape {x.shape}, got {g.shape}")
  return _tap_gradient(k, pad_top, pad_left)(x, g.astype(x.dtype))


def _correlate_call(x, taps, pad_top: int, pad_left: int):
  return jax.ffi.ffi_call(
      _CORRELATE, jax.ShapeDtypeStruct(x.shape, x.dtype))(
          x, taps, pad_top=np.int64(pad_top), pad_left=np.int64(pad_left))


def _tap_gradient_call(x, g, k: int, pad_top: int, pad_left: int):
  return jax.ffi.ffi_call(
      _TAP_GRADIENT, jax.ShapeDtypeStruct((k, k, x.shape[-1]), x.dtype))(
          x, g, pad_top=np.int64(pad_top), pad_left=np.int64(pad_left))


# Images are independent: split over the batch under SPMD
# (cpu_kernel_library); the tap gradient is a sum over images.
_B, _W, _SUM = (cpu_kernel_library.BATCH, cpu_kernel_library.WHOLE,
                cpu_kernel_library.SUM)


@functools.lru_cache(maxsize=None)
def _correlate(pad_top: int, pad_left: int):
  return cpu_kernel_library.split_over_batch(
      functools.partial(_correlate_call, pad_top=pad_top, pad_left=pad_left),
      (_B, _W), (_B,), "n h w c, i j c -> n h w c")


@functools.lru_cache(maxsize=None)
def _tap_gradient(k: int, pad_top: int, pad_left: int):
  return cpu_kernel_library.split_over_batch(
      functools.partial(_tap_gradient_call, k=k, pad_top=pad_top,
                        pad_left=pad_left),
      (_B, _B), (_SUM,), "n h w c, n h w c -> i j c")
