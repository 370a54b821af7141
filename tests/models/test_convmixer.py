"""ConvMixer: structure, BatchNorm modes, data parallelism, bad input."""

import math
import os
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from etcjax import models
from etcjax.models import depthwise_cpu_kernel
from etcjax.models.convmixer import ConvMixer
from etcjax.models.patch_embedding import PatchEmbedding
from random_variables import random_variables  # tests/models is on sys.path


def _count(tree):
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def _small(**overrides):
  kwargs = dict(dim=16, depth=2, patch_size=2, kernel_size=3)
  kwargs.update(overrides)
  module, shapes = models.create("ConvMixer-256/8", 10, 16, init=False,
                                 **kwargs)
  variables = random_variables(shapes)
  # Zero running means and unit variances, as after initialisation.
  variables["batch_stats"] = jax.tree_util.tree_map_with_path(
      lambda p, v: np.full(v.shape, "var" in jax.tree_util.keystr(p),
                           np.float32), variables["batch_stats"])
  return module, variables


def _images(n, size=16, seed=0):
  return jax.random.uniform(jax.random.PRNGKey(seed), (n, size, size, 3),
                            minval=-1, maxval=1)


@pytest.mark.parametrize("dim,depth,p,k,classes", [
    (256, 8, 1, 9, 10), (384, 8, 4, 9, 10), (32, 3, 2, 5, 7)])
def test_parameter_count_follows_the_architecture(dim, depth, p, k, classes):
  _, shapes = models.create("ConvMixer-256/8", classes, 32, init=False,
                            dim=dim, depth=depth, patch_size=p, kernel_size=k)
  bn = 2 * dim
  layer = (k * k * dim + dim) + bn + (dim * dim + dim) + bn
  expected = (p * p * 3 * dim + dim) + bn + depth * layer + dim * classes + classes
  assert _count(shapes["params"]) == expected
  # Running mean and variance of every BatchNorm.
  assert _count(shapes["batch_stats"]) == 2 * dim * (1 + 2 * depth)


def test_eval_uses_running_statistics_and_train_updates_them():
  module, variables = _small()
  x = _images(4)
  eval_fn = jax.jit(lambda v, x: module.apply(v, x, train=False))
  # Eval: an example's logits do not depend on the rest of the batch.
  np.testing.assert_allclose(eval_fn(variables, x)[:2], eval_fn(variables, x[:2]),
                             rtol=1e-5, atol=1e-5)
  train_fn = jax.jit(lambda v, x: module.apply(
      v, x, train=True, mutable=["batch_stats"]))
  logits, updates = train_fn(variables, x)
  logits_half, _ = train_fn(variables, x[:2])
  assert not np.allclose(logits[:2], logits_half, atol=1e-4)
  # PyTorch's momentum 0.1: running = 0.9 * running (0 at init) + 0.1 * mean
  # of the batch, here of GELU(patch embedding).
  embedded = PatchEmbedding(16, 2).apply(
      {"params": variables["params"]["patch_embed"]}, x)
  batch_mean = jnp.mean(jax.nn.gelu(embedded, approximate=False), (0, 1, 2))
  np.testing.assert_allclose(updates["batch_stats"]["patch_norm"]["mean"],
                             0.1 * batch_mean, rtol=1e-4, atol=1e-6)


def test_depthwise_method_changes_nothing_but_speed():
  module, variables = _small(depthwise_method="grouped")
  x = _images(3)

  def loss(params, method):
    m = module.clone(depthwise_method=method)
    logits, _ = m.apply(dict(variables, params=params), x, train=True,
                        mutable=["batch_stats"])
    return jnp.sum(logits ** 2)

  params = variables["params"]
  value_and_grad = jax.jit(jax.value_and_grad(loss), static_argnums=1)
  expected = value_and_grad(params, "grouped")
  methods = ["toeplitz", "shifted"]
  if depthwise_cpu_kernel.available():
    methods.append("native")
  for method in methods:
    value, grads = value_and_grad(params, method)
    np.testing.assert_allclose(value, expected[0], rtol=1e-4)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(expected[1])):
      np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-4)


