"""An independent reference for block-wise encryption, for the tests.

Written with plain NumPy (np.rot90, np.fliplr, channel indexing, XOR on
whole blocks), sharing no code with `etcjax.encryption`, so that the tests
check the library's index maps against the definition of each scheme rather
than against themselves.
"""

import hashlib
import itertools

import numpy as np

CHANNEL_ORDERS = list(itertools.permutations(range(3)))


def symmetry(blocks, code):
  """Applies one of the 8 symmetries of the square to blocks.

  Args:
    blocks: `[..., b, b, C]` array (one block or a stack of blocks).
    code: in [0, 8): quarter turns 0..3, then the same turns mirrored
      left-right (4..7); 0 is the identity.

  Returns:
    The transformed blocks, same shape.
  """
  turned = np.rot90(blocks, code % 4, axes=(-3, -2))
  return np.flip(turned, axis=-2) if code >= 4 else turned


def to_blocks(image, b):
  """`[H, W, C]` image -> `[nb, b, b, C]` blocks in raster order."""
  h, w, c = image.shape
  return image.reshape(h // b, b, w // b, b,
                       c).swapaxes(1, 2).reshape(-1, b, b, c)


def block_transforms(channels):
  """All candidate in-block transforms of an EtC-style scheme.

  Args:
    channels: 3 for EtC (8 symmetries x 2 negative-positive x 6 colour
      orders = 96 transforms), 1 for grayscale-based EtC (8 x 2 = 16).

  Returns:
    A list of `(description, function)`; `description` is a dict with keys
    `symmetry` (0..7), `negpos` (bool) and `channels` (an index into
    `CHANNEL_ORDERS`, 0 = unchanged); `function` maps `[..., b, b, C]` blocks
    to transformed blocks.
  """
  orders = range(len(CHANNEL_ORDERS)) if channels == 3 else [0]
  out = []
  for sym in range(8):
    for neg in (False, True):
      for order in orders:

        def transform(blocks, sym=sym, neg=neg, order=order):
          y = symmetry(blocks, sym)
          if channels == 3:
            y = y[..., list(CHANNEL_ORDERS[order])]
          return np.bitwise_xor(y, np.uint8(255 if neg else 0))

        out.append((dict(symmetry=sym, negpos=neg, channels=order), transform))
  return out


def _rows(blocks):
  """`[n, b, b, C]` uint8 -> `[n]` opaque byte strings, sortable as a whole."""
  flat = np.ascontiguousarray(blocks.reshape(len(blocks), -1))
  return flat.view(np.dtype((np.void, flat.shape[1])))[:, 0]


def identify_blocks(plain, encrypted, b):
  """Explains every encrypted block as a transform of exactly one plain block.

  Args:
    plain: uint8 `[H, W, C]` image with C in {1, 3}; blocks must be
      pairwise distinct under all transforms (true for random images).
    encrypted: uint8 `[H, W, C]`, its encryption.
    b: block side.

  Returns:
    A list, one entry per encrypted block in raster order, of dicts with
    `source` (the plain block index) and the transform's description.

  Raises:
    AssertionError: an encrypted block is no transform of any plain block,
      or the plain image is ambiguous (two candidates give the same block).
  """
  blocks = to_blocks(plain, b)
  transforms = block_transforms(plain.shape[-1])
  candidates = np.concatenate([_rows(f(blocks)) for _, f in transforms])
  order = np.argsort(candidates, kind="stable")
  ranked = candidates[order]
  assert not (ranked[1:]
              == ranked[:-1]).any(), ("ambiguous test image: use random blocks")
  wanted = _rows(to_blocks(encrypted, b))
  at = np.minimum(np.searchsorted(ranked, wanted), len(ranked) - 1)
  missing = np.flatnonzero(ranked[at] != wanted)
  assert not missing.size, (
      f"encrypted blocks {missing[:10]} are no transform of a plain block")
  which = order[at]
  return [
      dict(source=int(i % len(blocks)), **transforms[i // len(blocks)][0])
      for i in which
  ]


def ycbcr_fixed_point(rgb):
  """T.871 RGB -> YCbCr in 16-bit fixed point, with int64 NumPy arithmetic.

  Args:
    rgb: uint8 `[..., 3]`.

  Returns:
    uint8 `[..., 3]`.
  """
  x = rgb.astype(np.int64)
  r, g, b = x[..., 0], x[..., 1], x[..., 2]
  fix = lambda c: int(round(c * 65536))
  y = (fix(0.299) * r + fix(0.587) * g + fix(0.114) * b + 32768) >> 16
  cb = (-fix(0.168736) * r - fix(0.331264) * g + fix(0.5) * b +
        (128 << 16) + 32767) >> 16
  cr = (fix(0.5) * r - fix(0.418688) * g - fix(0.081312) * b +
        (128 << 16) + 32767) >> 16
  return np.stack([y, cb, cr], -1).astype(np.uint8)


def gray_side_by_side(rgb):
  """Grayscale-based EtC's image: Y | Cb | Cr side by side, `[H, 3W, 1]`."""
  ycc = ycbcr_fixed_point(rgb)
  return np.concatenate([ycc[..., 0], ycc[..., 1], ycc[..., 2]], axis=1)[...,
                                                                         None]


def key_for(label):
  """A fixed test key, so that statistical tests are reproducible."""
  return hashlib.sha256(label.encode()).digest()
