"""The compiled host kernel gives exactly what the XLA gather gives."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from etcjax import encryption
from etcjax.encryption import host_kernel
from etcjax.encryption import plans
from etcjax.encryption import schemes

pytestmark = pytest.mark.skipif(
    not host_kernel.available(),
    reason="the C extension was not built (no compiler at install time); "
    "apply_numpy then runs XLA, covered by the other tests")

STEP_SUBSETS = [None] + [
    subset for r in (1, 2) for subset in itertools.combinations(
        schemes.ETC_STEPS, r)
]


def _images(n, h, w, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), np.uint8)


@settings(max_examples=30, deadline=None)
@given(key=st.binary(min_size=32, max_size=32),
       blocks=st.tuples(st.integers(1, 4), st.integers(1, 4)),
       steps=st.sampled_from(STEP_SUBSETS),
       shuffles=st.booleans())
def test_kernel_equals_xla_both_ways(key, blocks, steps, shuffles):
  h, w = 16 * blocks[0], 16 * blocks[1]
  images = _images(3, h, w, seed=blocks[0] * 7 + blocks[1])
  plan = encryption.make_plan(key, "etc", (h, w, 3), 16, steps)
  assert host_kernel.supports(plan) and host_kernel.supports(plan, True)
  expected = np.asarray(plans.apply(plan, images))
  got = host_kernel.apply(plan, images, use_shuffles=shuffles)
  np.testing.assert_array_equal(got, expected)
  np.testing.assert_array_equal(
      host_kernel.invert(plan, expected, use_shuffles=shuffles), images)


def test_every_segment_of_etc_takes_the_shuffle_path():
  plan = encryption.make_plan(bytes(range(32)), "etc", (224, 224, 3))
  table = host_kernel.table_for(plan)
  assert (table.pattern >= 0).all()
  # About half the blocks are read down their columns (transposed).
  assert 0.3 < table.from_block.mean() < 0.7


def test_the_224_batch_of_the_benchmark_matches():
  images = _images(4, 224, 224)
  plan = encryption.make_plan(encryption.generate_key(), "etc", (224, 224, 3))
  np.testing.assert_array_equal(host_kernel.apply(plan, images),
                                np.asarray(plans.apply(plan, images)))


@pytest.mark.parametrize("scheme, block_size", [
    ("etc", 8), ("etc", 32), ("etc_gray", 16), ("block_common", 16),
    ("le", 4), ("ele", 4), ("pe", 1)])
def test_other_plans_fall_back_to_xla_with_the_same_result(scheme, block_size):
  images = _images(2, 32, 32)
  plan = encryption.make_plan(bytes(32), scheme, (32, 32, 3), block_size)
  assert not host_kernel.supports(plan)
  with pytest.raises(ValueError, match="use plans.apply"):
    host_kernel.apply(plan, images)
  encrypted = encryption.apply_numpy(plan, images)
  np.testing.assert_array_equal(encrypted, np.asarray(plans.apply(plan, images)))
  np.testing.assert_array_equal(encryption.invert_numpy(plan, encrypted),
                                np.asarray(plans.invert(plan, encrypted)))


def test_encrypt_on_numpy_uses_the_kernel_and_returns_numpy(monkeypatch):
  images = _images(2, 32, 48)
  key = bytes(range(32))
  expected = np.asarray(
      plans.apply(encryption.make_plan(key, "etc", (32, 48, 3)), images))
  calls = []
  real = host_kernel._run  # pylint: disable=protected-access
  monkeypatch.setattr(host_kernel, "_run",
                      lambda *a: calls.append(1) or real(*a))
  encrypted = encryption.encrypt(images, key)
  assert isinstance(encrypted, np.ndarray) and calls
  np.testing.assert_array_equal(encrypted, expected)
  np.testing.assert_array_equal(encryption.decrypt(encrypted, key), images)


def test_non_contiguous_input_is_handled():
  images = _images(4, 32, 32)
  view = images[::2]
  plan = encryption.make_plan(bytes(32), "etc", (32, 32, 3))
  np.testing.assert_array_equal(host_kernel.apply(plan, view),
                                np.asarray(plans.apply(plan, view)))


def test_bad_batches_get_the_same_errors_as_xla():
  plan = encryption.make_plan(bytes(32), "etc", (32, 32, 3))
  with pytest.raises(TypeError, match="must be uint8"):
    host_kernel.apply(plan, np.zeros((1, 32, 32, 3), np.float32))
  with pytest.raises(ValueError, match="made for"):
    host_kernel.apply(plan, np.zeros((1, 32, 48, 3), np.uint8))
  with pytest.raises(ValueError, match="empty batch"):
    host_kernel.apply(plan, np.zeros((0, 32, 32, 3), np.uint8))