SHARDED_SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from etcjax import models
    assert jax.device_count() == 8, jax.devices()
    module, shapes = models.create("ConvMixer-256/8", 10, 16, dim=16, depth=2,
                                   patch_size=2, kernel_size=3, init=False)
    rng = np.random.default_rng(0)
    variables = jax.tree.map(
        lambda s: rng.uniform(0.5, 1.5, s.shape).astype(np.float32), shapes)
    x = jax.random.uniform(jax.random.PRNGKey(0), (16, 16, 16, 3),
                           minval=-1, maxval=1)
    def step(variables, x):
      def loss(params):
        logits, upd = module.apply(dict(variables, params=params), x,
                                   train=True, mutable=["batch_stats"])
        return jnp.sum(logits ** 2), (logits, upd)
      (_, (logits, upd)), grads = jax.value_and_grad(loss, has_aux=True)(
          variables["params"])
      return logits, upd["batch_stats"], grads
    single = jax.jit(step)(variables, x)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    x_sharded = jax.device_put(x, NamedSharding(mesh, P("data")))
    assert len(x_sharded.addressable_shards) == 8
    sharded = jax.jit(step)(variables, x_sharded)
    for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(single)):
      a, b = np.asarray(a), np.asarray(b)
      # Sums in another order: relative to the tensor's scale.
      assert np.abs(a - b).max() <= 1e-4 * np.abs(b).max() + 1e-7, (
          np.abs(a - b).max(), np.abs(b).max())
    # Per-device batches of 2 would give other statistics: the check can fail.
    local = jax.jit(step)(variables, x[:2])
    assert not np.allclose(local[1]["patch_norm"]["mean"],
                           single[1]["patch_norm"]["mean"], atol=1e-4)
    print("SHARDED_OK")
