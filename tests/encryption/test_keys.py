"""Keys: generation, key files, fingerprints and key-derived randomness."""

import os
import stat

import numpy as np
import pytest

from etcjax import encryption
from etcjax.encryption import keys


def test_generate_key_is_32_fresh_bytes():
  a, b = encryption.generate_key(), encryption.generate_key()
  assert isinstance(a, bytes) and len(a) == 32
  assert a != b


@pytest.mark.parametrize(
    "bad", ["00" * 32, 12345, None, [0] * 32,
            np.zeros(32, np.uint8)])
def test_check_key_refuses_wrong_type(bad):
  with pytest.raises(encryption.InvalidKeyError, match="must be bytes"):
    encryption.check_key(bad)


@pytest.mark.parametrize("length", [0, 16, 31, 33, 64])
def test_check_key_refuses_wrong_length_without_echoing_it(length):
  key = bytes(range(1, length + 1))
  with pytest.raises(encryption.InvalidKeyError,
                     match=f"got {length} bytes") as e:
    encryption.check_key(key)
  if length:
    assert key.hex() not in str(e.value) and repr(key) not in str(e.value)


def test_fingerprint_is_short_stable_and_one_way_looking():
  key = encryption.generate_key()
  fp = encryption.fingerprint(key)
  assert len(fp) == 16 and all(ch in "0123456789abcdef" for ch in fp)
  assert encryption.fingerprint(key) == fp
  assert encryption.fingerprint(encryption.generate_key()) != fp
  assert fp not in key.hex()


def test_check_fingerprint():
  key, other = encryption.generate_key(), encryption.generate_key()
  encryption.check_fingerprint(key, encryption.fingerprint(key))
  with pytest.raises(encryption.KeyMismatchError, match="wrong key") as e:
    encryption.check_fingerprint(other, encryption.fingerprint(key), "x.json")
  message = str(e.value)
  assert encryption.fingerprint(key) in message
  assert encryption.fingerprint(other) in message
  assert key.hex() not in message and other.hex() not in message


# --------------------------------------------------------------------------
# Key files.


def _mode(path):
  return stat.S_IMODE(os.stat(path).st_mode)


def test_save_and_load_key_round_trip_with_mode_0600(tmp_path):
  key = encryption.generate_key()
  path = tmp_path / "owner.key"
  old_umask = os.umask(0)  # the most permissive umask must not leak access
  try:
    fp = encryption.save_key(path, key)
  finally:
    os.umask(old_umask)
  assert fp == encryption.fingerprint(key)
  assert _mode(path) == 0o600
  assert path.read_text() == key.hex() + "\n"
  assert encryption.load_key(path) == key
  assert sorted(os.listdir(tmp_path)) == ["owner.key"]  # no temporary left


def test_save_key_refuses_to_overwrite_without_flag(tmp_path):
  path = tmp_path / "owner.key"
  first, second = encryption.generate_key(), encryption.generate_key()
  encryption.save_key(path, first)
  with pytest.raises(FileExistsError, match="overwrite") as e:
    encryption.save_key(path, second)
  assert second.hex() not in str(e.value)
  assert encryption.load_key(path) == first
  assert sorted(os.listdir(tmp_path)) == ["owner.key"]
  encryption.save_key(path, second, overwrite=True)
  assert encryption.load_key(path) == second
  assert _mode(path) == 0o600


def test_save_key_rejects_bad_key_and_writes_nothing(tmp_path):
  with pytest.raises(encryption.InvalidKeyError):
    encryption.save_key(tmp_path / "k", b"short")
  assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o700 | 0o004])
def test_load_key_refuses_group_or_other_access(tmp_path, mode):
  key = encryption.generate_key()
  path = tmp_path / "owner.key"
  encryption.save_key(path, key)
  os.chmod(path, mode)
  with pytest.raises(PermissionError, match="chmod 600") as e:
    encryption.load_key(path)
  assert key.hex() not in str(e.value)


def test_load_key_on_a_folder_says_it_is_a_folder(tmp_path):
  with pytest.raises(IsADirectoryError, match=f"{tmp_path} is a folder"):
    encryption.load_key(tmp_path)


def test_load_key_missing(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    encryption.load_key(tmp_path / "nope.key")


@pytest.mark.parametrize(
    "content", ["ab" * 31, "ab" * 33, "", "zz" * 32, "ab" * 32 + "cd"])
def test_load_key_refuses_malformed_content(tmp_path, content):
  path = tmp_path / "bad.key"
  path.write_text(content + "\n")
  os.chmod(path, 0o600)
  with pytest.raises(encryption.InvalidKeyError, match="64 hex|32 bytes") as e:
    encryption.load_key(path)
  assert content not in str(e.value) or not content


# --------------------------------------------------------------------------
# Key-derived randomness.


def test_keystream_is_deterministic_per_key_and_label():
  key = encryption.generate_key()
  a, b = keys.KeyStream(key,
                        "etc/scramble"), keys.KeyStream(key, "etc/scramble")
  np.testing.assert_array_equal(a.bytes(100), b.bytes(100))
  np.testing.assert_array_equal(a.permutation(50), b.permutation(50))
  # Successive draws are fresh, not repeats.
  assert not np.array_equal(a.bytes(64), a.bytes(64))


def test_keystream_separates_labels_and_keys():
  key = encryption.generate_key()
  draws = {
      label: keys.KeyStream(key, label).bytes(32).tobytes()
      for label in ("etc/scramble", "etc/rotate_flip", "ele/scramble",
                    "etc/scramble ", "pe_per_image/1", "pe_per_image/10")
  }
  assert len(set(draws.values())) == len(draws)
  other = keys.KeyStream(encryption.generate_key(), "etc/scramble").bytes(32)
  assert other.tobytes() != draws["etc/scramble"]


def test_keystream_rejects_non_string_label():
  with pytest.raises(TypeError, match="label"):
    keys.KeyStream(encryption.generate_key(), b"etc")


def test_keystream_integers_are_in_range_and_uniform():
  stream = keys.KeyStream(b"\x07" * 32, "test/integers")
  values = stream.integers(6, 60000)
  assert values.min() == 0 and values.max() == 5
  counts = np.bincount(values, minlength=6)
  chi2 = ((counts - 10000)**2 / 10000).sum()
  assert chi2 < 35, counts  # df = 5; p < 1e-6 for a fair die
  bounded = stream.integers(np.array([1, 2, 3, 1000, 2**32]))
  assert bounded[0] == 0 and (bounded < [1, 2, 3, 1000, 2**32]).all()
  with pytest.raises(ValueError, match="bounds"):
    stream.integers(0, 3)


def test_keystream_bits_are_fair():
  bits = keys.KeyStream(b"\x01" * 32, "test/bits").bits(100001)
  assert bits.shape == (100001,) and bits.dtype == bool
  assert abs(bits.mean() - 0.5) < 0.01


def test_keystream_permutations_are_uniform_over_all_orders():
  orders = [
      tuple(keys.KeyStream(b"\x02" * 32, f"test/perm/{i}").permutation(3))
      for i in range(3000)
  ]
  counts = {o: orders.count(o) for o in set(orders)}
  assert len(counts) == 6
  assert min(counts.values()) > 400 and max(counts.values()) < 600, counts
  for n in (0, 1, 2, 257):
    perm = keys.KeyStream(b"\x02" * 32, "test/perm").permutation(n)
    np.testing.assert_array_equal(np.sort(perm), np.arange(n))
