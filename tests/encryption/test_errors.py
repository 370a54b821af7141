"""Bad input gets a clear, specific error, and no message shows the key."""

import jax.numpy as jnp
import numpy as np
import pytest

from etcjax import encryption
from etcjax.encryption import plans

KEY = encryption.generate_key()


def _images(shape=(2, 32, 32, 3), dtype=np.uint8):
  return np.zeros(shape, dtype)


def _raises(error, match, fn, *args, **kwargs):
  """Calls fn expecting `error` matching `match`; the key must not show."""
  with pytest.raises(error, match=match) as info:
    fn(*args, **kwargs)
  message = str(info.value) + repr(info.value)
  assert KEY.hex() not in message and repr(KEY) not in message
  return info.value


@pytest.mark.parametrize("dtype",
                         [np.float32, np.float64, np.int32, np.int16, bool])
def test_non_uint8_images(dtype):
  err = _raises(TypeError, "must be uint8", encryption.encrypt,
                _images(dtype=dtype), KEY)
  assert np.dtype(dtype).name in str(err)  # names what it got


def test_float_jax_images_inside_plan_apply():
  plan = encryption.make_plan(KEY, "etc", (32, 32, 3))
  _raises(TypeError, "got dtype float32", encryption.apply, plan,
          jnp.zeros((2, 32, 32, 3), jnp.float32))
  _raises(TypeError, "encrypted images must be uint8", encryption.invert, plan,
          jnp.zeros((2, 32, 32, 3), jnp.float32))


def test_non_array_images():
  plan = encryption.make_plan(KEY, "etc", (32, 32, 3))
  _raises(TypeError, "numpy or jax array", encryption.apply, plan,
          [[[[0, 0, 0]]]])
  _raises(TypeError, "numpy or jax array", encryption.encrypt, "not images",
          KEY)


@pytest.mark.parametrize("shape, match", [
    ((32, 32, 3), r"rank 4 .*images\[None\]"),
    ((1, 2, 32, 32, 3), "rank 4"),
    ((32,), "rank 4"),
])
def test_wrong_rank(shape, match):
  _raises(ValueError, match, encryption.encrypt, _images(shape), KEY)
  plan = encryption.make_plan(KEY, "etc", (32, 32, 3))
  _raises(ValueError, "rank 4", encryption.apply, plan, _images(shape))


@pytest.mark.parametrize("channels", [1, 4])
@pytest.mark.parametrize("scheme", sorted(encryption.SCHEMES))
def test_channels_other_than_3(scheme, channels):
  ids = np.arange(2) if scheme == "pe_per_image" else None
  _raises(ValueError,
          f"needs 3-channel images, got C = {channels}",
          encryption.encrypt,
          _images((2, 32, 32, channels)),
          KEY,
          scheme,
          image_ids=ids)


def test_plan_shape_mismatch():
  plan = encryption.make_plan(KEY, "etc", (32, 32, 3))
  _raises(ValueError, r"made for \[N, 32, 32, 3\]", encryption.apply, plan,
          _images((2, 32, 32, 4)))
  _raises(ValueError, r"made for \[N, 32, 32, 3\]", encryption.apply, plan,
          _images((2, 64, 32, 3)))


@pytest.mark.parametrize("scheme, shape", [
    ("etc", (2, 30, 32, 3)),
    ("etc", (2, 32, 40, 3)),
    ("etc_gray", (2, 12, 16, 3)),
    ("block_common", (2, 8, 8, 3)),
    ("le", (2, 6, 8, 3)),
    ("ele", (2, 8, 10, 3)),
])
def test_size_not_a_multiple_of_the_block_size(scheme, shape):
  _raises(ValueError, "not a multiple of the block size", encryption.encrypt,
          _images(shape), KEY, scheme)


def test_empty_batch():
  _raises(ValueError, "empty batch", encryption.encrypt, _images(
      (0, 32, 32, 3)), KEY)
  plan = encryption.make_plan(KEY, "etc", (32, 32, 3))
  _raises(ValueError, "empty batch", encryption.invert, plan,
          _images((0, 32, 32, 3)))


# Explicit ids: the key is random per session, and pytest-xdist workers
# must collect identical test names.
@pytest.mark.parametrize("key",
                         [KEY.hex(), KEY[:31], KEY + b"\0", None, 7,
                          list(KEY)],
                         ids=["hex_string", "31_bytes", "33_bytes", "none",
                              "int", "list_of_ints"])
def test_bad_keys(key):
  err = _raises(encryption.InvalidKeyError, "key must be", encryption.encrypt,
                _images(), key)
  assert KEY[:31].hex() not in str(err)


@pytest.mark.parametrize("scheme", ["etc", "etc_gray", "block_common", "le",
                                    "ele", "pe", "pe_per_image"])
