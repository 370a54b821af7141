"""The paper's baselines: ResNet-18 (PE) and the LE / ELE adaptation networks."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from etcjax import models
from etcjax.models import adaptation_networks as adapt
from random_variables import random_variables  # tests/models is on sys.path


def _count(tree):
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def test_resnet18_parameter_count():
  _, shapes = models.create("ResNet-18", 10, 32, init=False)
  assert _count(shapes["params"]) == 11_173_962  # the paper's 11.17 M


def test_resnet_forward_and_batch_stats():
  module, shapes = models.create("ResNet-18", 10, 32, width=4,
                                 stage_sizes=(1, 1, 1, 1), init=False)
  variables = random_variables(shapes)
  x = jax.random.uniform(jax.random.PRNGKey(0), (2, 32, 32, 3), minval=-1)
  logits, updates = jax.jit(lambda v, x: module.apply(
      v, x, train=True, mutable=["batch_stats"]))(variables, x)
  assert logits.shape == (2, 10) and logits.dtype == jnp.float32
  assert set(updates["batch_stats"]) == set(variables["batch_stats"])
  with pytest.raises(ValueError, match="divisible by its patch size 8"):
    module.apply(variables, jnp.zeros((1, 36, 36, 3)))


def test_nibble_planes_split_each_byte():
  pixels = np.array([0, 15, 16, 171, 255], np.float32)  # 171 = 0xAB
  images = jnp.asarray(np.tile(pixels[:, None], (1, 3)).reshape(1, 1, 5, 3))
  planes = np.asarray(adapt.nibble_planes(images / 127.5 - 1))
  values = np.round((planes + 1) * 7.5)
  np.testing.assert_array_equal(values[0, 0, :, 0], [0, 0, 1, 10, 15])  # upper
  np.testing.assert_array_equal(values[0, 0, :, 3], [0, 15, 0, 11, 15])  # lower
  assert planes.min() >= -1 and planes.max() <= 1


def test_space_to_depth_round_trip_and_block_layout():
  x = jnp.arange(2 * 8 * 12 * 6, dtype=jnp.float32).reshape(2, 8, 12, 6)
  blocks = adapt.space_to_depth(x, 4)
  assert blocks.shape == (2, 2, 3, 96)
  np.testing.assert_array_equal(blocks[1, 1, 2].reshape(4, 4, 6),
                                x[1, 4:8, 8:12])
  np.testing.assert_array_equal(adapt.depth_to_space(blocks, 4), x)


def _adaptation(per_position):
  module = adapt.BlockwiseAdaptation(block_size=4, hidden_features=(32,),
                                     per_position=per_position)
  images = jnp.asarray(np.random.default_rng(0).integers(
      0, 256, (3, 16, 16, 3)), jnp.float32) / 127.5 - 1
  # Random everything (BatchNorm statistics and biases too) so that nothing
  # is trivially zero.
  variables = random_variables(
      jax.eval_shape(module.init, jax.random.PRNGKey(0), images))
  apply = jax.jit(lambda x: module.apply(variables, x))
  return module, variables, images, apply


@pytest.mark.parametrize("per_position", [False, True])
def test_adaptation_is_block_wise(per_position):
  _, _, images, apply = _adaptation(per_position)
  out = apply(images)
  assert out.shape == (3, 16, 16, 3)
  changed = images.at[:, 4:8, 8:12].set(-images[:, 4:8, 8:12])
  diff = np.abs(np.asarray(apply(changed) - out)).sum(axis=(0, 3)) > 0
  expected = np.zeros((16, 16), bool)
  expected[4:8, 8:12] = True
  np.testing.assert_array_equal(diff, expected)


def test_le_shares_weights_across_blocks_and_ele_does_not():
  for per_position, shared in [(False, True), (True, False)]:
    _, variables, images, apply = _adaptation(per_position)
    # Swap two blocks of the input.
    a, b = images[:, 0:4, 0:4], images[:, 8:12, 4:8]
    swapped = images.at[:, 0:4, 0:4].set(b).at[:, 8:12, 4:8].set(a)
    out, out_swapped = apply(images), apply(swapped)
    same = np.allclose(out_swapped[:, 8:12, 4:8], out[:, 0:4, 0:4], atol=1e-5)
    assert same == shared, per_position
    kernel = variables["params"]["dense_0"]["kernel"]
    assert kernel.shape == ((4, 4, 96, 32) if per_position else (96, 32))


@pytest.mark.parametrize("name", ["LE-ResNet-18", "ELE-ResNet-18"])
def test_adapted_classifiers(name):
  module, shapes = models.create(name, 10, 32, hidden_features=(16,),
                                 width=4, stage_sizes=(1, 1), init=False)
  variables = random_variables(shapes)
  assert set(variables["params"]) == {"adaptation", "classifier"}
  x = jax.random.uniform(jax.random.PRNGKey(0), (2, 32, 32, 3), minval=-1)
  logits, _ = jax.jit(lambda v, x: module.apply(
      v, x, train=True, mutable=["batch_stats"]))(variables, x)
  assert logits.shape == (2, 10)
  with pytest.raises(ValueError, match="divisible by its patch size 4"):
    module.apply(variables, jnp.zeros((1, 30, 30, 3)))
  _, shapes = models.create(name, 10, 32, init=False)
  classifier = _count(shapes["params"]["classifier"])
  assert classifier == 11_173_962  # the full ResNet-18 by default
