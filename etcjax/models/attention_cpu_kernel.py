"""Compiled XLA:CPU multi-head self-attention ('native' attention method).

XLA:CPU runs attention's small batched products (`[L, K] x [K, L]` per
image and head; L = 197, K = 64 in ViT/16 at 224) at about 40 GFLOP/s on a
core that does ~110 in a large matmul, and around them writes head-major
copies of query, key, value and output. `_attention_cpu.cc` computes each
(image, head) as one work item whose operands stay in cache: register-tiled
products, the softmax on rows still in cache, and inputs and outputs in the
token-major layout of the fused QKV projection (`[N, L, 3D]` in,
`[N, L, D]` out), so the head split and merge are no copies of their own.

Measured on this project's 2-vCPU AMD EPYC (AVX2), ViT-Ti/16's attention at
batch 16 (`[16, 197, 576]` in, 3 heads), forward and backward together:
21.6 ms against 39.9 ms for the XLA formulation in `attention.py` (head
split, `dot_product_attention` and merge); on one CPU (taskset) 35.6 against
45.4 ms, since XLA's batched products gain nothing from the second thread.
In a whole ViT-Ti/16 training step it is 1.055x faster (1.01-1.12,
alternated in one process), and 1.07x with the compiled LayerNorm.
README.md ("CPU speed") has whole training steps against PyTorch.

Float32 on the CPU backend only, no attention dropout; `attention.py`'s
'auto' method checks `usable(dtype)` before choosing it. Without the
extension (no C++ compiler at install) 'auto' uses the XLA formulation,
with the same results up to float rounding. Under SPMD each device runs
the kernel on its part of the batch (`cpu_kernel_library.split_over_batch`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from etcjax.models import cpu_kernel_library

_LIBRARY = "_attention_cpu"
_FORWARD = "etcjax_attention_forward"
_BACKWARD = "etcjax_attention_backward"
_TARGETS = ((_FORWARD, "EtcjaxAttentionForward"),
            (_BACKWARD, "EtcjaxAttentionBackward"))
# The kernel pads each row of the kept softmax weights to a multiple of its
# 16-column tiles.
_WEIGHTS_ROW_MULTIPLE = 16


def available() -> bool:
  """Whether the compiled kernel was built and loads."""
  return cpu_kernel_library.register(_LIBRARY, _TARGETS)


def usable(dtype) -> bool:
  """Whether the kernel runs here for this compute dtype: float32 on the
  CPU backend, built."""
  return cpu_kernel_library.usable(_LIBRARY, _TARGETS, dtype)


def _check(qkv, num_heads: int):
  cpu_kernel_library.require(_LIBRARY, _TARGETS, "attention method 'native'",
                             qkv, "qkv", "method 'xla' / 'auto'")
  if qkv.ndim != 3 or qkv.shape[-1] % (3 * num_heads):
    raise ValueError(
        f"qkv must be [N, L, 3 * num_heads * K] with num_heads={num_heads}, "
        f"got shape {qkv.shape}")


def _forward_call(qkv, num_heads: int):
  n, length, width = qkv.shape
  padded = -(-length // _WEIGHTS_ROW_MULTIPLE) * _WEIGHTS_ROW_MULTIPLE
  return jax.ffi.ffi_call(
      _FORWARD,
      (jax.ShapeDtypeStruct((n, length, width // 3), qkv.dtype),
       jax.ShapeDtypeStruct((n, num_heads, length, padded), qkv.dtype)))(
          qkv, heads=np.int64(num_heads))


def _backward_call(qkv, weights, out, dout, num_heads: int):
  return jax.ffi.ffi_call(
      _BACKWARD, jax.ShapeDtypeStruct(qkv.shape, qkv.dtype))(
          qkv, weights, out, dout, heads=np.int64(num_heads))


# Per image and head: split over the batch under SPMD (cpu_kernel_library).
_B = cpu_kernel_library.BATCH


@functools.lru_cache(maxsize=None)
def _forward(num_heads: int):
  return cpu_kernel_library.split_over_batch(
      functools.partial(_forward_call, num_heads=num_heads), (_B,), (_B, _B),
      "n l c -> n l d, n h l p")


@functools.lru_cache(maxsize=None)
def _backward(num_heads: int):
  return cpu_kernel_library.split_over_batch(
      functools.partial(_backward_call, num_heads=num_heads), (_B,) * 4,
      (_B,), "n l c, n h l p, n l d, n l d -> n l c")


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def self_attention(qkv, num_heads: int):
  """Multi-head `softmax(q k^T) v` from a fused QKV projection, on the CPU.

  The query is used as given: fold the `1 / sqrt(K)` scale into its
  projection. The backward pass keeps the softmax weights
  (`[N, num_heads, L, round_up(L, 16)]` float32) from the forward pass.

  Args:
    qkv: float32 `[N, L, 3 * D]`, `D = num_heads * K`: query, key and value
      of each token at offsets 0, D and 2D, head h at `h * K` within each
      (an `[N * L, D] x [D, 3D]` projection's output, reshaped).
    num_heads: H.

  Returns:
    float32 `[N, L, D]`, head h's output at `h * K` (ready for the output
    projection).
  """
  _check(qkv, num_heads)
  return _forward(num_heads)(qkv)[0]


def _self_attention_fwd(qkv, num_heads):
  _check(qkv, num_heads)
  out, weights = _forward(num_heads)(qkv)
  return out, (qkv, weights, out)


def _self_attention_bwd(num_heads, residuals, dout):
  qkv, weights, out = residuals
  return (_backward(num_heads)(qkv, weights, out, dout.astype(qkv.dtype)),)


self_attention.defvjp(_self_attention_fwd, _self_attention_bwd)