@pytest.mark.parametrize("empty", [[], ()])
def test_empty_steps_are_refused_not_a_plain_copy(scheme, empty):
  images = _images((2, 32, 32, 3))
  kwargs = {"image_ids": [0, 1]} if scheme == "pe_per_image" else {}
  block = {"le": 4, "ele": 4, "pe": 1, "pe_per_image": 1}.get(scheme)
  err = _raises(encryption.InvalidStepsError, "steps is empty",
                encryption.encrypt, images, KEY, scheme, block_size=block,
                steps=empty, **kwargs)
  assert repr(scheme) in str(err)


def test_duplicate_per_image_ids_are_refused():
  err = _raises(encryption.DuplicateImageIdsError, r"ids \[3\] more than once",
                encryption.encrypt, _images((3, 32, 32, 3)), KEY,
                "pe_per_image", block_size=1, image_ids=[3, 5, 3])
  assert "XOR" in str(err)
  with pytest.raises(encryption.DuplicateImageIdsError):
    encryption.make_plan(KEY, "pe_per_image", (32, 32, 3), 1,
                         image_ids=np.asarray([7, 7], np.int64))


def test_bad_scheme_steps_block_size_and_ids():
  _raises(ValueError, "unknown scheme 'EtC'.*'etc'", encryption.encrypt,
          _images(), KEY, "EtC")
  _raises(ValueError,
          r"unknown steps \['shuffle'\]",
          encryption.encrypt,
          _images(),
          KEY,
          steps=("scramble", "shuffle"))
  _raises(TypeError,
          "write steps=",
          encryption.encrypt,
          _images(),
          KEY,
          steps="scramble")
  for bad in (0, -16, 16.0, True):
    _raises(ValueError,
            "block_size must be a positive integer",
            encryption.encrypt,
            _images(),
            KEY,
            block_size=bad)
  _raises(ValueError,
          "block_size must be 1",
          encryption.encrypt,
          _images(),
          KEY,
          "pe",
          block_size=4)
  _raises(ValueError,
          "only used by scheme 'pe_per_image'",
          encryption.encrypt,
          _images(),
          KEY,
          "etc",
          image_ids=[0, 1])
  for ids in (None, [], [0.5, 1.5], [[0, 1]]):
    _raises(ValueError,
            "needs image_ids",
            encryption.encrypt,
            _images(),
            KEY,
            "pe_per_image",
            image_ids=ids)
  _raises(ValueError,
          "covers 3 images, got a batch of 2",
          encryption.encrypt,
          _images(),
          KEY,
          "pe_per_image",
          image_ids=[0, 1, 2])


def test_decrypt_shape_checks():
  _raises(ValueError, r"\[N, H, 3W, 1\]", encryption.decrypt,
          _images((2, 32, 32, 3)), KEY, "etc_gray")
  _raises(TypeError, "must be an etcjax.encryption Plan", encryption.invert,
          {"gather": 0}, _images())


def test_plans_and_their_reprs_hold_no_key():
  for scheme in encryption.SCHEMES:
    ids = np.arange(2) if scheme == "pe_per_image" else None
    plan = encryption.make_plan(KEY, scheme, (16, 16, 3), image_ids=ids)
    for text in (repr(plan), str(plan)):
      assert KEY.hex() not in text and repr(KEY) not in text
      assert encryption.fingerprint(KEY) in text
    assert "array" not in repr(plan)  # short enough to log
    assert plan.fingerprint == encryption.fingerprint(KEY)
    stream = encryption.KeyStream(KEY, f"{scheme}/x")
    assert KEY.hex() not in repr(stream) and KEY.hex() not in str(vars(stream))


def _make(gather, image_shape):
  return plans.make(gather, np.zeros(gather.shape, np.uint8), scheme="x",
                    image_shape=image_shape, encrypted_shape=image_shape,
                    block_size=1, representation=plans.PIXELS,
                    fingerprint="0" * 16)


def test_make_refuses_a_non_permutation():
  gather = np.arange(12)
  gather[3] = 4
  with pytest.raises(ValueError, match="not a permutation"):
    _make(gather, (2, 2, 3))
  with pytest.raises(ValueError, match="has 12 values per image"):
    _make(np.arange(12), (4, 4, 3))


def test_one_shot_plan_cache_is_bounded_and_holds_no_key():
  images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), np.uint8)
  keys = [encryption.generate_key() for _ in range(12)]
  for key in keys:
    first = encryption.encrypt(images, key)
    again = encryption.encrypt(images, key)  # from the cache
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(
        again, encryption.apply_numpy(
            encryption.make_plan(key, "etc", (32, 32, 3)), images))
    np.testing.assert_array_equal(encryption.decrypt(again, key), images)
  cache = encryption._plan_cache  # pylint: disable=protected-access
  assert 0 < len(cache) <= 8
  held = repr(list(cache))
  for key in keys:
    assert key.hex() not in held and repr(key) not in held
    assert all(key not in ident for ident in cache)
  # A cached plan for block size 16 must not let 16.0 or True through.
  for bad in (16.0, True):
    _raises(ValueError, "block_size must be a positive integer",
            encryption.encrypt, images, keys[-1], block_size=bad)
