"""Every depthwise formulation equals XLA's grouped convolution."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from etcjax.models import depthwise_conv
from etcjax.models.depthwise_conv import DepthwiseConv, depthwise_conv2d


def _value_and_grads(method, x, kernel, cotangent):
  def loss(x, kernel):
    return jnp.sum(depthwise_conv2d(x, kernel, method=method) * cotangent)
  y = depthwise_conv2d(x, kernel, method=method)
  return (y,) + jax.grad(loss, argnums=(0, 1))(x, kernel)


@pytest.mark.parametrize("method", ["toeplitz", "shifted"])
@pytest.mark.parametrize("shape,k", [
    ((2, 8, 8, 5), 9),   # kernel larger than the grid: the paper's P=4 case
    ((3, 6, 9, 4), 3),   # non-square grid
    ((2, 7, 5, 3), 4),   # even kernel: XLA puts the extra padding row last
    ((1, 11, 11, 2), 5),
])
def test_values_and_gradients_equal_grouped_conv(method, shape, k):
  rng = np.random.default_rng(k)
  x = jnp.asarray(rng.normal(size=shape), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(k, k, 1, shape[-1])), jnp.float32)
  cotangent = jnp.asarray(rng.normal(size=shape), jnp.float32)
  expected = _value_and_grads("grouped", x, kernel, cotangent)
  got = jax.jit(_value_and_grads, static_argnums=0)(method, x, kernel,
                                                    cotangent)
  for name, a, b in zip(["output", "d/dx", "d/dkernel"], got, expected):
    assert a.shape == b.shape, name
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=2e-5, err_msg=name)


def test_reference_values_of_a_tiny_case():
  # 1 channel, 3x3 image, 3x3 kernel of ones: each output sums its
  # in-image neighbourhood.
  x = jnp.arange(9.0).reshape(1, 3, 3, 1)
  kernel = jnp.ones((3, 3, 1, 1))
  expected = np.array([[8, 15, 12], [21, 36, 27], [20, 33, 24]], np.float32)
  for method in ["grouped", "toeplitz", "shifted"]:
    np.testing.assert_array_equal(
        depthwise_conv2d(x, kernel, method=method)[0, :, :, 0], expected)


def test_auto_selection_per_backend_and_grid():
  assert depthwise_conv.select_method("tpu", 32, 32) == "grouped"
  assert depthwise_conv.select_method("gpu", 8, 8) == "grouped"
  assert depthwise_conv.select_method("cpu", 8, 8) == "toeplitz"
  assert depthwise_conv.select_method("cpu", 32, 32) == "shifted"
  # The measured crossover (depthwise_conv.py's table): ConvMixer-256/8 at
  # patch 4 (8x8, k=9) toeplitz; at patch 2 (16x16, k=9) shifted; the :cpu
  # ConvMixer (8x8, k=5) toeplitz.
  assert depthwise_conv.select_method("cpu", 8, 8, 9) == "toeplitz"
  assert depthwise_conv.select_method("cpu", 16, 16, 9) == "shifted"
  assert depthwise_conv.select_method("cpu", 8, 8, 5) == "toeplitz"
  assert depthwise_conv.select_method("cpu", 8, 8, 3) == "shifted"
  assert depthwise_conv.select_method("cpu", 4, 4, 3) == "toeplitz"


def test_parameters_do_not_depend_on_the_method():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 6))
  rng = jax.random.PRNGKey(1)
  variables = DepthwiseConv(5, "grouped").init(rng, x)
  assert variables["params"]["kernel"].shape == (5, 5, 1, 6)
  expected = DepthwiseConv(5, "grouped").apply(variables, x)
  for method in ["toeplitz", "shifted", "auto"]:
    module = DepthwiseConv(kernel_size=5, method=method)
    shapes = jax.eval_shape(module.init, rng, x)
    assert jax.tree.map(jnp.shape, shapes) == jax.tree.map(jnp.shape, variables)
    np.testing.assert_allclose(jax.jit(module.apply)(variables, x), expected,
                               atol=1e-5, err_msg=method)


def test_bad_arguments():
  x = jnp.zeros((1, 8, 8, 4))
  with pytest.raises(ValueError, match="unknown depthwise method 'fft'"):
    depthwise_conv2d(x, jnp.zeros((3, 3, 1, 4)), method="fft")
  with pytest.raises(ValueError, match=r"\[k, k, 1, C=4\]"):
    depthwise_conv2d(x, jnp.zeros((3, 3, 4, 4)))
  with pytest.raises(ValueError, match=r"x \[N, H, W, C\]"):
    depthwise_conv2d(jnp.zeros((8, 8, 4)), jnp.zeros((3, 3, 1, 4)))
