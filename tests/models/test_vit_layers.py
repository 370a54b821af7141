"""ViT's layers with their own backward passes, against flax and autodiff.

Attention, LayerNorm and GELU compute differently from flax's modules for
speed on XLA:CPU; they must keep flax's parameter trees and initial values
(checkpoints and seeds carry over) and compute the same values and
gradients.
"""

import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from etcjax import models
from etcjax.models import attention_cpu_kernel
from etcjax.models.attention import SelfAttention, dot_product_attention
from etcjax.models.attention import select_method
from etcjax.models.gelu import gelu, gelu_with_bias
from etcjax.models import layer_norm as layer_norm_module
from etcjax.models import layer_norm_cpu_kernel
from etcjax.models.layer_norm import LayerNorm, layer_norm


def _value_and_grads(apply, variables, x, seed=1):
  """Value and gradients (variables, x) of sum(apply(variables, x) * c)."""
  out_shape = jax.eval_shape(apply, variables, x).shape
  cotangent = jnp.asarray(np.random.default_rng(seed).normal(size=out_shape),
                          jnp.float32)
  loss = lambda v, x: jnp.sum(apply(v, x).astype(jnp.float32) * cotangent)
  return jax.value_and_grad(loss, argnums=(0, 1))(variables, x)


def _assert_trees_close(got, want, **tolerance):
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(a, np.float32),
                               np.asarray(b, np.float32), **tolerance)


def _perturbed(variables):
  """Non-trivial biases and scales: zeros and ones hide mistakes."""
  return jax.tree.map(
      lambda v: v + 0.1 * jnp.arange(v.size).reshape(v.shape) / v.size,
      variables)


_NATIVE = pytest.mark.skipif(not attention_cpu_kernel.available(),
                             reason="compiled attention kernel not built")
METHODS = ["xla", pytest.param("native", marks=_NATIVE)]


@pytest.mark.parametrize("method", METHODS)
def test_attention_equals_flax_attention(method):
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 7, 12)),
                  jnp.float32)
  reference = nn.MultiHeadDotProductAttention(
      num_heads=3, kernel_init=nn.initializers.xavier_uniform(),
      broadcast_dropout=False, deterministic=True)
  ours = SelfAttention(3, method=method)
  variables = reference.init(jax.random.PRNGKey(0), x, x)
  # The same tree, shapes and initial values: checkpoints and seeds carry over.
  mine = ours.init(jax.random.PRNGKey(0), x, deterministic=True)
  assert jax.tree.structure(mine) == jax.tree.structure(variables)
  for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(variables)):
    np.testing.assert_array_equal(a, b)
  variables = _perturbed(variables)
  want = _value_and_grads(lambda v, x: reference.apply(v, x, x), variables, x)
  got = _value_and_grads(
      lambda v, x: ours.apply(v, x, deterministic=True), variables, x)
  _assert_trees_close(got, want, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="width 12 is not a multiple of 5"):
    SelfAttention(5, method=method).init(jax.random.PRNGKey(0), x,
                                         deterministic=True)


