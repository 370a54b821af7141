"""A compiled CPU kernel for EtC with 16x16 blocks on numpy batches.

`plans.apply` is one XLA gather: right for accelerators and for use inside
jitted training steps, but XLA:CPU emits gathers element by element (about
1.5 ns per byte here, 10x a memory copy). A data owner encrypting a dataset
on a CPU gets the same result from this kernel, which moves EtC's block rows
as 48-byte SSSE3 byte shuffles (a scalar loop on CPUs without SSSE3).

How it works: `table_for(plan)` cuts the plan's output into segments of 16
consecutive pixels (a row of a 16x16 block) such that every segment reads
16 source pixels at a constant step (along a row or down a column) with
one channel map and one XOR mask per channel, which EtC with 16x16 blocks
satisfies; the table is checked to reproduce the plan's gather exactly.
Other plans (other block sizes, LE and ELE's nibbles, grayscale-based
EtC's YCbCr planes, PE, in-block pixel shuffles) have no table, and
`apply_numpy`/`invert_numpy` use `plans.apply` for them.

Measured with benchmarks/encryption_speed.py on a 2-core VM: a
128x224x224x3 batch in 2.5x the time of `np.copy` (XLA: 9x). Blocks read
down a column are transposed into a small buffer first, so that every
segment is a contiguous 48-byte row; the next image is prefetched while
one is encrypted, since reading rows from all over an image defeats the
hardware prefetcher.

The kernel is a C extension (`_segments.c`) built by `pip install`; where
it could not be built (no compiler), `available()` is False and everything
falls back to XLA with the same results.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from typing import Optional

import numpy as np

from etcjax.encryption import plans

try:
  from etcjax.encryption import _segments  # pylint: disable=g-import-not-at-top
except ImportError:  # Built without a C compiler: XLA only.
  _segments = None

_SHUFFLE_PIXELS = 16  # Rows of this many pixels (48 bytes) use shuffles.
_CHANNEL_ORDERS = tuple(itertools.permutations(range(3)))


def available() -> bool:
  """Whether the compiled kernel was built and imports."""
  return _segments is not None


@dataclasses.dataclass(frozen=True)
class SegmentTable:
  """A plan as segments of pixels read at a constant step.

  Segment s is output pixels [s L, (s + 1) L) of an image.

  Attributes:
    length: L, pixels per segment (16).
    source: int64 `[S]`, byte offset of the source of the segment's first
      pixel, within the image or (`from_block`) within the buffer of
      transposed blocks.
    step: int64 `[S]`, byte step between the sources of consecutive pixels.
    pattern: int16 `[S]`, index into `_SHUFFLES`, or -1 for the scalar loop.
    cmap: uint8 `[S, 3]`, source channel of each output channel.
    mask: uint8 `[S, 3]`, XOR mask of each output channel.
    from_block: uint8 `[S]`, 1 where the segment reads a row of a
      transposed source block in the buffer (one row of blocks: a slot of
      B rows of 3B bytes per output block column).
    transpose: int64 `[S]`, byte offset of the top-left corner of the
      source block to transpose into the buffer before the segment, or -1.
    transpose_to: int64 `[S]`, where in the buffer that block goes.
    pixels_bytes: bytes of one image.
    row_bytes: bytes of one image row (3W).
  """

  length: int
  source: np.ndarray
  step: np.ndarray
  pattern: np.ndarray
  cmap: np.ndarray
  mask: np.ndarray
  from_block: np.ndarray
  transpose: np.ndarray
  transpose_to: np.ndarray
  pixels_bytes: int
  row_bytes: int


def _shuffle_masks() -> np.ndarray:
  """SSSE3 masks `[12, 3, 3, 16]`: pattern, output vector, input vector, lane.

  Pattern `6 * backwards + order` reads a 16-pixel row forwards or backwards
  with channel order `_CHANNEL_ORDERS[order]`; lanes whose byte comes from
  another input vector are 0x80 (shuffled to zero).
  """
  masks = np.full((12, 3, 3, 16), 0x80, np.uint8)
  for backwards in (0, 1):
    for order, channels in enumerate(_CHANNEL_ORDERS):
      for byte in range(3 * _SHUFFLE_PIXELS):
        k, c = divmod(byte, 3)
        source_pixel = _SHUFFLE_PIXELS - 1 - k if backwards else k
        source = 3 * source_pixel + channels[c]
        masks[6 * backwards + order, byte // 16, source // 16,
              byte % 16] = source % 16
  return masks


_SHUFFLES = _shuffle_masks()


def _columns_as_rows(pixel, step, width):
  """Turns 16-pixel block columns into rows of the block transposed.

  Args:
    pixel: int64 `[S]`, source pixel (flat index y * W + x) of each
      segment's first pixel.
    step: int64 `[S]`, pixel step; +-W reads down/up a column.
    width: W.

  Returns:
    `(pixel, step, from_block, corner)`: for column segments, the first
    pixel and step (+-1) within the transposed B x B block (flat index
    i * B + j); 1 where that applies; and the flat pixel index of the top-left
    corner of their source block (-1 elsewhere).
  """
  b = _SHUFFLE_PIXELS
  pixel, step = pixel.copy(), step.copy()
  y, x = np.divmod(pixel, width)
  down = step == width
  up = step == -width
  # Only columns that stay inside one block: starting at its top (down) or
  # bottom (up) row.
  column = (down & (y % b == 0)) | (up & (y % b == b - 1))
  # Pixel (i, j) of the transposed block is source pixel (j, i).
  pixel[column] = ((x % b) * b + y % b)[column]
  step[column] = np.where(down, 1, -1)[column]
  corner = np.where(column, (y // b * b) * width + x // b * b, -1)
  return pixel, step, column.astype(np.uint8), corner


def _table(gather: np.ndarray, xor: np.ndarray, width: int
           ) -> Optional[SegmentTable]:
  """The segment table of a gather and mask, or None if they have none."""
  length = _SHUFFLE_PIXELS
  size = gather.shape[0]
  g = gather.reshape(-1, length, 3).astype(np.int64)
  m = xor.reshape(-1, length, 3)
  pixel = g // 3
  if not (pixel == pixel[..., :1]).all():
    return None  # An output pixel mixes values of several source pixels.
  pixel = pixel[..., 0]
  cmap = g[:, :1, :] % 3
  if not ((g % 3) == cmap).all() or not (m == m[:, :1]).all():
    return None
  step = pixel[:, 1] - pixel[:, 0]
  if not (pixel == pixel[:, :1] + step[:, None] * np.arange(length)).all():
    return None
  cmap, mask = cmap[:, 0].astype(np.uint8), m[:, 0].copy()
  first, step, from_block, corner = _columns_as_rows(pixel[:, 0], step, width)
  pattern = np.full(len(g), -1, np.int16)
  order = {o: i for i, o in enumerate(_CHANNEL_ORDERS)}
  for s in np.flatnonzero((np.abs(step) == 1)
                          & (mask == mask[:, :1]).all(axis=1)):
    pattern[s] = 6 * (step[s] < 0) + order[tuple(int(c) for c in cmap[s])]
  # Transposed blocks live in a buffer of one row of blocks, slot by output
  # block column, from the output block's first row to its last.
  row, column = np.divmod(np.arange(len(g)), width // length)
  slot = 3 * length * length * column
  transpose = np.where((corner >= 0) & (row % length == 0), 3 * corner, -1)
  return SegmentTable(length=length,
                      source=np.where(from_block == 1, slot, 0) + 3 * first,
                      step=3 * step, pattern=pattern, cmap=cmap, mask=mask,
                      from_block=from_block, transpose=transpose,
                      transpose_to=slot, pixels_bytes=size,
                      row_bytes=3 * width)


def _eligible(plan: plans.Plan) -> bool:
  # Other block sizes would take the scalar loop only, which is no faster
  # than XLA's gather.
  return (plan.representation == plans.PIXELS and not plan.per_image
          and plan.block_size == _SHUFFLE_PIXELS)


@functools.lru_cache(maxsize=16)
def _tables(plan: plans.Plan):
  # Plans hash by identity; the cache keeps a few recent ones' tables.
  if not _eligible(plan):
    return None, None
  width = plan.image_shape[1]
  gather, xor = np.asarray(plan.gather), np.asarray(plan.xor)
  encrypt = _table(gather, xor, width)
  # Decryption is the gather `ungather` with mask xor[ungather].
  ungather = np.asarray(plan.ungather)
  decrypt = _table(ungather, xor[ungather], width)
  return encrypt, decrypt


def table_for(plan: plans.Plan, inverse: bool = False
              ) -> Optional[SegmentTable]:
  """The plan's segment table (or its inverse's), or None if it has none.

  Args:
    plan: a `Plan`.
    inverse: the table of `invert` instead of `apply`.

  Returns:
    A `SegmentTable`, or None for plans that do not move whole pixels.
  """
  return _tables(plan)[1 if inverse else 0]


def supports(plan: plans.Plan, inverse: bool = False) -> bool:
  """Whether the kernel can run this plan (or its inverse) here."""
  return available() and table_for(plan, inverse) is not None


def _run(table: SegmentTable, images: np.ndarray,
         use_shuffles: bool) -> np.ndarray:
  images = np.ascontiguousarray(images)
  out = np.empty_like(images)
  blocks = np.empty(table.row_bytes * table.length, np.uint8)
  _segments.apply(images, out, blocks, images.shape[0], table.pixels_bytes,
                  table.length, table.source, table.step, table.pattern,
                  table.cmap, table.mask, _SHUFFLES, table.from_block,
                  table.transpose, table.transpose_to, table.row_bytes,
                  use_shuffles)
  return out


def apply(plan: plans.Plan, images: np.ndarray,
          use_shuffles: bool = True) -> np.ndarray:
  """`plans.apply` on the host: the same result, as numpy.

  Args:
    plan: a `Plan` with `supports(plan)`.
    images: uint8 `[N, H, W, 3]` in [0, 255] (numpy).
    use_shuffles: use SSSE3 shuffles where the CPU has them (False: the
      scalar loop everywhere; for tests).

  Returns:
    uint8 numpy `[N] + plan.encrypted_shape`.

  Raises:
    TypeError, ValueError: as `plans.apply`, or for a plan without a table.
  """
  return _apply(plan, images, False, use_shuffles)


def invert(plan: plans.Plan, encrypted: np.ndarray,
           use_shuffles: bool = True) -> np.ndarray:
  """`plans.invert` on the host: the same result, as numpy.

  Args:
    plan: the `Plan` the images were encrypted with (`supports(plan)`).
    encrypted: uint8 `[N] + plan.encrypted_shape` (numpy).
    use_shuffles: as for `apply`.

  Returns:
    uint8 numpy `[N] + plan.image_shape`.
  """
  return _apply(plan, encrypted, True, use_shuffles)


def _apply(plan, images, inverse, use_shuffles):
  plans.check_batch(plan, images, encrypted=inverse)
  if not available():
    raise ValueError("the compiled host kernel is not built; use "
                     "plans.apply")
  table = table_for(plan, inverse)
  if table is None:
    raise ValueError(
        f"this {plan.scheme} plan does not move whole pixels; use "
        "plans.apply")
  return _run(table, np.asarray(images), use_shuffles)


def apply_numpy(plan: plans.Plan, images: np.ndarray) -> np.ndarray:
  """`plans.apply` for numpy batches: the kernel where it can, else XLA.

  Args:
    plan: a `Plan`.
    images: uint8 `[N] + plan.image_shape` in [0, 255].

  Returns:
    uint8 numpy `[N] + plan.encrypted_shape`, identical either way.
  """
  if isinstance(images, np.ndarray) and supports(plan):
    return apply(plan, images)
  return np.asarray(plans.apply(plan, images))


def invert_numpy(plan: plans.Plan, encrypted: np.ndarray) -> np.ndarray:
  """`plans.invert` for numpy batches: the kernel where it can, else XLA.

  Args:
    plan: the `Plan` the images were encrypted with.
    encrypted: uint8 `[N] + plan.encrypted_shape`.

  Returns:
    uint8 numpy `[N] + plan.image_shape`, identical either way.
  """
  if isinstance(encrypted, np.ndarray) and supports(plan, inverse=True):
    return invert(plan, encrypted)
  return np.asarray(plans.invert(plan, encrypted))
