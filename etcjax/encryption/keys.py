"""Secret keys: generation, key files, fingerprints and key-derived randomness.

A key is 32 bytes from the operating system's CSPRNG. Every random choice
of every scheme is derived from it with HKDF-SHA256 (RFC 5869) under a
label naming the scheme and the step, then expanded with the SHAKE-256
extendable-output function, so that knowing one step's choices reveals
nothing about another's and no small integer seed or global RNG state is
ever involved.

The key itself is never printed, logged or written anywhere but its own
key file; everything else records `fingerprint(key)`.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
import tempfile

import numpy as np

from etcjax import errors

KEY_BYTES = 32
# Domain separation: bumping this changes every derived plan, so encrypted
# data made by different format versions can never be confused.
_KDF_SALT = b"etcjax/kdf/v1"
_FINGERPRINT_PREFIX = b"etcjax/fingerprint/v1"


class InvalidKeyError(errors.UserError, ValueError):
  """Raised for malformed key material (wrong type or length)."""


class KeyMismatchError(errors.UserError, ValueError):
  """Raised when a key's fingerprint differs from the one data was made with."""


def generate_key() -> bytes:
  """Returns a fresh secret key.

  Returns:
    32 bytes from the operating system's CSPRNG (`secrets.token_bytes`).
  """
  return secrets.token_bytes(KEY_BYTES)


def check_key(key) -> bytes:
  """Validates key material without ever echoing it.

  Args:
    key: the secret key, `bytes` of length 32.

  Returns:
    The key, unchanged.

  Raises:
    InvalidKeyError: if `key` is not bytes or not 32 bytes long.
  """
  if not isinstance(key, (bytes, bytearray)):
    raise InvalidKeyError(
        f"key must be bytes of length {KEY_BYTES} (see "
        f"etcjax.encryption.generate_key/load_key), got {type(key).__name__}")
  if len(key) != KEY_BYTES:
    raise InvalidKeyError(
        f"key must be {KEY_BYTES} bytes long, got {len(key)} bytes")
  return bytes(key)


def fingerprint(key: bytes) -> str:
  """Returns a short one-way identifier of a key, safe to store and print.

  Args:
    key: the secret key (32 bytes).

  Returns:
    16 lowercase hex characters (64 bits of SHA-256 over a domain-separated
    key); equal keys give equal fingerprints, and the key cannot be
    recovered from it.
  """
  key = check_key(key)
  return hashlib.sha256(_FINGERPRINT_PREFIX + key).hexdigest()[:16]


def check_fingerprint(key: bytes, expected: str, what: str = "the data") -> None:
  """Checks that a key is the one some data was made with.

  Args:
    key: the secret key (32 bytes).
    expected: the fingerprint recorded with the data (16 hex characters).
    what: names the data in the error message, e.g. "manifest out/x.json".

  Raises:
    KeyMismatchError: the fingerprints differ (the message shows both
      fingerprints, never the key).
  """
  actual = fingerprint(key)
  if actual != expected:
    raise KeyMismatchError(
        f"wrong key: {what} was made with key fingerprint {expected}, but the "
        f"given key has fingerprint {actual}")


# --------------------------------------------------------------------------
# Key files.


def save_key(path: str | os.PathLike, key: bytes, overwrite: bool = False) -> str:
  """Writes a key file readable by its owner only (mode 0600).

  The file holds the key as 64 hex characters and a newline. It is written
  to a temporary file in the same folder and then moved into place, so the
  path never holds a partial key, and an existing key survives a failed
  write.

  Args:
    path: where to write.
    key: the secret key (32 bytes).
    overwrite: replace an existing file; otherwise an existing file is an
      error, because losing a key loses every image encrypted with it.

  Returns:
    The key's fingerprint.

  Raises:
    FileExistsError: `path` exists and `overwrite` is False.
    InvalidKeyError: `key` is not 32 bytes.
  """
  key = check_key(key)
  path = os.fspath(path)
  folder = os.path.dirname(os.path.abspath(path))
  if not overwrite and os.path.lexists(path):
    raise _exists_error(path)
  fd, tmp = tempfile.mkstemp(prefix=".etcjax-key-", dir=folder)
  try:
    with os.fdopen(fd, "w") as f:
      # mkstemp creates 0600 already; chmod guards odd platforms/umasks.
      os.fchmod(f.fileno(), 0o600)
      f.write(key.hex() + "\n")
      f.flush()
      os.fsync(f.fileno())
    if overwrite:
      os.replace(tmp, path)
    else:
      # link() fails if `path` appeared meanwhile, unlike rename().
      try:
        os.link(tmp, path)
      except FileExistsError:
        raise _exists_error(path) from None
  finally:
    if os.path.lexists(tmp):
      os.unlink(tmp)
  return fingerprint(key)


def _exists_error(path: str) -> FileExistsError:
  return FileExistsError(
      f"key file {path} already exists; refusing to overwrite it (images "
      "encrypted with the old key could no longer be decrypted). Pass "
      "overwrite=True / --overwrite to replace it.")


