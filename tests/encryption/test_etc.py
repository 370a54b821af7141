"""EtC: every encrypted block is one of 96 transforms of exactly one block.

Checked against `etc_reference`, an independent NumPy definition of the
scheme (np.rot90 / np.fliplr / channel indexing / XOR on whole blocks).
"""

import collections
import math
import random

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import etc_reference as ref
from etcjax import encryption

SHAPES = [(32, 32, 16), (48, 64, 16), (32, 24, 8), (16, 16, 4)]  # (H, W, B)


def _encrypt(image, key, b, steps=None):
  return encryption.encrypt(image[None], key, "etc", block_size=b,
                            steps=steps)[0]


def _random_image(h, w, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8)


@settings(max_examples=25, deadline=None)
@given(key=st.binary(min_size=32, max_size=32),
       seed=st.integers(0, 2**32 - 1),
       shape=st.sampled_from(SHAPES))
def test_every_block_is_a_transform_of_exactly_one_block(key, seed, shape):
  h, w, b = shape
  plain = _random_image(h, w, seed)
  found = ref.identify_blocks(plain, _encrypt(plain, key, b), b)
  sources = sorted(f["source"] for f in found)
  assert sources == list(range((h // b) * (w // b)))  # each block used once


def test_imagenet_geometry_224_block_16():
  plain = _random_image(224, 224, seed=1)
  found = ref.identify_blocks(plain, _encrypt(plain, ref.key_for("224"), 16),
                              16)
  assert sorted(f["source"] for f in found) == list(range(196))
  assert [f["source"] for f in found] != list(range(196))  # really scrambled


def _choices(steps=None, keys=4, h=128, w=128, b=4):
  """Identified per-block choices over several fixed keys: a list of dicts."""
  out = []
  for k in range(keys):
    plain = _random_image(h, w, seed=k)
    out += ref.identify_blocks(
        plain, _encrypt(plain, ref.key_for(f"stats/{k}"), b, steps), b)
  return out


def _chi2(counts, categories):
  expected = sum(counts.values()) / categories
  return sum(
      (counts.get(c, 0) - expected)**2 / expected for c in range(categories))


@pytest.fixture(scope="module")
def full_choices():
  return _choices()


def test_all_8_symmetries_occur_uniformly_including_identity(full_choices):
  counts = collections.Counter(f["symmetry"] for f in full_choices)
  assert sorted(counts) == list(range(8)), counts
  assert _chi2(counts, 8) < 40, counts  # df = 7; p < 1e-5 if uniform


def test_all_6_colour_orders_occur_uniformly(full_choices):
  counts = collections.Counter(f["channels"] for f in full_choices)
  assert sorted(counts) == list(range(6)), counts
  assert _chi2(counts, 6) < 35, counts


def test_negative_positive_rate_is_one_half(full_choices):
  rate = np.mean([f["negpos"] for f in full_choices])
  # 4096 blocks: the standard deviation of the rate is 0.008.
  assert abs(rate - 0.5) < 0.04, rate


def test_block_scrambling_moves_blocks(full_choices):
  nb = 32 * 32
  sources = [f["source"] for f in full_choices[:nb]]
  assert sorted(sources) == list(range(nb))
  assert np.mean(np.array(sources) == np.arange(nb)) < 0.01


@pytest.mark.parametrize("step", encryption.get_scheme("etc").steps)
def test_each_step_alone_is_a_true_permutation_and_keeps_its_choices(
    step, full_choices):
  alone = _choices(steps=(step,), keys=2)
  trivial = dict(symmetry=0, negpos=False, channels=0)
  for f, full in zip(alone, full_choices):
    if step == "scramble":
      assert f["source"] == full["source"]
    for name, value in trivial.items():
      expected = full[name] if _step_of(name) == step else value
      assert f[name] == expected, (step, name, f, full)
  if step != "scramble":
    nb = 32 * 32
    assert [f["source"] for f in alone[:nb]] == list(range(nb))


def _step_of(choice):
  return {
      "symmetry": "rotate_flip",
      "negpos": "negpos",
      "channels": "channel"
  }[choice]


def test_colour_shuffle_never_duplicates_a_channel():
  # Channel values from three disjoint ranges that negative-positive maps
  # onto each other: every encrypted pixel must hold one value of each.
  rng = np.random.default_rng(3)
  lows = np.array([0, 88, 175])
  plain = (lows + rng.integers(0, 81, (64, 64, 3))).astype(np.uint8)
  for k in range(4):
    enc = _encrypt(plain, ref.key_for(f"dup/{k}"), 8).astype(int)
    ranges = np.searchsorted(np.array([84, 171]), enc)  # 0, 1 or 2
    np.testing.assert_array_equal(np.sort(ranges, axis=-1),
                                  np.broadcast_to([0, 1, 2], enc.shape))


@settings(max_examples=25, deadline=None)
@given(key=st.binary(min_size=32, max_size=32),
       pos=st.tuples(st.integers(0, 47), st.integers(0, 63), st.integers(0, 2)),
       delta=st.integers(1, 255))
def test_changing_one_pixel_changes_exactly_one_value_in_one_block(
    key, pos, delta):
  plain = _random_image(48, 64, seed=5)
  changed = plain.copy()
  changed[pos] = (int(changed[pos]) + delta) % 256
  a, b = _encrypt(plain, key, 16), _encrypt(changed, key, 16)
  diff = np.argwhere(a != b)
  assert len(diff) == 1
  blocks = (ref.to_blocks(a, 16) != ref.to_blocks(b, 16)).any(axis=(1, 2, 3))
  assert blocks.sum() == 1


@settings(max_examples=20, deadline=None)
@given(key=st.binary(min_size=32, max_size=32),
       other=st.binary(min_size=32, max_size=32))
def test_same_key_same_output_different_key_different_output(key, other):
  plain = _random_image(32, 32, seed=7)[None].repeat(2, axis=0)
  first = encryption.encrypt(plain, key)
  np.testing.assert_array_equal(first, encryption.encrypt(plain, key))
  np.testing.assert_array_equal(first[0], first[1])  # batch-independent
  if other != key:
    assert not np.array_equal(first, encryption.encrypt(plain, other))


def test_plans_ignore_global_random_state():
  key = ref.key_for("global-rng")
  plans = []
  for seed in (0, 1):
    np.random.seed(seed)
    random.seed(seed)
    plans.append(encryption.make_plan(key, "etc", (64, 64, 3), 8))
  np.testing.assert_array_equal(plans[0].gather, plans[1].gather)
  np.testing.assert_array_equal(plans[0].xor, plans[1].xor)


def _log2_factorial(n):
  return sum(math.log2(i) for i in range(2, n + 1))


@pytest.mark.parametrize(
    "size, blocks, expected",
    [
        (32, 4, 30.92481250360578),  # log2(4!) + 4 log2(96)
        (224, 196, 2505.501267950701),  # log2(196!) + 196 log2(96)
    ])
def test_etc_key_space_bits(size, blocks, expected):
  bits = encryption.get_scheme("etc").key_space_bits((size, size, 3), 16)
  hand = _log2_factorial(blocks) + blocks * math.log2(8 * 2 * 6)
  assert hand == pytest.approx(expected, rel=1e-12)
  assert bits == pytest.approx(hand, rel=1e-9)
