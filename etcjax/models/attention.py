"""Multi-head self-attention with the parameters of `nn.MultiHeadDotProductAttention`.

`SelfAttention` keeps flax's parameter tree (`query`, `key`, `value`: kernel
`[D, H, K]`, bias `[H, K]`; `out`: kernel `[H, K, D]`, bias `[D]`), so
vit_jax checkpoints load unchanged, and computes differently, for speed on
XLA:CPU (measured on this project's 2-core CPU, ViT-Ti/16, batch 16):

- query, key and value come from one `[N*L, D] x [D, 3D]` matmul, and the
  output map is one `[N*L, D] x [D, D]` matmul: plain 2-D products, whose
  gradients are plain 2-D products too. flax's `[N, L, H, K]` einsums made
  XLA:CPU run transposed products and transposed copies of the inputs.
- the heads are a batch axis of the attention itself (`[N, H, L, K]`);
  with flax's token-major layout the two attention matmuls ran as batched
  products with a strided batch axis (15 and 24 ms per ViT-Ti/16 block at
  batch 32 against 11 and 11 ms head-major).
- `dot_product_attention` has its own backward pass: it keeps the attention
  weights from the forward pass and takes the softmax gradient's row sums as
  `sum(dout * out)` over K instead of `sum(dweights * weights)` over L.

The attention layer's forward and backward pass together (ViT-Ti/16's
`[16, 197, 192]`, 3 heads) take 0.85x the time of the head-major einsums
this replaced, measured alternately; PyTorch's `nn.MultiheadAttention`
takes about the same.

On the CPU backend in float32 the attention itself (between the two
projections) is by default the compiled kernel of `attention_cpu_kernel.py`
('native'), which reads the fused QKV projection in place and writes the
output in the layout the output projection reads: no head-major copies, and
products at about twice XLA's speed. `select_method` says when.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from etcjax.models import attention_cpu_kernel
from etcjax.models.bias import add_bias

METHODS = ("auto", "xla", "native")


def select_method(method: str, dtype, dropout: bool) -> str:
  """The attention formulation `method` stands for.

  Args:
    method: 'auto', 'xla' (`dot_product_attention` on head-major copies;
      any backend and dtype) or 'native' (the compiled CPU kernel).
    dtype: compute dtype.
    dropout: whether attention dropout is active (the kernel has none).

  Returns:
    'xla' or 'native'. 'auto' is 'native' on the CPU backend for float32
    without attention dropout when the kernel was built, else 'xla'.

  Raises:
    ValueError: an unknown method, or 'native' with attention dropout.
  """
  if method not in METHODS:
    raise ValueError(f"unknown attention method {method!r}; expected one of "
                     f"{METHODS}")
  if method == "native" and dropout:
    raise ValueError("attention method 'native' has no attention dropout; "
                     "use 'auto' or 'xla' with attention_dropout_rate > 0")
  if method != "auto":
    return method
  native = not dropout and attention_cpu_kernel.usable(dtype)
  return "native" if native else "xla"


def _attention_weights(query, key):
  logits = jnp.einsum("nhqk,nhvk->nhqv", query, key)
  return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)


@jax.custom_vjp
def dot_product_attention(query, key, value):
  """`softmax(query key^T) value` per batch element and head.

  The softmax is taken in float32 whatever the compute dtype; scale the
  query beforehand (by `1 / sqrt(K)` for the usual attention).

  Args:
    query: float `[N, H, Lq, K]`.
    key: float `[N, H, Lk, K]`, the dtype of query.
    value: float `[N, H, Lk, K]`, the dtype of query.

  Returns:
    `[N, H, Lq, K]` in query's dtype.
  """
  return _dot_product_attention_fwd(query, key, value)[0]


def _dot_product_attention_fwd(query, key, value):
  weights = _attention_weights(query, key).astype(query.dtype)
  out = jnp.einsum("nhqv,nhvk->nhqk", weights, value)
  return out, (query, key, value, weights, out)


def _dot_product_attention_bwd(residuals, dout):
  query, key, value, weights, out = residuals
  dvalue = jnp.einsum("nhqv,nhqk->nhvk", weights, dout)
  dweights = jnp.einsum("nhqk,nhvk->nhqv", dout, value).astype(jnp.float32)
  # sum_v dweights * weights == sum_k dout * out: a pass over [.., K]
  # instead of one over [.., Lk].
  row = jnp.sum((dout * out).astype(jnp.float32), axis=-1, keepdims=True)
  dlogits = (weights.astype(jnp.float32) * (dweights - row)).astype(
      query.dtype)
  dquery = jnp.einsum("nhqv,nhvk->nhqk", dlogits, key)
  dkey = jnp.einsum("nhqv,nhqk->nhvk", dlogits, query)
  return dquery, dkey, dvalue


dot_product_attention.defvjp(_dot_product_attention_fwd,
                             _dot_product_attention_bwd)


def _flat_xavier_uniform(fan_in_dims: int):
  """Xavier-uniform as `nn.DenseGeneral` draws it: on the kernel flattened
  to `[prod(shape[:fan_in_dims]), prod(shape[fan_in_dims:])]`."""
  def init(key, shape, dtype=jnp.float32):
    flat = (math.prod(shape[:fan_in_dims]), math.prod(shape[fan_in_dims:]))
    return nn.initializers.xavier_uniform()(key, flat, dtype).reshape(shape)
  return init


class DenseGeneralParams(nn.Module):
  """The kernel and bias of an `nn.DenseGeneral`, returned unapplied.

  Attributes:
    kernel_shape: `[D, H, K]` (input map, `fan_in_dims=1`) or `[H, K, D]`
      (output map, `fan_in_dims=2`).
    fan_in_dims: leading kernel axes that are contracted.
  """

  kernel_shape: tuple[int, ...]
  fan_in_dims: int
  bias_init: Any = nn.initializers.zeros

  @nn.compact
  def __call__(self):
    """Returns `(kernel, bias)`, float32; bias has the output axes' shape."""
    kernel = self.param("kernel", _flat_xavier_uniform(self.fan_in_dims),
                        self.kernel_shape, jnp.float32)
    bias = self.param("bias", self.bias_init,
                      self.kernel_shape[self.fan_in_dims:], jnp.float32)
    return kernel, bias