def load_key(path: str | os.PathLike) -> bytes:
  """Reads a key file written by `save_key`.

  Args:
    path: the key file.

  Returns:
    The 32-byte key.

  Raises:
    FileNotFoundError: the file does not exist.
    IsADirectoryError: `path` is a folder.
    PermissionError: the file is readable or writable by group or others.
    InvalidKeyError: the file does not hold exactly 64 hex characters.
  """
  path = os.fspath(path)
  try:
    mode = os.stat(path).st_mode
  except FileNotFoundError:
    raise FileNotFoundError(
        f"key file {path} does not exist (create one with `python -m "
        "etcjax.encrypt keygen --key_file=PATH`)") from None
  if stat.S_ISDIR(mode):
    raise IsADirectoryError(
        f"key file {path} is a folder, not a key file; pass the path of the "
        "key file itself (made by `python -m etcjax.encrypt keygen "
        "--key_file=PATH`)")
  if mode & (stat.S_IRWXG | stat.S_IRWXO):
    raise PermissionError(
        f"key file {path} is accessible by group or others (mode "
        f"{stat.S_IMODE(mode):04o}); a secret key must be private: run "
        f"`chmod 600 {path}`")
  with open(path, "rb") as f:
    content = f.read()
  text = content.strip()
  try:
    key = bytes.fromhex(text.decode("ascii"))
  except (UnicodeDecodeError, ValueError):
    raise InvalidKeyError(
        f"key file {path} is not a key file: expected {2 * KEY_BYTES} hex "
        f"characters, got {len(content)} bytes that are not all hex") from None
  if len(key) != KEY_BYTES:
    raise InvalidKeyError(
        f"key file {path} holds a {len(key)}-byte key; expected {KEY_BYTES} "
        f"bytes ({2 * KEY_BYTES} hex characters)")
  return key


# --------------------------------------------------------------------------
# Key-derived randomness.


def derive_subkey(key: bytes, label: str) -> bytes:
  """Derives an independent 32-byte subkey for one purpose.

  Args:
    key: the secret key (32 bytes).
    label: names the purpose, e.g. "etc/scramble".

  Returns:
    HKDF-SHA256 of `key` (salt `etcjax/kdf/v1`, info `label`, one expand
    block): 32 bytes.
  """
  key = check_key(key)
  prk = hmac.new(_KDF_SALT, key, hashlib.sha256).digest()
  return hmac.new(prk, label.encode("utf-8") + b"\x01", hashlib.sha256).digest()


class KeyStream:
  """Deterministic, cryptographically derived random values for one label.

  SHAKE-256 keyed with the HKDF subkey is used as a stream cipher of random
  bytes; every draw consumes fresh bytes, so results depend only on
  (key, label, sequence of calls).
  """

  def __init__(self, key: bytes, label: str):
    if not isinstance(label, str) or not label:
      raise TypeError(f"label must be a non-empty str, got {label!r}")
    self._seed = derive_subkey(key, label)
    self._counter = 0

  def bytes(self, n: int) -> np.ndarray:
    """Returns `n` random bytes: uint8 `[n]` in [0, 255]."""
    # A fresh XOF call per draw (keyed by a counter) keeps draws independent
    # without materialising one ever-growing output.
    data = hashlib.shake_256(
        self._seed + self._counter.to_bytes(8, "little")).digest(n)
    self._counter += 1
    return np.frombuffer(data, dtype=np.uint8).copy()

  def bits(self, n: int) -> np.ndarray:
    """Returns `n` fair coin flips: bool `[n]`."""
    return np.unpackbits(self.bytes((n + 7) // 8))[:n].astype(bool)

  def integers(self, upper, n: int | None = None) -> np.ndarray:
    """Returns independent uniform integers in [0, upper), int64.

    Args:
      upper: a bound in [1, 2**32], or an array of per-element bounds.
      n: how many values when `upper` is a scalar.

    Returns:
      int64 array of shape `[n]` (scalar bound) or `upper.shape`. Rejection
      sampling on 32-bit words keeps every value exactly uniform.
    """
    uppers = np.asarray(upper, np.int64)
    if uppers.ndim == 0:
      if n is None or n < 0:
        raise ValueError(f"n must be a count >= 0 with a scalar bound, got {n}")
      uppers = np.full((n,), uppers)
    if uppers.size and (uppers.min() < 1 or uppers.max() > 2**32):
      raise ValueError("bounds must be in [1, 2**32]")
    limits = (2**32 // uppers) * uppers
    out = np.empty(uppers.shape, np.int64)
    todo = np.arange(uppers.size)
    while todo.size:
      words = self.bytes(4 * todo.size).view("<u4").astype(np.int64)
      ok = words < limits[todo]
      out[todo[ok]] = words[ok] % uppers[todo[ok]]
      todo = todo[~ok]
    return out

  def permutation(self, n: int) -> np.ndarray:
    """Returns a uniformly random permutation of range(n): int64 `[n]`.

    Fisher-Yates with exactly uniform swap partners, so each of the n!
    orders is equally likely.
    """
    perm = np.arange(n, dtype=np.int64)
    # Swap partner of position i is uniform in [0, i], for i = n-1 .. 1.
    js = self.integers(np.arange(n, 1, -1))
    for i, j in zip(range(n - 1, 0, -1), js):
      perm[i], perm[j] = perm[j], perm[i]
    return perm
