"""EtC as block operations: a block gather, per-block symmetry and colour
selects, and the XOR mask, instead of one gather per value.

An EtC plan's flat gather (`plans.Plan.gather`) moves every byte on its own:
on a CPU 10-20x a memory copy, and element-wise gathers are a known slow path
on TPU. EtC's permutation has more structure than that: output block j is
source block `order[j]`, turned by one of the 8 symmetries of the square and
with its channels reordered, XORed with 0 or 255. This module reads those
choices back from the plan's gather (on device, at block granularity, so it
also works under `jax.jit` where the plan is a traced argument) and applies
them as

- one gather of whole `b x b x C` blocks (contiguous slices),
- three two-way selects per block (transpose, flip rows, flip columns: the
  8 symmetries are their compositions),
- one select per output channel among the C source channels,
- the plan's XOR mask, element-wise.

It is exact for plans of the 'etc' scheme (any key, block size >= 2, any
subset of its steps): the selects reproduce the gather value for value
(property-tested against `plans.apply`). `plans.apply` uses it where
`prefer_blocks` says it is faster.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

# Backends on which the block formulation replaces the flat gather. On CPU
# it is 5-17x slower than the gather (benchmarks/block_encryption_speed.py:
# the selects and the two block transposes are full passes, and XLA:CPU's
# gather is comparatively good), so the CPU keeps the gather. TPU and GPU
# use blocks because element-wise gathers are their slow path; that is
# unmeasured here (no accelerator): benchmarks/accelerator.py times the step
# both ways, and ETCJAX_ON_DEVICE_ETC=gather|blocks overrides the choice.
BLOCK_BACKENDS = ("tpu", "gpu", "cuda", "rocm")
OVERRIDE_ENV = "ETCJAX_ON_DEVICE_ETC"


def supports(plan) -> bool:
  """Whether `apply_blocks` reproduces `plans.apply` for this plan.

  Args:
    plan: a `plans.Plan`.

  Returns:
    True for single-key 'etc' plans (pixel representation) with blocks of
    at least 2x2.
  """
  return (plan.scheme == "etc" and plan.representation == "pixels" and
          not plan.per_image and plan.block_size >= 2 and
          tuple(plan.image_shape) == tuple(plan.encrypted_shape))


def prefer_blocks(plan, backend: str) -> bool:
  """Whether `plans.apply` should use the block formulation on `backend`.

  Args:
    plan: a `plans.Plan`.
    backend: `jax.default_backend()`.

  Returns:
    `supports(plan)` and either the environment variable
    `ETCJAX_ON_DEVICE_ETC` is 'blocks', or it is unset (or 'auto') and the
    backend is in `BLOCK_BACKENDS`.

  Raises:
    ValueError: the environment variable has another value.
  """
  choice = os.environ.get(OVERRIDE_ENV, "auto")
  if choice not in ("auto", "gather", "blocks"):
    raise ValueError(
        f"{OVERRIDE_ENV} must be 'auto', 'gather' or 'blocks', got {choice!r}")
  if not supports(plan) or choice == "gather":
    return False
  return choice == "blocks" or backend in BLOCK_BACKENDS


def _symmetry(x, transpose, flip_rows, flip_cols, xp=jnp):
  """Applies per-block symmetries to blocks `[N, nb, b, b, C]`.

  `transpose`, `flip_rows`, `flip_cols` are bool `[nb]`; the block is
  transposed first, then its rows, then its columns are reversed. `xp` is
  jax.numpy, or numpy for the host-side table.
  """
  def where(flag, a, b):
    return xp.where(flag[None, :, None, None, None], a, b)

  x = where(transpose, xp.swapaxes(x, 2, 3), x)
  x = where(flip_rows, x[:, :, ::-1], x)
  return where(flip_cols, x[:, :, :, ::-1], x)


@functools.lru_cache(maxsize=None)
def _symmetry_table(b: int) -> np.ndarray:
  """int32 `[8, 2]`: for bits (transpose, flip_rows, flip_cols) = code,
  the source-local flat positions (row * b + col) of output positions
  (0, 0) and (0, 1), computed with `_symmetry` itself so that decoding and
  applying share one convention."""
  local = np.arange(b * b, dtype=np.int32).reshape(1, 1, b, b, 1)
  table = []
  for code in range(8):
    bits = [np.array([bool(code >> s & 1)]) for s in range(3)]
    y = _symmetry(local, *bits, xp=np)[0, 0, :, :, 0]
    table.append((y[0, 0], y[0, 1]))
  table = np.asarray(table, np.int32)
  assert len({tuple(t) for t in table}) == 8  # the pair identifies the code
  return table


def _decode(gather, image_shape, b):
  """Per output block: source block, symmetry bits and channel sources.

  Args:
    gather: int32 `[H * W * C]`, an 'etc' plan's gather (may be traced).
    image_shape: `(H, W, C)`.
    b: block size.

  Returns:
    `(order [nb], transpose [nb], flip_rows [nb], flip_cols [nb],
    channels [nb, C])`: int32 source block, bools, int32 source channel of
    every output channel.
  """
  h, w, c = image_shape
  hb, wb = h // b, w // b
  g = gather.reshape(hb, b, wb, b, c)
  first = g[:, 0, :, 0, :].reshape(hb * wb, c)  # output (0, 0) of each block
  second = g[:, 0, :, 1, 0].reshape(hb * wb)  # output (0, 1), channel 0
  pixel, channels = first // c, first % c
  row, col = pixel[:, 0] // w, pixel[:, 0] % w
  order = (row // b) * wb + col // b
  local00 = (row % b) * b + col % b
  pixel01 = second // c
  local01 = (pixel01 // w % b) * b + pixel01 % w % b
  table = jnp.asarray(_symmetry_table(b))
  match = (table[None, :, 0] == local00[:, None]) & (
      table[None, :, 1] == local01[:, None])
  code = jnp.argmax(match, axis=1)
  return (order.astype(jnp.int32), (code & 1) > 0, (code & 2) > 0,
          (code & 4) > 0, channels.astype(jnp.int32))


def apply_blocks(gather, xor, images, *, image_shape, block_size):
  """EtC-encrypts a batch with the block formulation.

  Args:
    gather: int32 `[H * W * C]`, the 'etc' plan's gather (a traced argument
      is fine).
    xor: uint8 `[H * W * C]`, the plan's mask.
    images: uint8 `[N, H, W, C]` in [0, 255].
    image_shape: static `(H, W, C)`.
    block_size: static block side b (>= 2, dividing H and W).

  Returns:
    uint8 `[N, H, W, C]`, equal to `plans.apply(plan, images)` for a plan
    with `supports(plan)`.
  """
  h, w, c = image_shape
  b = block_size
  hb, wb = h // b, w // b
  n = images.shape[0]
  order, transpose, flip_rows, flip_cols, channels = _decode(
      gather, image_shape, b)
  blocks = images.reshape(n, hb, b, wb, b, c).transpose(0, 1, 3, 2, 4, 5)
  blocks = blocks.reshape(n, hb * wb, b, b, c)
  # `order` is a permutation (decoded from a checked plan).
  blocks = blocks.at[:, order].get(mode="promise_in_bounds",
                                   unique_indices=True)
  blocks = _symmetry(blocks, transpose, flip_rows, flip_cols)
  picked = [jax.lax.select_n(
      jnp.broadcast_to(channels[None, :, None, None, k], blocks.shape[:-1]),
      *[blocks[..., s] for s in range(c)]) for k in range(c)]
  blocks = jnp.stack(picked, axis=-1)
  out = blocks.reshape(n, hb, wb, b, b, c).transpose(0, 1, 3, 2, 4, 5)
  return out.reshape(n, h, w, c) ^ xor.reshape(h, w, c)
