"""The block-structured EtC gives exactly what the plan's flat gather gives."""

import itertools

import jax
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from etcjax import encryption
from etcjax.encryption import block_apply
from etcjax.encryption import plans
from etcjax.encryption import schemes

STEP_SUBSETS = [None] + [
    subset for r in (1, 2) for subset in itertools.combinations(
        schemes.ETC_STEPS, r)
]


def _images(n, h, w, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), np.uint8)


_blocks = jax.jit(block_apply.apply_blocks,
                  static_argnames=("image_shape", "block_size"))


@settings(max_examples=25, deadline=None)
@given(key=st.binary(min_size=32, max_size=32),
       block_size=st.sampled_from([2, 4, 8, 16]),
       blocks=st.tuples(st.integers(1, 3), st.integers(1, 3)),
       steps=st.sampled_from(STEP_SUBSETS))
def test_blocks_equal_the_gather(key, block_size, blocks, steps):
  h, w = block_size * blocks[0], block_size * blocks[1]
  plan = encryption.make_plan(key, "etc", (h, w, 3), block_size, steps)
  assert block_apply.supports(plan)
  images = _images(2, h, w, seed=h * 31 + w)
  expected = np.asarray(plans.apply(plan, images))
  got = np.asarray(_blocks(plan.gather, plan.xor, images,
                           image_shape=plan.image_shape,
                           block_size=plan.block_size))
  np.testing.assert_array_equal(got, expected)


def test_every_symmetry_and_colour_order_is_decoded():
  # 64 blocks of one key cover all 8 symmetries and 6 colour orders, and
  # blocks hold distinct values so a wrong decode cannot hide.
  key = bytes(range(32))
  plan = encryption.make_plan(key, "etc", (32, 32, 3), 4)
  _, sym, _, col = schemes.etc_choices(key, "etc", 64)
  assert set(sym) == set(range(8)) and set(col) == set(range(6))
  images = np.arange(32 * 32 * 3, dtype=np.int64).reshape(1, 32, 32, 3)
  images = (images % 251).astype(np.uint8)
  got = _blocks(plan.gather, plan.xor, images, image_shape=plan.image_shape,
                block_size=4)
  np.testing.assert_array_equal(np.asarray(got),
                                np.asarray(plans.apply(plan, images)))


def test_apply_uses_blocks_on_accelerators_only(monkeypatch):
  monkeypatch.delenv(block_apply.OVERRIDE_ENV, raising=False)
  key = bytes(32)
  plan = encryption.make_plan(key, "etc", (32, 32, 3), 16)
  le_plan = encryption.make_plan(key, "le", (32, 32, 3), 4)
  assert not block_apply.prefer_blocks(plan, "cpu")
  assert block_apply.prefer_blocks(plan, "tpu")
  assert block_apply.prefer_blocks(plan, "gpu")
  assert not block_apply.prefer_blocks(le_plan, "tpu")
  images = _images(3, 32, 32)
  expected = np.asarray(plans.apply(plan, images))
  calls = []
  real = plans._encrypt_blocks  # pylint: disable=protected-access
  monkeypatch.setattr(plans, "_encrypt_blocks",
                      lambda *a, **k: calls.append(1) or real(*a, **k))
  monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
  np.testing.assert_array_equal(np.asarray(plans.apply(plan, images)),
                                expected)
  assert calls == [1]
  # Inside jit, with the plan a traced argument (as in the train step).
  traced = jax.jit(plans.apply)(plan, images)
  np.testing.assert_array_equal(np.asarray(traced), expected)
  assert len(calls) == 2


def test_other_schemes_are_not_supported():
  key = bytes(32)
  for scheme in ("etc_gray", "block_common", "le", "ele", "pe"):
    spec = schemes.get_scheme(scheme)
    plan = encryption.make_plan(key, scheme, (32, 32, 3),
                                spec.default_block_size
                                if 32 % spec.default_block_size == 0 else 4)
    assert not block_apply.supports(plan), scheme
  assert not block_apply.supports(
      encryption.make_plan(key, "etc", (32, 32, 3), 1))


def test_environment_overrides_the_choice(monkeypatch):
  plan = encryption.make_plan(bytes(32), "etc", (32, 32, 3), 16)
  monkeypatch.setenv(block_apply.OVERRIDE_ENV, "blocks")
  assert block_apply.prefer_blocks(plan, "cpu")
  monkeypatch.setenv(block_apply.OVERRIDE_ENV, "gather")
  assert not block_apply.prefer_blocks(plan, "tpu")
  monkeypatch.setenv(block_apply.OVERRIDE_ENV, "fast")
  with pytest.raises(ValueError, match="'auto', 'gather' or 'blocks'"):
    block_apply.prefer_blocks(plan, "tpu")


def test_speed_benchmark_runs_and_checks_equality(capsys):
  import os  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))))
  sys.path.insert(0, os.path.join(root, "benchmarks"))
  import block_encryption_speed  # pylint: disable=g-import-not-at-top
  block_encryption_speed.main(["--tiny"])
  out = capsys.readouterr().out
  assert "b=16" in out and "b=4" in out and "ratio median" in out
