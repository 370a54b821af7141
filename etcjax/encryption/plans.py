"""Key-derived encryption plans and the jitted functions that apply them.

Every scheme in this package (EtC, its grayscale variant, the common-key
block-wise scheme, LE, ELE, PE) is, in a suitable integer representation of
the image, a fixed permutation of values followed by an XOR mask:

    encrypted[i] = representation[gather[i]] ^ xor[i]

The permutation carries block scrambling, rotation/flip, colour and in-block
pixel shuffles; the XOR carries negative-positive transformation (p ^ 255 on
8-bit values, p ^ 15 on LE's 4-bit values). A `Plan` holds those two arrays,
computed once on the host from the key for one image shape. `apply` and
`invert` are then a single gather and XOR over a batch: fast on every
backend, usable inside any jitted function, and exact inverses of each
other. A plan holds no key material, only the key's fingerprint.
"""

from __future__ import annotations

import dataclasses
from typing import Tuple

import jax
import jax.numpy as jnp
import numpy as np

# Representations: how uint8 RGB images map to the flat integer vector that
# is permuted, and how the permuted vector maps back to an image.
PIXELS = "pixels"  # the uint8 values themselves, [H, W, C].
NIBBLES = "nibbles"  # LE: each value split into its upper and lower 4 bits,
#                     [H, W, 2C] with channel order (c0 hi, c0 lo, c1 hi, ...).
YCBCR_GRAY = "ycbcr_gray"  # grayscale-based EtC: Y, Cb, Cr placed side by
#                            side as one grayscale image [H, 3W, 1].
REPRESENTATIONS = (PIXELS, NIBBLES, YCBCR_GRAY)