class SelfAttention(nn.Module):
  """Multi-head self-attention (`nn.MultiHeadDotProductAttention(x, x)`).

  Same function, parameter tree and initial values as flax's module with
  `kernel_init=xavier_uniform` (vit_jax's setting); see the module
  docstring for how it computes.

  Attributes:
    num_heads: H; the width D must be a multiple of it.
    dropout_rate: dropout on the attention weights.
    dtype: compute dtype.
    method: how attention is computed, see `select_method` ('auto',
      'xla', 'native'); the parameters and the function are the same.
  """

  num_heads: int
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  method: str = "auto"

  @nn.compact
  def __call__(self, x, *, deterministic: bool):
    """`[N, L, D]` -> `[N, L, D]` in `dtype`."""
    n, length, d = x.shape
    heads = self.num_heads
    if d % heads:
      raise ValueError(f"width {d} is not a multiple of {heads} heads")
    head_dim = d // heads
    maps = [DenseGeneralParams((d, heads, head_dim), 1, name=name)()
            for name in ("query", "key", "value")]
    out_kernel, out_bias = DenseGeneralParams((heads, head_dim, d), 2,
                                              name="out")()
    # The query scale is folded into its map, a [D, D] multiply instead of
    # one over the activations.
    scales = (1 / math.sqrt(head_dim), 1.0, 1.0)
    kernel = jnp.concatenate(
        [k.reshape(d, d) * s for (k, _), s in zip(maps, scales)], axis=1)
    bias = jnp.concatenate([b.reshape(d) * s for (_, b), s in zip(maps, scales)])
    qkv = x.reshape(n * length, d) @ kernel.astype(self.dtype)
    qkv = add_bias(qkv, bias.astype(self.dtype))
    dropout = not deterministic and self.dropout_rate > 0
    if select_method(self.method, self.dtype, dropout) == "native":
      out = attention_cpu_kernel.self_attention(
          qkv.reshape(n, length, 3 * d), heads).reshape(n * length, d)
    else:
      query, key, value = qkv.reshape(n, length, 3, heads,
                                      head_dim).transpose(2, 0, 3, 1, 4)
      if dropout:
        weights = nn.Dropout(self.dropout_rate)(
            _attention_weights(query, key), deterministic=False)
        out = jnp.einsum("nhqv,nhvk->nhqk", weights.astype(self.dtype), value)
      else:
        out = dot_product_attention(query, key, value)
      out = out.transpose(0, 2, 1, 3).reshape(n * length, d)
    out = out @ out_kernel.reshape(d, d).astype(self.dtype)
    return add_bias(out, out_bias.astype(self.dtype)).reshape(n, length, d)