def _xla_self_attention(qkv, heads):
  """The 'xla' method between the projections: split, attend, merge."""
  n, length, width = qkv.shape
  q, k, v = qkv.reshape(n, length, 3, heads, width // (3 * heads)).transpose(
      2, 0, 3, 1, 4)
  out = dot_product_attention(q, k, v)
  return out.transpose(0, 2, 1, 3).reshape(n, length, width // 3)


@_NATIVE
@pytest.mark.parametrize("n,length,heads,head_dim", [
    (2, 197, 3, 64),  # ViT/16 at 224: heads read and written in place
    (1, 1, 1, 16),    # one token
    (3, 13, 2, 32),   # row tiles of 6 with a remainder, 16 padding columns
    (2, 17, 4, 8),    # head width below a tile: padded copies
    (1, 40, 1, 20),   # head width between tiles
])
def test_native_attention_equals_xla_on_kernel_code_paths(n, length, heads,
                                                          head_dim):
  rng = np.random.default_rng(0)
  # Logits of unit scale, as with the query's 1/sqrt(K) folded in (sharper
  # ones amplify both sides' float32 rounding alike).
  qkv = jnp.asarray(rng.normal(size=(n, length, 3 * heads * head_dim))
                    * head_dim ** -0.25, jnp.float32)
  cotangent = jnp.asarray(rng.normal(size=(n, length, heads * head_dim)),
                          jnp.float32)
  value_and_grad = lambda f: jax.value_and_grad(
      lambda qkv: jnp.sum(f(qkv, heads) * cotangent))(qkv)
  got = value_and_grad(jax.jit(attention_cpu_kernel.self_attention,
                               static_argnums=1))
  want = value_and_grad(_xla_self_attention)
  _assert_trees_close(got, want, rtol=2e-5, atol=2e-5)
  out = attention_cpu_kernel.self_attention(qkv, heads)
  np.testing.assert_allclose(out, _xla_self_attention(qkv, heads), rtol=1e-5,
                             atol=1e-6)


@_NATIVE
def test_native_attention_under_vmap_and_large_logits():
  # vmap runs the kernel once per slice; logits of a few hundred (an
  # untrained or diverging model) must not overflow the softmax.
  rng = np.random.default_rng(1)
  qkv = jnp.asarray(rng.normal(size=(3, 2, 9, 24)) * 12, jnp.float32)
  got = jax.vmap(lambda x: attention_cpu_kernel.self_attention(x, 2))(qkv)
  xla = jax.vmap(lambda x: _xla_self_attention(x, 2))(qkv)
  assert bool(jnp.all(jnp.isfinite(got)))
  # Against float64. Logits this large (|q.k| up to ~1e3) carry float32
  # rounding of ~1e-4 that the softmax passes on to near-ties (how much
  # depends on the summation order, so on the CPU): the tolerance is that
  # bound, for the kernel and XLA's own formulation alike; a wrong head,
  # scale or softmax is off by O(|v|).
  q, k, v = np.asarray(qkv, np.float64).reshape(3, 2, 9, 3, 2, 4).transpose(
      3, 0, 1, 4, 2, 5)
  logits = np.einsum("abhqd,abhkd->abhqk", q, k)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  want = np.einsum("abhqk,abhkd->abqhd", weights, v).reshape(3, 2, 9, 8)
  logit_error = 4 * np.finfo(np.float32).eps * np.einsum(
      "abhqd,abhkd->abhqk", np.abs(q), np.abs(k)).max()
  tolerance = 2 * logit_error * np.abs(v).max()
  assert tolerance < 0.05 * np.abs(want).max()
  for name, value in (("native", got), ("xla", xla)):
    assert np.abs(value - want).max() <= tolerance, (
        name, np.abs(value - want).max(), tolerance)


def test_attention_method_selection():
  native = attention_cpu_kernel.available() and jax.default_backend() == "cpu"
  assert select_method("auto", jnp.float32, dropout=False) == (
      "native" if native else "xla")
  assert select_method("auto", jnp.bfloat16, dropout=False) == "xla"
  assert select_method("auto", jnp.float32, dropout=True) == "xla"
  assert select_method("xla", jnp.float32, dropout=False) == "xla"
  with pytest.raises(ValueError, match="'native' has no attention dropout"):
    select_method("native", jnp.float32, dropout=True)
  with pytest.raises(ValueError, match="unknown attention method 'flash'"):
    select_method("flash", jnp.float32, dropout=False)


@_NATIVE
def test_native_attention_rejects_what_it_cannot_compute():
  qkv = jnp.zeros((2, 5, 24))
  with pytest.raises(ValueError, match="computes in float32, got qkv of "
                     "dtype bfloat16"):
    attention_cpu_kernel.self_attention(qkv.astype(jnp.bfloat16), 2)
  with pytest.raises(ValueError, match=r"qkv must be \[N, L, 3 \* num_heads "
                     r"\* K\] with num_heads=5, got shape \(2, 5, 24\)"):
    attention_cpu_kernel.self_attention(qkv, 5)


def test_compiled_vit_kernels_are_built_in_ci():
  # As the depthwise kernel: CI has a compiler, so a failed build fails here
  # instead of silently running the slower XLA formulations.
  if not os.environ.get("CI"):
    pytest.skip("checked in CI only (set CI=1); elsewhere it is optional")
  assert attention_cpu_kernel.available()
  assert layer_norm_cpu_kernel.available()


@pytest.mark.skipif(not layer_norm_cpu_kernel.available(),
                    reason="compiled LayerNorm kernel not built")
@pytest.mark.parametrize("shape", [
    (300, 192),     # rows split over the thread pool, D a multiple of 8
    (2, 70, 37),    # D with a remainder; 140 rows
    (5, 1),         # one feature: x - mean = 0
])
def test_layer_norm_kernel_equals_xla_formulation(shape, monkeypatch):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=shape) * 3 + 1, jnp.float32)
  scale = jnp.asarray(rng.normal(size=shape[-1]), jnp.float32)
  bias = jnp.asarray(rng.normal(size=shape[-1]), jnp.float32)
  cotangent = jnp.asarray(rng.normal(size=shape), jnp.float32)
  value_and_grads = lambda: jax.value_and_grad(
      lambda x, s, b: jnp.sum(layer_norm(x, s, b, 1e-6) * cotangent),
      argnums=(0, 1, 2))(x, scale, bias)
  assert layer_norm_cpu_kernel.usable(x.dtype)
  got = value_and_grads()
  monkeypatch.setattr(layer_norm_cpu_kernel, "usable", lambda dtype: False)
  want = value_and_grads()
  _assert_trees_close(got, want, rtol=2e-5, atol=2e-5)
  # Against float64, in jitted code as in a training step.
  monkeypatch.undo()
  y = jax.jit(lambda x: layer_norm(x, scale, bias, 1e-6))(x)
  x64 = np.asarray(x, np.float64)
  centered = x64 - x64.mean(-1, keepdims=True)
  want = centered / np.sqrt((centered ** 2).mean(-1, keepdims=True) + 1e-6)
  np.testing.assert_allclose(y, want * np.asarray(scale) + np.asarray(bias),
                             rtol=1e-5, atol=1e-5)