@dataclasses.dataclass(frozen=True)
class Plan:
  """A key-derived encryption plan for one image shape.

  A pytree: the index arrays are leaves (so a plan can be passed into jitted
  functions without being baked in as constants); everything else is static.

  Attributes:
    gather: int32 `[P]` (or `[N, P]` for per-image keys), the source index in
      the flat representation of every flat output value.
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


jax.tree_util.register_dataclass(
    Plan,
    data_fields=["gather", "xor", "ungather"],
    meta_fields=["scheme", "image_shape", "encrypted_shape", "block_size",
                 "representation", "fingerprint"],
)

def make(gather: np.ndarray, xor: np.ndarray, **meta) -> Plan:
  """Builds a `Plan` from a permutation and mask, computing the inverse."""
  gather = np.asarray(gather, np.int64)
  xor = np.asarray(xor, np.uint8)
  if gather.shape != xor.shape:
    raise ValueError(f"gather {gather.shape} and xor {xor.shape} differ")
  ungather = np.empty_like(gather)
  rows = np.arange(gather.shape[-1])
  if gather.ndim == 1:
    ungather[gather] = rows
  else:
    np.put_along_axis(ungather, gather, np.broadcast_to(rows, gather.shape), -1)
  # Every scheme must be a bijection; a bug here would silently lose pixels.
  if not np.array_equal(np.sort(gather, axis=-1),
                        np.broadcast_to(rows, gather.shape)):
    raise AssertionError("plan gather is not a permutation")
  meta["image_shape"] = tuple(int(d) for d in meta["image_shape"])
  meta["encrypted_shape"] = tuple(int(d) for d in meta["encrypted_shape"])
  return Plan(gather=gather.astype(np.int32), xor=xor,
              ungather=ungather.astype(np.int32), **meta)


# --------------------------------------------------------------------------
# Representations.


def _rgb_to_ycbcr(x):
  """JPEG (ITU-T T.871) full-range RGB -> YCbCr, uint8 -> uint8 (rounded)."""
  x = x.astype(jnp.float32)
  r, g, b = x[..., 0], x[..., 1], x[..., 2]
  y = 0.299 * r + 0.587 * g + 0.114 * b
  cb = 128.0 - 0.168736 * r - 0.331264 * g + 0.5 * b
  cr = 128.0 + 0.5 * r - 0.418688 * g - 0.081312 * b
  out = jnp.stack([y, cb, cr], axis=-1)
  return jnp.clip(jnp.round(out), 0, 255).astype(jnp.uint8)


def _ycbcr_to_rgb(x):
  """JPEG (ITU-T T.871) full-range YCbCr -> RGB, uint8 -> uint8 (rounded)."""
  x = x.astype(jnp.float32)
  y, cb, cr = x[..., 0], x[..., 1] - 128.0, x[..., 2] - 128.0
  r = y + 1.402 * cr
  g = y - 0.344136 * cb - 0.714136 * cr
  b = y + 1.772 * cb
  out = jnp.stack([r, g, b], axis=-1)
  return jnp.clip(jnp.round(out), 0, 255).astype(jnp.uint8)


def _to_flat(plan: Plan, images):
  """Plain uint8 images `[N, H, W, C]` -> flat representation `[N, P]`."""
  n = images.shape[0]
  if plan.representation == NIBBLES:
    images = jnp.stack([images >> 4, images & 15], axis=-1)
  elif plan.representation == YCBCR_GRAY:
    ycc = _rgb_to_ycbcr(images)
    images = jnp.concatenate([ycc[..., 0], ycc[..., 1], ycc[..., 2]], axis=2)
  return images.reshape(n, -1)


def _from_flat(plan: Plan, flat):
  """Flat representation `[N, P]` -> plain uint8 images `[N, H, W, C]`."""
  n = flat.shape[0]
  h, w, c = plan.image_shape
  if plan.representation == NIBBLES:
    pairs = flat.reshape(n, h, w, c, 2)
    return (pairs[..., 0] << 4) | pairs[..., 1]
  if plan.representation == YCBCR_GRAY:
    gray = flat.reshape(n, h, 3 * w)
    ycc = jnp.stack([gray[:, :, :w], gray[:, :, w:2 * w], gray[:, :, 2 * w:]], -1)
    return _ycbcr_to_rgb(ycc)
  return flat.reshape(n, h, w, c)


def _encrypted_to_flat(plan: Plan, encrypted):
  n = encrypted.shape[0]
  if plan.representation == NIBBLES:
    encrypted = jnp.stack([encrypted >> 4, encrypted & 15], axis=-1)
  return encrypted.reshape(n, -1)


def _flat_to_encrypted(plan: Plan, flat):
  n = flat.shape[0]
  if plan.representation == NIBBLES:
    h, w, c = plan.encrypted_shape
    pairs = flat.reshape(n, h, w, c, 2)
    return (pairs[..., 0] << 4) | pairs[..., 1]
  return flat.reshape((n,) + tuple(plan.encrypted_shape))


# --------------------------------------------------------------------------
# Validation.


def _check_batch(plan: Plan, images, expected_shape, what: str) -> None:
  dtype = getattr(images, "dtype", None)
  if dtype is None:
    raise TypeError(f"{what} must be an array, got {type(images).__name__}")
  if dtype != np.uint8:
    raise TypeError(
        f"{what} must be uint8 in [0, 255], got dtype {dtype}; convert float "
        "images in [0, 255] with np.clip(np.round(x), 0, 255).astype(np.uint8)"
        " (or x * 255 first for images in [0, 1])")
  if images.ndim != 4:
    hint = " (add a batch axis: images[None])" if images.ndim == 3 else ""
    raise ValueError(
        f"{what} must have rank 4 [N, H, W, C], got shape {tuple(images.shape)}"
        f"{hint}")
  if images.shape[0] == 0:
    raise ValueError(f"{what} is an empty batch (N = 0)")
  if tuple(images.shape[1:]) != tuple(expected_shape):
    raise ValueError(
        f"{what} have shape [N, H, W, C] = {tuple(images.shape)}, but this "
        f"{plan.scheme} plan was made for [N, {', '.join(map(str, expected_shape))}];"
        " make a plan for this image shape")
  if plan.per_image and images.shape[0] != plan.gather.shape[0]:
    raise ValueError(
        f"this per-image-key plan covers {plan.gather.shape[0]} images, got a "
        f"batch of {images.shape[0]}")


def _permute(flat, index):
  if index.ndim == 1:
    return jnp.take(flat, index, axis=1)
  return jnp.take_along_axis(flat, index, axis=1)


# --------------------------------------------------------------------------
# The two public operations.


@jax.jit
def apply(plan: Plan, images):
  """Encrypts a batch of images with a plan.

  Jitted; callable on numpy or jax arrays and from inside other jitted
  functions (a batch sharded over devices stays sharded: the gather runs
  along the per-image axis only).

  Args:
    plan: a `Plan` for images of shape `plan.image_shape`.
    images: uint8 `[N, H, W, C]` in [0, 255].

  Returns:
    uint8 jax array `[N] + plan.encrypted_shape` in [0, 255].
  """
  _check_batch(plan, images, plan.image_shape, "images")
  flat = _to_flat(plan, jnp.asarray(images))
  return _flat_to_encrypted(plan, _permute(flat, plan.gather) ^ plan.xor)


@jax.jit
def invert(plan: Plan, encrypted):
  """Decrypts a batch of images encrypted with the same plan.

  Args:
    plan: the `Plan` the images were encrypted with.
    encrypted: uint8 `[N] + plan.encrypted_shape` in [0, 255].

  Returns:
    uint8 jax array `[N] + plan.image_shape`; exactly the plain images for
    every scheme but grayscale-based EtC, whose YCbCr round trip may differ
    by a few levels (see `schemes.etc_gray`).
  """
  _check_batch(plan, encrypted, plan.encrypted_shape, "encrypted images")
  flat = _encrypted_to_flat(plan, jnp.asarray(encrypted))
  return _from_flat(plan, _permute(flat ^ plan.xor, plan.ungather))