""")


def test_batchnorm_uses_global_batch_statistics_when_sharded():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-c", SHARDED_SCRIPT], env=env,
                          capture_output=True, text=True, timeout=300,
                          cwd=os.path.dirname(os.path.dirname(
                              os.path.dirname(os.path.abspath(__file__)))))
  assert result.returncode == 0 and "SHARDED_OK" in result.stdout, (
      result.stdout + result.stderr[-3000:])


def test_bad_input():
  module, variables = _small(patch_size=4)
  with pytest.raises(ValueError, match="divisible by its patch size 4"):
    module.apply(variables, jnp.zeros((1, 18, 18, 3)))
  with pytest.raises(ValueError, match="3-channel"):
    module.apply(variables, jnp.zeros((1, 16, 16, 4)))
  with pytest.raises(ValueError, match=r"\[-1, 1\].*uint8"):
    module.apply(variables, jnp.zeros((1, 16, 16, 3), jnp.uint8))
  with pytest.raises(ValueError, match="got shape"):
    module.apply(variables, jnp.zeros((16, 16, 3)))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_fused_gelu_batch_norm_equals_flax_batch_norm_of_gelu(dtype):
  from etcjax.models.convmixer import GeluBatchNorm  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(1.0, 2.0, (4, 5, 6, 7)), dtype)
  cotangent = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
  reference = nn.BatchNorm(use_running_average=False, momentum=0.9,
                           epsilon=1e-5, dtype=dtype)
  fused = GeluBatchNorm(False, dtype=dtype)
  variables = reference.init(jax.random.PRNGKey(0), x)
  assert (jax.tree.map(jnp.shape, fused.init(jax.random.PRNGKey(0), x))
          == jax.tree.map(jnp.shape, variables))
  variables = {  # non-trivial scale, bias and running statistics
      "params": {"scale": jnp.linspace(0.5, 2, 7), "bias": jnp.arange(7.0)},
      "batch_stats": {"mean": jnp.ones(7), "var": jnp.full(7, 3.0)}}
  exact = lambda x: jax.nn.gelu(x, approximate=False)

  def run(module, pre, params, x):
    y, updates = module.apply(dict(variables, params=params), pre(x),
                              mutable=["batch_stats"])
    return jnp.sum(y.astype(jnp.float32) * cotangent), (y, updates)

  results = []
  for module, pre in [(reference, exact), (fused, lambda x: x)]:
    (_, (y, updates)), grads = jax.jit(jax.value_and_grad(
        lambda p, x, m=module, f=pre: run(m, f, p, x), argnums=(0, 1),
        has_aux=True))(variables["params"], x)
    results.append((y, updates["batch_stats"], grads))
  tol = dict(rtol=1e-5, atol=1e-5) if dtype == jnp.float32 else dict(
      rtol=2e-2, atol=5e-2)
  for got, want in zip(jax.tree.leaves(results[1]), jax.tree.leaves(results[0])):
    assert got.dtype == want.dtype
    np.testing.assert_allclose(np.asarray(got, np.float32),
                               np.asarray(want, np.float32), **tol)
  # Evaluation mode uses the running statistics.
  np.testing.assert_allclose(
      np.asarray(fused.clone(use_running_average=True).apply(variables, x),
                 np.float32),
      np.asarray(reference.clone(use_running_average=True).apply(
          variables, exact(x)), np.float32), **tol)


@pytest.mark.parametrize("method", ["toeplitz", "shifted", "grouped"])
def test_bfloat16_compute_keeps_float32_parameters(method):
  module, variables = _small(depthwise_method=method)
  module = module.clone(dtype=jnp.bfloat16)
  x = _images(2)

  def loss(params):
    logits, _ = module.apply(dict(variables, params=params), x, train=True,
                             mutable=["batch_stats"])
    return jnp.sum(logits ** 2), logits

  (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(
      variables["params"])
  assert logits.dtype == jnp.float32
  assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))
  reference = jax.jit(lambda v, x: module.clone(dtype=jnp.float32).apply(
      v, x, train=True, mutable=["batch_stats"])[0])(variables, x)
  np.testing.assert_allclose(logits, reference, rtol=0.1, atol=0.1)


def test_describe_names_the_overrides_that_make_another_model():
  # A registered name with overrides is a different model; logs and
  # tables must not call the CPU-sized ConvMixer 'ConvMixer-256/8'.
  assert models.describe("ConvMixer-256/8") == "ConvMixer-256/8"
  assert models.describe("ConvMixer-256/8", {}) == "ConvMixer-256/8"
  assert (models.describe("ConvMixer-256/8", {"dim": 128, "depth": 6})
          == "ConvMixer-256/8 (depth=6, dim=128)")


def test_training_step_keeps_four_activations_per_layer():
  # What the backward pass needs per mixer layer: its input (the depthwise
  # kernel gradient), the depthwise output and the pointwise output (GELU
  # and BatchNorm are recomputed from them) and the residual sum (the
  # pointwise kernel gradient). Autodiff of GELU -> BatchNorm, or a
  # recomputation XLA hoists into the forward pass, keeps 8 per layer: twice
  # the memory (measured 69 activations at depth 8, against 39).
  depth, activation = 8, 8 * 16 * 16 * 32 * 4
  module = ConvMixer(10, 32, depth, patch_size=1, kernel_size=5)
  x = jnp.zeros((8, 16, 16, 3))
  variables = module.init(jax.random.PRNGKey(0), x[:1])

  def loss(params):
    logits, updates = module.apply(
        dict(variables, params=params), x, train=True,
        mutable=["batch_stats"])
    return jnp.sum(logits), updates

  compiled = jax.jit(jax.grad(loss, has_aux=True)).lower(
      variables["params"]).compile()
  temp = compiled.memory_analysis().temp_size_in_bytes / activation
  assert temp <= 4 * depth + 10, temp