@_NATIVE
def test_vit_attention_methods_give_the_same_model():
  module, variables = models.create(
      "ViT-Ti_16", 10, 32, hidden_size=48, num_layers=2, num_heads=3,
      mlp_dim=96)
  images = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)),
                       jnp.float32)
  variables = _perturbed(variables)

  def logits_and_grads(method):
    m = module.clone(attention_method=method)
    return _value_and_grads(lambda v, x: m.apply(v, x), variables, images)

  _assert_trees_close(logits_and_grads("native"), logits_and_grads("xla"),
                      rtol=1e-4, atol=1e-5)


def test_gelu_with_lean_backward_equals_exact_gelu():
  x = jnp.linspace(-6, 6, 101)
  exact = lambda x: jax.nn.gelu(x, approximate=False)
  float64 = np.array([v * math.erfc(-v / math.sqrt(2)) / 2
                      for v in np.asarray(x, np.float64)])
  # PyTorch's erf form: float32 cancellation in 1 + erf(x / sqrt(2)) costs
  # up to ~5e-7 absolute below x = -3, where |GELU| < 5e-3.
  np.testing.assert_allclose(gelu(x), float64, rtol=1e-6, atol=6e-7)
  np.testing.assert_allclose(gelu(x)[x > -3], float64[x > -3], rtol=1e-6,
                             atol=1e-7)
  loss = lambda f: lambda x: jnp.sum(jnp.sin(x) * f(x))
  np.testing.assert_allclose(jax.grad(loss(gelu))(x), jax.grad(loss(exact))(x),
                             rtol=1e-5, atol=1e-6)
  half = x.astype(jnp.bfloat16)
  assert jax.grad(loss(gelu))(half).dtype == jnp.bfloat16


@pytest.mark.parametrize("shape", [(2, 7, 12), (3, 5)])
def test_layer_norm_equals_flax_layer_norm(shape):
  x = jnp.asarray(np.random.default_rng(0).normal(2.0, 3.0, size=shape),
                  jnp.float32)
  reference = nn.LayerNorm(epsilon=1e-6)
  ours = LayerNorm(epsilon=1e-6)
  variables = reference.init(jax.random.PRNGKey(0), x)
  mine = ours.init(jax.random.PRNGKey(0), x)
  assert jax.tree.structure(mine) == jax.tree.structure(variables)
  for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(variables)):
    np.testing.assert_array_equal(a, b)
  variables = _perturbed(variables)
  want = _value_and_grads(reference.apply, variables, x)
  got = _value_and_grads(ours.apply, variables, x)
  _assert_trees_close(got, want, rtol=1e-5, atol=1e-5)


def test_layer_norm_in_bfloat16_keeps_float32_statistics():
  x = jnp.asarray(np.random.default_rng(0).normal(100.0, 1.0, size=(4, 64)),
                  jnp.float32)
  variables = LayerNorm().init(jax.random.PRNGKey(0), x)
  half = LayerNorm(dtype=jnp.bfloat16).apply(variables, x)
  assert half.dtype == jnp.bfloat16
  full = LayerNorm().apply(variables, x)
  # A mean of 100 with unit spread: bfloat16 statistics (8 mantissa bits)
  # would lose most of the signal, float32 ones keep it to bfloat16 rounding.
  np.testing.assert_allclose(np.asarray(half, np.float32), full, atol=0.05)
  dx = jax.grad(lambda x: jnp.sum(LayerNorm(dtype=jnp.bfloat16).apply(
      variables, x.astype(jnp.bfloat16)).astype(jnp.float32) * x))(x)
  assert dx.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(dx)))


@pytest.mark.parametrize("dtype,tolerance", [(jnp.float32, 2e-5),
                                             (jnp.bfloat16, 5e-2)])
