"""Every depthwise formulation equals XLA's grouped convolution."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from etcjax.models import depthwise_conv
from etcjax.models import depthwise_cpu_kernel
from etcjax.models.depthwise_conv import DepthwiseConv, depthwise_conv2d

NATIVE = pytest.param(
    "native", marks=pytest.mark.skipif(
        not depthwise_cpu_kernel.available(),
        reason="the C++ depthwise kernel was not built (no compiler at "
        "install time); 'auto' then uses the XLA formulations tested here"))


def _value_and_grads(method, x, kernel, cotangent):
  def loss(x, kernel):
    return jnp.sum(depthwise_conv2d(x, kernel, method=method) * cotangent)
  y = depthwise_conv2d(x, kernel, method=method)
  return (y,) + jax.grad(loss, argnums=(0, 1))(x, kernel)


@pytest.mark.parametrize("method", ["toeplitz", "shifted", NATIVE])
@pytest.mark.parametrize("shape,k", [
    ((2, 8, 8, 5), 9),   # kernel larger than the grid: the paper's P=4 case
    ((3, 6, 9, 4), 3),   # non-square grid
    ((2, 7, 5, 3), 4),   # even kernel: XLA puts the extra padding row last
    ((1, 11, 11, 2), 5),
    # The native kernel's code paths: channel blocks of 8 plus a partial
    # one, output strips of 8 columns plus a remainder, kernel rows longer
    # than the 9 taps held in registers at once.
    ((2, 12, 11, 19), 13),
    ((2, 17, 16, 32), 9),
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
    # Sums of hundreds of products in another order: the absolute rounding
    # grows with the tensor's scale.
    np.testing.assert_allclose(a, b, rtol=1e-5,
                               atol=2e-5 + 1e-6 * float(jnp.abs(b).max()),
                               err_msg=name)


def test_reference_values_of_a_tiny_case():
  # 1 channel, 3x3 image, 3x3 kernel of ones: each output sums its
  # in-image neighbourhood.
  x = jnp.arange(9.0).reshape(1, 3, 3, 1)
  kernel = jnp.ones((3, 3, 1, 1))
  expected = np.array([[8, 15, 12], [21, 36, 27], [20, 33, 24]], np.float32)
  methods = ["grouped", "toeplitz", "shifted"]
  if depthwise_cpu_kernel.available():
    methods.append("native")
  for method in methods:
    np.testing.assert_array_equal(
        depthwise_conv2d(x, kernel, method=method)[0, :, :, 0], expected)


def test_auto_selection_per_backend_dtype_and_grid():
  select = depthwise_conv.select_method
  assert select("tpu", 32, 32) == "grouped"
  assert select("gpu", 8, 8, native=True) == "grouped"
  # With the compiled kernel: float32 on CPU always uses it, bfloat16 not.
  for grid, k in [(32, 9), (16, 9), (8, 9), (8, 5), (4, 3)]:
    assert select("cpu", grid, grid, k, native=True) == "native"
  assert select("cpu", 8, 8, 9, jnp.bfloat16, native=True) == "toeplitz"
  # Without it, the measured crossover (depthwise_conv.py's table):
  # ConvMixer-256/8 at patch 4 (8x8, k=9) toeplitz; at patch 2 (16x16,
  # k=9) shifted; the :cpu ConvMixer (8x8, k=5) toeplitz.
  assert select("cpu", 8, 8, 9, native=False) == "toeplitz"
  assert select("cpu", 32, 32, 9, native=False) == "shifted"
  assert select("cpu", 16, 16, 9, native=False) == "shifted"
  assert select("cpu", 8, 8, 5, native=False) == "toeplitz"
  assert select("cpu", 8, 8, 3, native=False) == "shifted"
  assert select("cpu", 4, 4, 3, native=False) == "toeplitz"
  assert select("cpu", 32, 32, 9) == (
      "native" if depthwise_cpu_kernel.available() else "shifted")


def test_compiled_kernel_is_built_in_ci():
  # The install builds it wherever a C++ compiler exists; CI has one, so a
  # failed build (a header or compiler change) fails here instead of
  # silently running the slow XLA paths.
  if not os.environ.get("CI"):
    pytest.skip("checked in CI only (set CI=1); elsewhere it is optional")
  assert depthwise_cpu_kernel.available()


@pytest.mark.skipif(not depthwise_cpu_kernel.available(),
                    reason="the C++ depthwise kernel was not built")
def test_native_refuses_what_it_cannot_compute():
  x = jnp.zeros((1, 8, 8, 4), jnp.bfloat16)
  kernel = jnp.zeros((3, 3, 1, 4), jnp.bfloat16)
  with pytest.raises(ValueError, match="computes in float32, got x of dtype "
                     "bfloat16"):
    depthwise_conv2d(x, kernel, method="native")
  # 'auto' picks an XLA formulation for bfloat16 instead.
  assert depthwise_conv2d(x, kernel).dtype == jnp.bfloat16
  x = jnp.zeros((1, 8, 8, 4))
  with pytest.raises(ValueError, match=r"taps must be \[k, k, C=4\], got "
                     r"\(3, 3, 5\)"):
    depthwise_cpu_kernel.correlate(x, jnp.zeros((3, 3, 5)), 1, 1)
  with pytest.raises(ValueError, match=r"g must have x's shape \(1, 8, 8, 4\)"):
    depthwise_cpu_kernel.tap_gradient(x, jnp.zeros((1, 8, 7, 4)), 3, 1, 1)


@pytest.mark.skipif(not depthwise_cpu_kernel.available(),
                    reason="the C++ depthwise kernel was not built")
@pytest.mark.parametrize("batch", [1, 2, 5])
def test_native_batch_split_over_threads_equals_image_by_image(batch):
  # The kernels split the batch into one chunk per thread of XLA's pool
  # (uneven at 5 on a 2-core machine); each image must come out as if
  # computed alone, and the kernel gradient must be the sum over images.
  rng = np.random.default_rng(batch)
  x = jnp.asarray(rng.normal(size=(batch, 9, 7, 11)), jnp.float32)
  g = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
  taps = jnp.asarray(rng.normal(size=(5, 5, 11)), jnp.float32)
  correlate = jax.jit(lambda x: depthwise_cpu_kernel.correlate(x, taps, 2, 2))
  gradient = jax.jit(
      lambda x, g: depthwise_cpu_kernel.tap_gradient(x, g, 5, 2, 2))
  np.testing.assert_array_equal(
      correlate(x), jnp.concatenate([correlate(x[i:i + 1])
                                     for i in range(batch)]))
  np.testing.assert_allclose(
      gradient(x, g), sum(gradient(x[i:i + 1], g[i:i + 1])
                          for i in range(batch)), rtol=1e-5, atol=1e-5)


def test_native_under_vmap():
  if not depthwise_cpu_kernel.available():
    pytest.skip("the C++ depthwise kernel was not built")
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(3, 2, 6, 6, 8)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(5, 5, 1, 8)), jnp.float32)
  batched = jax.vmap(lambda a: depthwise_conv2d(a, kernel, method="native"))
  expected = jax.vmap(lambda a: depthwise_conv2d(a, kernel, method="grouped"))
  np.testing.assert_allclose(jax.jit(batched)(x), expected(x), atol=2e-5)
  # Batch-sharded inputs over 8 devices: test_convmixer's BatchNorm test,
  # whose 'auto' is 'native' on CPU.


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
