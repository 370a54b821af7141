"""Key-derived encryption plans and the jitted functions that apply them.

Every scheme in this package (EtC, its grayscale variant, the common-key
block-wise scheme, LE, ELE, PE) is, in a suitable integer representation of
the image, a fixed permutation of values followed by an XOR mask:

    encrypted[i] = representation[gather[i]] ^ xor[i]

The permutation carries block scrambling, rotation/flip, colour and in-block
value shuffles; the XOR carries negative-positive transformation (p ^ 255 on
8-bit values, p ^ 15 on LE's 4-bit values). A `Plan` holds those two arrays,
computed once on the host from the key for one image shape. `apply` and
`invert` are then a single gather and XOR over a batch: usable inside any
jitted function, batch-parallel (a batch sharded over devices stays
sharded), and exact inverses of each other. A plan holds no key material,
only the key's fingerprint.

Why one flat gather, also for EtC's block structure: on a CPU, XLA's gather
costs 0.5-1 ns per output byte (over 4x a memcpy even for the
identity permutation), and every exact alternative measured was slower,
because its extra passes cost more than it saves on the gather: a gather of
whole pixels (3-byte slices) plus a per-pixel channel select, a loop over
blocks with a switch over the 8 symmetries (both in
benchmarks/encryption_speed.py --alternatives), uint32 channel packing and
batch-minor layouts. For numpy batches on a CPU (the client CLI),
`host_kernel` runs EtC's 16x16 blocks as SSSE3 byte shuffles of block rows
instead, with identical results, at 2.5x a memory copy against this
gather's 9x.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Tuple

import jax
import jax.numpy as jnp
import numpy as np

from etcjax import errors
from etcjax.encryption import block_apply

# Representations: how uint8 RGB images map to the flat integer vector that
# is permuted, and how the permuted vector maps back to an image.
PIXELS = "pixels"  # the uint8 values themselves, [H, W, C].
NIBBLES = "nibbles"  # LE: each value split into its upper and lower 4 bits,
#                     [H, W, 2C] with channel order (c0 hi, c0 lo, c1 hi, ...).
YCBCR_GRAY = "ycbcr_gray"  # grayscale-based EtC: Y, Cb, Cr placed side by
#                            side as one grayscale image [H, 3W, 1].
REPRESENTATIONS = (PIXELS, NIBBLES, YCBCR_GRAY)


@dataclasses.dataclass(frozen=True, eq=False)
class Plan:
  """A key-derived encryption plan for one image shape.

  A pytree: the index arrays are leaves (so a plan can be passed into jitted
  functions without being baked in as constants); everything else is static.
  Build plans with `schemes.make_plan` (or `make`), which checks that the
  index arrays are permutations.

  Attributes:
    gather: int32 `[P]` (or `[N, P]` for per-image keys), the source index in
      the flat representation of every flat output value; P is the number of
      values of the representation of one image.
    xor: uint8 `[P]` (or `[N, P]`), the mask XORed onto each output value.
    ungather: int32, the inverse permutation of `gather`.
    scheme: name of the scheme that made the plan.
    image_shape: `(H, W, C)` of plain images.
    encrypted_shape: `(H', W', C')` of encrypted images (equal to
      `image_shape` except for grayscale-based EtC).
    block_size: block side in pixels.
    representation: one of `REPRESENTATIONS`.
    fingerprint: fingerprint of the key (never the key).
  """

  gather: np.ndarray
  xor: np.ndarray
  ungather: np.ndarray
  scheme: str
  image_shape: Tuple[int, int, int]
  encrypted_shape: Tuple[int, int, int]
  block_size: int
  representation: str
  fingerprint: str

  @property
  def per_image(self) -> bool:
    """Whether each image of a batch has its own key (PE, per-image mode)."""
    return np.ndim(self.gather) == 2

  def __repr__(self) -> str:
    # Short and array-free, so that plans can be logged.
    return (f"Plan(scheme={self.scheme!r}, image_shape={self.image_shape}, "
            f"encrypted_shape={self.encrypted_shape}, "
            f"block_size={self.block_size}, "
            f"representation={self.representation!r}, "
            f"fingerprint={self.fingerprint!r}, per_image={self.per_image})")


jax.tree_util.register_dataclass(
    Plan,
    data_fields=["gather", "xor", "ungather"],
    meta_fields=["scheme", "image_shape", "encrypted_shape", "block_size",
                 "representation", "fingerprint"],
)


def representation_shape(representation: str,
                         image_shape) -> Tuple[int, int, int]:
  """Shape `(h, w, c)` of the array a representation permutes.

  Args:
    representation: one of `REPRESENTATIONS`.
    image_shape: `(H, W, C)` of plain images.

  Returns:
    `(H, W, C)` for pixels, `(H, W, 2C)` for nibbles, `(H, 3W, 1)` for
    grayscale-based EtC.
  """
  h, w, c = image_shape
  if representation == PIXELS:
    return (h, w, c)
  if representation == NIBBLES:
    return (h, w, 2 * c)
  if representation == YCBCR_GRAY:
    return (h, 3 * w, 1)
  raise ValueError(
      f"unknown representation {representation!r}; expected one of "
      f"{REPRESENTATIONS}")


def make(gather: np.ndarray, xor: np.ndarray, **meta) -> Plan:
  """Builds a `Plan` from a permutation and mask, computing the inverse.

  Args:
    gather: int `[P]` or `[N, P]`, a permutation of range(P) (per row).
    xor: uint8 of the same shape.
    **meta: the static `Plan` fields.

  Returns:
    The `Plan`.

  Raises:
    ValueError: if shapes disagree with each other or with the
      representation, or `gather` is not a permutation.
  """
  gather = np.asarray(gather, np.int64)
  xor = np.asarray(xor, np.uint8)
  if gather.shape != xor.shape or gather.ndim not in (1, 2):
    raise ValueError(
        f"gather {gather.shape} and xor {xor.shape} must have one equal shape "
        "[P] or [N, P]")
  meta["image_shape"] = tuple(int(d) for d in meta["image_shape"])
  meta["encrypted_shape"] = tuple(int(d) for d in meta["encrypted_shape"])
  size = int(np.prod(representation_shape(meta["representation"],
                                          meta["image_shape"])))
  if gather.shape[-1] != size:
    raise ValueError(
        f"gather has {gather.shape[-1]} values per image, but the "
        f"{meta['representation']} representation of {meta['image_shape']} "
        f"images has {size}")
  # Every scheme must be a bijection; a bug here would silently lose pixels.
  rows = np.arange(size)
  if not np.array_equal(np.sort(gather, axis=-1),
                        np.broadcast_to(rows, gather.shape)):
    raise ValueError("plan gather is not a permutation")
  ungather = np.empty_like(gather)
  np.put_along_axis(ungather, gather, np.broadcast_to(rows, gather.shape), -1)
  return Plan(gather=gather.astype(np.int32), xor=xor,
              ungather=ungather.astype(np.int32), **meta)


# --------------------------------------------------------------------------
# Representations.

# RGB <-> YCbCr (ITU-T T.871, JPEG's full-range transform) in 16-bit fixed
# point: integer arithmetic rounds identically on every backend, whereas
# float32 results differ at .5 boundaries with FMA contraction and summation
# order, and an image encrypted on one machine must decrypt on another.
# Public so that host-side twins (e.g. in tf.data) use the very same numbers.
YCBCR_FRAC_BITS = 16
_HALF = 1 << (YCBCR_FRAC_BITS - 1)


def _fix(c: float) -> int:
  return int(round(c * (1 << YCBCR_FRAC_BITS)))


# Y, Cb, Cr = (RGB_TO_YCBCR_WEIGHTS @ (R, G, B) + RGB_TO_YCBCR_OFFSETS)
#             >> YCBCR_FRAC_BITS. Each chroma row sums to 0 (grey -> 128) and
# the offsets include rounding; _HALF - 1 keeps the chroma of pure blue and
# red (255.5) at 255.
RGB_TO_YCBCR_WEIGHTS = (
    (_fix(0.299), _fix(0.587), _fix(0.114)),
    (-_fix(0.168736), -_fix(0.331264), _fix(0.5)),
    (_fix(0.5), -_fix(0.418688), -_fix(0.081312)),
)
RGB_TO_YCBCR_OFFSETS = (_HALF, (128 << YCBCR_FRAC_BITS) + _HALF - 1,
                        (128 << YCBCR_FRAC_BITS) + _HALF - 1)


def rgb_to_ycbcr(images):
  """JPEG full-range RGB -> YCbCr, rounded to the nearest integer.

  Args:
    images: uint8 `[..., 3]` RGB in [0, 255].

  Returns:
    uint8 `[..., 3]` (Y, Cb, Cr) in [0, 255], within 0.51 of the exact
    real-valued T.871 transform.
  """
  x = jnp.asarray(images).astype(jnp.int32)
  planes = [sum(w * x[..., j] for j, w in enumerate(row)) + offset
            for row, offset in zip(RGB_TO_YCBCR_WEIGHTS, RGB_TO_YCBCR_OFFSETS)]
  return (jnp.stack(planes, axis=-1) >> YCBCR_FRAC_BITS).astype(jnp.uint8)


def ycbcr_to_rgb(images):
  """JPEG full-range YCbCr -> RGB, rounded and clipped to [0, 255].

  Args:
    images: uint8 `[..., 3]` (Y, Cb, Cr) in [0, 255].

  Returns:
    uint8 `[..., 3]` RGB. `ycbcr_to_rgb(rgb_to_ycbcr(x))` differs from `x` by
    at most 1 per value (checked over all 2^24 colours in the tests).
  """
  x = jnp.asarray(images).astype(jnp.int32)
  y, cb, cr = x[..., 0], x[..., 1] - 128, x[..., 2] - 128
  bits = YCBCR_FRAC_BITS
  r = y + ((_fix(1.402) * cr + _HALF) >> bits)
  g = y + ((-_fix(0.344136) * cb - _fix(0.714136) * cr + _HALF) >> bits)
  b = y + ((_fix(1.772) * cb + _HALF) >> bits)
  return jnp.clip(jnp.stack([r, g, b], axis=-1), 0, 255).astype(jnp.uint8)


def _to_flat(representation: str, images, plain: bool):
  """uint8 images `[N, h, w, c]` -> flat representation values `[N, P]`.

  `plain` selects the plain-image side; the encrypted side of grayscale-based
  EtC already is its representation.
  """
  images = jnp.asarray(images)  # numpy stays numpy under jax.disable_jit()
  n = images.shape[0]
  if representation == NIBBLES:
    images = jnp.stack([images >> 4, images & 15], axis=-1)
  elif representation == YCBCR_GRAY and plain:
    ycc = rgb_to_ycbcr(images)
    images = jnp.concatenate([ycc[..., 0], ycc[..., 1], ycc[..., 2]], axis=2)
  return images.reshape(n, -1)


def _from_flat(representation: str, flat, shape, plain: bool):
  """Inverse of `_to_flat`: `[N, P]` -> uint8 images `[N] + shape`."""
  n = flat.shape[0]
  h, w, c = shape
  if representation == NIBBLES:
    pairs = flat.reshape(n, h, w, c, 2)
    return (pairs[..., 0] << 4) | pairs[..., 1]
  if representation == YCBCR_GRAY and plain:
    planes = flat.reshape(n, h, 3, w)
    return ycbcr_to_rgb(jnp.moveaxis(planes, 2, -1))
  return flat.reshape((n,) + tuple(shape))


def _gather(flat, index):
  # Indices are permutations checked in `make`; XLA clamps regardless, so
  # promising in-bounds only drops the masking of jnp's default "fill" mode.
  if index.ndim == 1:
    return flat.at[:, index].get(mode="promise_in_bounds",
                                 unique_indices=True)
  return jnp.take_along_axis(flat, index, axis=1, mode="promise_in_bounds")


# The jitted cores see only index arrays and shapes, not the plan's
# fingerprint, so plans of different keys share one compilation.
@functools.partial(jax.jit, static_argnames=("representation", "out_shape"))
def _encrypt_flat(gather, xor, images, *, representation, out_shape):
  flat = _to_flat(representation, images, plain=True)
  return _from_flat(representation, _gather(flat, gather) ^ xor, out_shape,
                    plain=False)


_encrypt_blocks = jax.jit(block_apply.apply_blocks,
                          static_argnames=("image_shape", "block_size"))


@functools.partial(jax.jit, static_argnames=("representation", "out_shape"))
def _decrypt_flat(ungather, xor, encrypted, *, representation, out_shape):
  flat = _to_flat(representation, encrypted, plain=False)
  return _from_flat(representation, _gather(flat ^ xor, ungather), out_shape,
                    plain=True)


# --------------------------------------------------------------------------
# Validation.


class ImageDtypeError(errors.UserError, TypeError):
  """Images that are not a uint8 numpy or jax array."""


class ImageShapeError(errors.UserError, ValueError):
  """Images whose shape does not fit: not [N, H, W, C], an empty batch, or
  not the shape (or batch size) the plan was made for."""


def check_images(images, what: str = "images") -> Tuple[int, ...]:
  """Checks that `images` is a non-empty uint8 batch `[N, H, W, C]`.

  Args:
    images: a numpy or jax array (or tracer).
    what: names the argument in error messages.

  Returns:
    The shape `(N, H, W, C)`.

  Raises:
    ImageDtypeError (a TypeError): not an array, or not uint8.
    ImageShapeError (a ValueError): not rank 4, or N = 0.
  """
  dtype = getattr(images, "dtype", None)
  shape = getattr(images, "shape", None)
  if dtype is None or shape is None:
    raise ImageDtypeError(
        f"{what} must be a numpy or jax array, got {type(images).__name__}")
  if dtype != np.uint8:
    raise ImageDtypeError(
        f"{what} must be uint8 in [0, 255], got dtype {dtype}; convert float "
        "images in [0, 255] with np.clip(np.round(x), 0, 255).astype(np.uint8)"
        " (or x * 255 first for images in [0, 1])")
  if len(shape) != 4:
    hint = " (add a batch axis: images[None])" if len(shape) == 3 else ""
    raise ImageShapeError(
        f"{what} must have rank 4 [N, H, W, C], got shape {tuple(shape)}"
        f"{hint}")
  if shape[0] == 0:
    raise ImageShapeError(f"{what} is an empty batch (N = 0)")
  return tuple(shape)


def check_batch(plan: Plan, images, encrypted: bool) -> None:
  """Raises a specific error unless `images` is a uint8 batch for `plan`."""
  if not isinstance(plan, Plan):
    raise TypeError(
        "plan must be an etcjax.encryption Plan (from make_plan), got "
        f"{type(plan).__name__}")
  what = "encrypted images" if encrypted else "images"
  expected_shape = plan.encrypted_shape if encrypted else plan.image_shape
  shape = check_images(images, what)
  if tuple(shape[1:]) != tuple(expected_shape):
    raise ImageShapeError(
        f"{what} have shape [N, H, W, C] = {tuple(shape)}, but this "
        f"{plan.scheme} plan was made for "
        f"[N, {', '.join(map(str, expected_shape))}]; make a plan for this "
        "image shape")
  if plan.per_image and shape[0] != plan.gather.shape[0]:
    raise ImageShapeError(
        f"this per-image-key plan covers {plan.gather.shape[0]} images, got a "
        f"batch of {shape[0]}")


# --------------------------------------------------------------------------
# The two public operations.


def apply(plan: Plan, images):
  """Encrypts a batch of images with a plan.

  Jitted inside; callable on numpy or jax arrays and from inside other
  jitted functions. The gather runs along the per-image axis only, so a
  batch sharded over devices along N stays sharded. For repeated calls, put
  the plan on the device once (`jax.device_put(plan)`, or pass it as an
  argument of the jitted train step) so its index arrays are not copied
  from the host at every call.

  Args:
    plan: a `Plan` for images of shape `plan.image_shape`.
    images: uint8 `[N, H, W, C]` in [0, 255].

  Returns:
    uint8 jax array `[N] + plan.encrypted_shape` in [0, 255].

  Raises:
    TypeError, ValueError: for a non-uint8 or mis-shaped batch.
  """
  check_batch(plan, images, encrypted=False)
  if block_apply.prefer_blocks(plan, jax.default_backend()):
    # Same values as the flat gather, in block operations (block_apply.py).
    return _encrypt_blocks(plan.gather, plan.xor, images,
                           image_shape=plan.image_shape,
                           block_size=plan.block_size)
  return _encrypt_flat(plan.gather, plan.xor, images,
                       representation=plan.representation,
                       out_shape=plan.encrypted_shape)


def invert(plan: Plan, encrypted):
  """Decrypts a batch of images encrypted with the same plan.

  Args:
    plan: the `Plan` the images were encrypted with.
    encrypted: uint8 `[N] + plan.encrypted_shape` in [0, 255].

  Returns:
    uint8 jax array `[N] + plan.image_shape`; exactly the plain images for
    every scheme but grayscale-based EtC, whose RGB values may differ by 1
    because of YCbCr rounding (its grayscale representation is exact).

  Raises:
    TypeError, ValueError: for a non-uint8 or mis-shaped batch.
  """
  check_batch(plan, encrypted, encrypted=True)
  return _decrypt_flat(plan.ungather, plan.xor, encrypted,
                       representation=plan.representation,
                       out_shape=plan.image_shape)