def test_attention_backward_equals_autodiff(dtype, tolerance):
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.normal(size=(2, 3, n, 8)), dtype)
             for n in (5, 7, 7))

  def autodiff(q, k, v):
    weights = jax.nn.softmax(
        jnp.einsum("nhqk,nhvk->nhqv", q, k).astype(jnp.float32), axis=-1)
    return jnp.einsum("nhqv,nhvk->nhqk", weights.astype(dtype), v)

  cotangent = jnp.asarray(rng.normal(size=q.shape), jnp.float32)
  value_and_grads = lambda f: jax.value_and_grad(
      lambda q, k, v: jnp.sum(f(q, k, v).astype(jnp.float32) * cotangent),
      argnums=(0, 1, 2))(q, k, v)
  want = value_and_grads(autodiff)
  got = value_and_grads(dot_product_attention)
  assert dot_product_attention(q, k, v).dtype == dtype
  _assert_trees_close(got, want, rtol=tolerance, atol=tolerance)


def test_attention_dropout_is_active_only_when_training():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 9, 12)),
                  jnp.float32)
  layer = SelfAttention(3, dropout_rate=0.5)
  variables = layer.init(jax.random.PRNGKey(0), x, deterministic=True)
  plain = SelfAttention(3).apply(variables, x, deterministic=True)
  np.testing.assert_allclose(
      layer.apply(variables, x, deterministic=True), plain, rtol=1e-6)
  dropped = layer.apply(variables, x, deterministic=False,
                        rngs={"dropout": jax.random.PRNGKey(1)})
  assert float(jnp.max(jnp.abs(dropped - plain))) > 1e-3
  grads = jax.grad(lambda v: jnp.sum(layer.apply(
      v, x, deterministic=False, rngs={"dropout": jax.random.PRNGKey(1)})))(
          variables)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))


def test_gelu_with_bias_equals_autodiff():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(3, 4, 6)) * 3, jnp.float32)
  bias = jnp.asarray(rng.normal(size=6), jnp.float32)
  cotangent = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
  value_and_grads = lambda f: jax.value_and_grad(
      lambda x, b: jnp.sum(f(x, b) * cotangent), argnums=(0, 1))(x, bias)
  want = value_and_grads(lambda x, b: jax.nn.gelu(x + b, approximate=False))
  _assert_trees_close(value_and_grads(gelu_with_bias), want, rtol=1e-5,
                      atol=1e-6)


def test_training_step_keeps_at_most_17_token_activations_per_block():
  # What a block's backward pass needs, in units of one [N, L, D] float32
  # activation (L=17, D=64, 2 heads): the two LayerNorm inputs and outputs
  # (4), query/key/value (3), the attention output and its merged heads (2),
  # the attention weights (0.5), the MLP's pre-activation and GELU output
  # (8): 17.5. flax's LayerNorm and attention, GELU's erf merged with the
  # forward pass's, and LayerNorm's normalised input kept from it measured
  # 19.2 per block; this code measures 16.5 (XLA reuses some buffers).
  depth, d, length, batch = 8, 64, 17, 8
  module, variables = models.create(
      "ViT-Ti_16", 10, 64, hidden_size=d, num_layers=depth, num_heads=2,
      mlp_dim=4 * d)
  images = jnp.zeros((batch, 64, 64, 3))
  loss = lambda p: jnp.sum(module.apply({"params": p}, images, train=True))
  compiled = jax.jit(jax.grad(loss)).lower(variables["params"]).compile()
  activation = batch * length * d * 4
  temp = compiled.memory_analysis().temp_size_in_bytes / activation
  assert temp <= 17 * depth + 20, temp


def test_mlp_block_equals_flax_dense_gelu_dense():
  from etcjax.models.vit import MlpBlock  # pylint: disable=g-import-not-at-top

  class Reference(nn.Module):

    @nn.compact
    def __call__(self, x):
      init = dict(kernel_init=nn.initializers.xavier_uniform(),
                  bias_init=nn.initializers.normal(stddev=1e-6))
      width = x.shape[-1]
      x = nn.Dense(24, name="Dense_0", **init)(x)
      x = jax.nn.gelu(x, approximate=False)
      return nn.Dense(width, name="Dense_1", **init)(x)

  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, 12)),
                  jnp.float32)
  reference = Reference()
  variables = reference.init(jax.random.PRNGKey(0), x)
  ours = MlpBlock(24)
  mine = ours.init(jax.random.PRNGKey(0), x, deterministic=True)
  assert jax.tree.structure(mine) == jax.tree.structure(variables)
  for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(variables)):
    np.testing.assert_array_equal(a, b)
  variables = _perturbed(variables)
  want = _value_and_grads(reference.apply, variables, x)
  got = _value_and_grads(
      lambda v, x: ours.apply(v, x, deterministic=True), variables, x)
  _assert_trees_close(got, want, rtol=1e-5, atol=1e-5)
