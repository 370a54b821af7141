"""Encryption and JPEG compression on the host, per example, in TensorFlow.

Used only for on-the-fly encryption with `config.encryption.jpeg_quality`
(the paper's JPEG rows): JPEG must come after encryption and cannot run on
the accelerator, so the input pipeline encrypts with the plan's gather and
XOR arrays (the same arithmetic as the jitted `encryption.apply`, bit for
bit) and JPEG round-trips the result. Otherwise the train step encrypts on
the device and this module is unused.
"""

from __future__ import annotations

import tensorflow as tf

from etcjax.data import errors
from etcjax.encryption import jpeg
from etcjax.encryption import plans


# 16-bit fixed point, as `plans.rgb_to_ycbcr`: integer arithmetic makes the
# host's and the device's encrypted images equal bit for bit.
_FRAC_BITS = 16
_HALF = 1 << (_FRAC_BITS - 1)


def _fix(c: float) -> int:
  return int(round(c * (1 << _FRAC_BITS)))


def rgb_to_ycbcr(image):
  """TensorFlow twin of `plans.rgb_to_ycbcr` (JPEG full-range, rounded).

  Args:
    image: uint8 `[..., 3]` RGB.

  Returns:
    uint8 `[..., 3]` YCbCr, equal to `plans.rgb_to_ycbcr(image)`.
  """
  x = tf.cast(image, tf.int32)
  r, g, b = x[..., 0], x[..., 1], x[..., 2]
  offset = 128 << _FRAC_BITS
  y = _fix(0.299) * r + _fix(0.587) * g + _fix(0.114) * b + _HALF
  cb = (-_fix(0.168736) * r - _fix(0.331264) * g + _fix(0.5) * b + offset
        + _HALF - 1)
  cr = (_fix(0.5) * r - _fix(0.418688) * g - _fix(0.081312) * b + offset
        + _HALF - 1)
  return tf.cast(tf.bitwise.right_shift(tf.stack([y, cb, cr], -1), _FRAC_BITS),
                 tf.uint8)


class Encryptor:
  """Encrypts single plain images with one plan (holds no key material)."""

  def __init__(self, plan: plans.Plan):
    """Keeps the plan's arrays as constants for the tf.data graph.

    Args:
      plan: a `Plan` with one key for every image (not per-image keys).

    Raises:
      ValueError: `plan` has per-image keys (a different plan per image id).
    """
    if plan.per_image:
      raise ValueError(
          f"scheme {plan.scheme!r} uses a key per image; host-side encryption "
          "supports schemes with one key for all images")
    self.plan = plan
    self._gather = tf.constant(plan.gather, tf.int32)
    self._xor = tf.constant(plan.xor, tf.uint8)

  def _to_flat(self, image):
    if self.plan.representation == plans.NIBBLES:
      image = tf.stack([tf.bitwise.right_shift(image, 4),
                        tf.bitwise.bitwise_and(image, 15)], -1)
    elif self.plan.representation == plans.YCBCR_GRAY:
      ycc = rgb_to_ycbcr(image)
      image = tf.concat([ycc[..., 0], ycc[..., 1], ycc[..., 2]], 1)
    return tf.reshape(image, [-1])

  def __call__(self, image):
    """Encrypts one image.

    Args:
      image: uint8 `plan.image_shape` in [0, 255].

    Returns:
      uint8 `plan.encrypted_shape`.
    """
    image = tf.ensure_shape(image, self.plan.image_shape)
    flat = tf.bitwise.bitwise_xor(tf.gather(self._to_flat(image), self._gather),
                                  self._xor)
    if self.plan.representation == plans.NIBBLES:
      pairs = tf.reshape(flat, tuple(self.plan.encrypted_shape) + (2,))
      return tf.bitwise.bitwise_or(tf.bitwise.left_shift(pairs[..., 0], 4),
                                   pairs[..., 1])
    return tf.reshape(flat, self.plan.encrypted_shape)


def jpeg_round_trip(image, quality: int):
  """JPEG-compresses and decodes one image as the encrypted datasets do.

  Colour images use 4:2:0 chroma subsampling and are decoded with chroma
  replicated rather than interpolated (see `etcjax.encryption.jpeg`);
  single-channel images are grayscale JPEGs.

  Args:
    image: uint8 `[H, W, C]`, C = 1 or 3, H and W static.
    quality: IJG quality factor in [1, 100].

  Returns:
    uint8 `[H, W, C]`, the decoded JPEG.
  """
  channels = image.shape[-1]
  if channels not in (1, 3):
    raise ValueError(f"JPEG needs 1 or 3 channels, got image shape {image.shape}")
  data = tf.io.encode_jpeg(image, quality=quality, chroma_downsampling=True)
  decoded = tf.io.decode_jpeg(data, channels=channels, fancy_upscaling=False)
  return tf.ensure_shape(decoded, image.shape)


def check_jpeg(plan: plans.Plan, quality: int) -> None:
  """Raises unless JPEG at `quality` (4:2:0) suits the plan's scheme.

  Args:
    plan: the encryption plan.
    quality: IJG quality factor.

  Raises:
    ValueError: quality outside [1, 100], or the scheme or block size is not
      JPEG-compliant.
  """
  if isinstance(quality, bool) or not 1 <= quality <= 100:
    raise errors.DataError(
        f"encryption.jpeg_quality must be an integer in [1, 100] or None, got "
        f"{quality!r}")
  jpeg.check_jpeg_compatible(plan.scheme, plan.block_size, "4:2:0")
