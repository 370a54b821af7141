"""bias.add_bias and bias.Dense: nn.Dense's values, float32 bias sums."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from etcjax.models import bias


def test_dense_is_nn_dense_in_float32():
  # Same parameter tree and initial values (checkpoints and seeds carry
  # over), same outputs and gradients.
  x = jax.random.normal(jax.random.key(0), (2, 5, 12))
  ours, theirs = bias.Dense(7), nn.Dense(7)
  variables = ours.init(jax.random.key(1), x)
  reference = theirs.init(jax.random.key(1), x)
  jax.tree.map(np.testing.assert_array_equal, variables, reference)

  def grads(module):
    return jax.grad(lambda v: jnp.sum(jnp.sin(module.apply(v, x))))(variables)

  np.testing.assert_array_equal(ours.apply(variables, x),
                                theirs.apply(variables, x))
  jax.tree.map(np.testing.assert_array_equal, grads(ours), grads(theirs))


def test_bfloat16_bias_gradient_is_summed_in_float32():
  # 8192 ones: a bfloat16 running sum stops at 256 (256 + 1 rounds to 256).
  x = jnp.zeros((8, 32, 32, 16), jnp.bfloat16)
  g = jax.jit(jax.grad(lambda b: jnp.sum(
      bias.add_bias(x, b).astype(jnp.float32))))(jnp.zeros(16, jnp.bfloat16))
  assert g.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(g, np.float32), 8192.0)
  # Random terms that nearly cancel: the float32 sum, rounded once.
  cotangent = jax.random.normal(jax.random.key(0), x.shape).astype(
      jnp.bfloat16)
  _, vjp = jax.vjp(bias.add_bias, x, jnp.zeros(16, jnp.bfloat16))
  _, db = jax.jit(vjp)(cotangent)
  exact = np.asarray(cotangent, np.float64).sum((0, 1, 2))
  np.testing.assert_allclose(np.asarray(db, np.float64), exact,
                             rtol=2 ** -8, atol=1e-6)
