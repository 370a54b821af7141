"""RandAugment (Cubuk et al. 2020) on single uint8 images, in TensorFlow.

`n{N}-m{M}` applies N operations drawn uniformly (with replacement) from
`OPS`, each at magnitude M in [0, 10]. Every operation is the identity at
M = 0 and gets stronger as M grows (the "increasing" convention of timm;
the original paper's solarize and posterize get weaker instead):

    rotate            up to +-30 degrees at M = 10
    shear_x/y         shear factor up to +-0.3
    translate_x/y     up to +-45% of the image side
    solarize          inverts pixels >= 256 - 25.6 M
    posterize         keeps 8 - floor(0.4 M) bits
    color, contrast,
    brightness,
    sharpness         enhancement factor 1 +- 0.09 M
    identity, autocontrast, equalize   (no magnitude)

Signed operations take a random sign. Geometric operations fill uncovered
pixels with grey (128). Point operations reproduce PIL's ImageOps and
ImageEnhance exactly (same fixed-point luma, truncation and rounding).
Randomness is stateless (see `augment`), so results depend only on the seed.
"""

from __future__ import annotations

import math
import re
from typing import Optional, Tuple

import tensorflow as tf

from etcjax.data import augment
from etcjax.data import errors

OPS = ("identity", "autocontrast", "equalize", "rotate", "solarize", "color",
       "posterize", "contrast", "brightness", "sharpness", "shear_x",
       "shear_y", "translate_x", "translate_y")
MAX_MAGNITUDE = 10.0
_FILL = 128.0


def parse(spec: str) -> Optional[Tuple[int, float]]:
  """Parses a RandAugment spec.

  Args:
    spec: '' (off) or 'n{num_ops}-m{magnitude}', e.g. 'n2-m9'.

  Returns:
    None when off, else `(num_ops, magnitude)` with num_ops >= 1 and
    magnitude in [0, 10].

  Raises:
    ValueError: the spec is malformed or out of range.
  """
  if not spec:
    return None
  match = re.fullmatch(r"n(\d+)-m(\d+(?:\.\d+)?)", spec)
  if not match:
    raise errors.DataError(
        f"augment.randaugment must be '' or 'n<num_ops>-m<magnitude>' such as "
        f"'n2-m9', got {spec!r}")
  num_ops, magnitude = int(match.group(1)), float(match.group(2))
  if num_ops < 1 or magnitude > MAX_MAGNITUDE:
    raise errors.DataError(
        f"augment.randaugment {spec!r}: needs num_ops >= 1 and magnitude in "
        f"[0, {MAX_MAGNITUDE:g}]")
  return num_ops, magnitude


def _blend(degenerate, image, factor):
  """PIL ImageEnhance: degenerate + factor * (image - degenerate), clipped.

  Truncated to integers, as PIL's Image.blend does.
  """
  degenerate = tf.cast(degenerate, tf.float32)
  out = degenerate + factor * (tf.cast(image, tf.float32) - degenerate)
  return tf.cast(tf.clip_by_value(tf.floor(out), 0.0, 255.0), tf.uint8)


def _grey(image):
  """PIL's 'L' of uint8 RGB `[H, W, 3]`: float32 `[H, W, 1]`, integral."""
  x = tf.cast(image, tf.int32)
  # PIL's fixed-point ITU-R 601-2 luma, rounded.
  luma = tf.bitwise.right_shift(
      x[..., 0] * 19595 + x[..., 1] * 38470 + x[..., 2] * 7471 + 0x8000, 16)
  return tf.cast(luma, tf.float32)[..., None]


def autocontrast(image):
  """Stretches each channel to the full [0, 255] range (uint8 in and out)."""
  x = tf.cast(image, tf.float64)  # PIL's lookup table is computed in double.
  lo = tf.reduce_min(x, axis=(0, 1))
  hi = tf.reduce_max(x, axis=(0, 1))
  scale = tf.where(hi > lo, 255.0 / tf.maximum(hi - lo, 1.0), 1.0)
  offset = tf.where(hi > lo, -lo * scale, 0.0)
  # Truncated like PIL's lookup table.
  return tf.cast(tf.clip_by_value(tf.floor(x * scale + offset), 0.0, 255.0),
                 tf.uint8)


def _equalize_channel(channel):
  """PIL's ImageOps.equalize on one uint8 channel `[H, W]`."""
  hist = tf.math.bincount(tf.cast(channel, tf.int32), minlength=256,
                          maxlength=256)
  nonzero = tf.boolean_mask(hist, hist > 0)
  step = (tf.reduce_sum(hist) - nonzero[-1]) // 255

  def _equalized():
    lut = (tf.cumsum(hist) + step // 2) // step
    lut = tf.clip_by_value(tf.concat([[0], lut[:-1]], 0), 0, 255)
    return tf.cast(tf.gather(lut, tf.cast(channel, tf.int32)), tf.uint8)

  return tf.cond(step > 0, _equalized, lambda: channel)


def equalize(image):
  """Histogram-equalizes each channel (uint8 `[H, W, C]` in and out)."""
  channels = tf.unstack(image, num=image.shape[-1], axis=-1)
  return tf.stack([_equalize_channel(c) for c in channels], -1)


def solarize(image, threshold):
  """Inverts pixels >= threshold (uint8 in and out)."""
  return tf.where(tf.cast(image, tf.float32) >= threshold, 255 - image, image)


def posterize(image, bits):
  """Keeps the `bits` (int32 scalar, 4..8) high bits of every value."""
  shift = tf.cast(8 - bits, tf.uint8)
  return tf.bitwise.left_shift(tf.bitwise.right_shift(image, shift), shift)


def color(image, factor):
  """Saturation: blends with the grey image."""
  return _blend(tf.tile(_grey(image), [1, 1, 3]), image, factor)


def contrast(image, factor):
  """Contrast: blends with the image's mean grey level."""
  mean = tf.floor(tf.reduce_mean(_grey(image)) + 0.5)  # PIL rounds it.
  return _blend(tf.fill(tf.shape(image), mean), image, factor)


def brightness(image, factor):
  """Brightness: blends with black."""
  return _blend(tf.zeros_like(image), image, factor)


def sharpness(image, factor):
  """Sharpness: blends with PIL's SMOOTH-filtered image (borders kept)."""
  x = tf.cast(image, tf.float32)[None]
  kernel = tf.constant([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0
  kernel = tf.tile(kernel[:, :, None, None], [1, 1, image.shape[-1], 1])
  smooth = tf.round(tf.nn.depthwise_conv2d(x, kernel, [1, 1, 1, 1], "VALID"))[0]
  interior = tf.pad(tf.ones_like(smooth, tf.bool), [[1, 1], [1, 1], [0, 0]])
  smooth = tf.where(interior, tf.pad(smooth, [[1, 1], [1, 1], [0, 0]]),
                    tf.cast(image, tf.float32))
  return _blend(smooth, image, factor)


def _transform(image, matrix):
  """Applies a projective transform (output -> input map of 8 values)."""
  shape = tf.shape(image)
  out = tf.raw_ops.ImageProjectiveTransformV3(
      images=image[None], transforms=tf.cast(matrix, tf.float32)[None],
      output_shape=shape[:2], fill_value=_FILL, interpolation="NEAREST",
      fill_mode="CONSTANT")
  return tf.ensure_shape(out[0], image.shape)


def rotate(image, degrees):
  """Rotates about the centre by `degrees` (float32 scalar)."""
  shape = tf.cast(tf.shape(image), tf.float32)
  cy, cx = (shape[0] - 1) / 2, (shape[1] - 1) / 2
  angle = degrees * math.pi / 180.0
  cos, sin = tf.cos(angle), tf.sin(angle)
  return _transform(image, [cos, -sin, cx - cos * cx + sin * cy,
                            sin, cos, cy - sin * cx - cos * cy, 0.0, 0.0])


def shear_x(image, factor):
  """Shears along x: the output pixel (x, y) reads (x + factor y, y)."""
  return _transform(image, [1.0, factor, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0])


def shear_y(image, factor):
  """Shears along y: the output pixel (x, y) reads (x, y + factor x)."""
  return _transform(image, [1.0, 0.0, 0.0, factor, 1.0, 0.0, 0.0, 0.0])


def translate_x(image, pixels):
  """Moves the content right by `pixels` (float32 scalar)."""
  return _transform(image, [1.0, 0.0, -pixels, 0.0, 1.0, 0.0, 0.0, 0.0])


def translate_y(image, pixels):
  """Moves the content down by `pixels` (float32 scalar)."""
  return _transform(image, [1.0, 0.0, 0.0, 0.0, 1.0, -pixels, 0.0, 0.0])


def apply_op(image, name: str, magnitude, sign):
  """Applies one operation of `OPS` at a magnitude.

  Args:
    image: uint8 `[H, W, 3]`.
    name: a name in `OPS`.
    magnitude: float32 scalar (or float) in [0, 10].
    sign: float32 scalar, +1 or -1, for signed operations.

  Returns:
    uint8 `[H, W, 3]`.
  """
  level = tf.cast(magnitude, tf.float32) / MAX_MAGNITUDE
  side = tf.cast(tf.shape(image)[1 if name == "translate_x" else 0], tf.float32)
  enhance = 1.0 + 0.9 * level * sign
  ops = {
      "identity": lambda: image,
      "autocontrast": lambda: autocontrast(image),
      "equalize": lambda: equalize(image),
      "rotate": lambda: rotate(image, 30.0 * level * sign),
      "solarize": lambda: solarize(image, 256.0 - 256.0 * level),
      "color": lambda: color(image, enhance),
      "posterize": lambda: posterize(
          image, 8 - tf.cast(tf.floor(4.0 * level), tf.int32)),
      "contrast": lambda: contrast(image, enhance),
      "brightness": lambda: brightness(image, enhance),
      "sharpness": lambda: sharpness(image, enhance),
      "shear_x": lambda: shear_x(image, 0.3 * level * sign),
      "shear_y": lambda: shear_y(image, 0.3 * level * sign),
      "translate_x": lambda: translate_x(image, 0.45 * level * side * sign),
      "translate_y": lambda: translate_y(image, 0.45 * level * side * sign),
  }
  if name not in ops:
    raise ValueError(f"unknown RandAugment op {name!r}; known: {OPS}")
  return ops[name]()


# One traced function serves every image size, pipeline and call: building
# the 14-branch graph costs about a second, which would otherwise be paid
# per operation and per pipeline.
@tf.function(autograph=False, input_signature=[
    tf.TensorSpec((None, None, 3), tf.uint8), tf.TensorSpec((), tf.int32),
    tf.TensorSpec((), tf.float32), tf.TensorSpec((), tf.float32)])
def _apply_chosen_op(image, choice, magnitude, sign):
  return tf.switch_case(choice, [
      (lambda name=name: apply_op(image, name, magnitude, sign))
      for name in OPS])


def randaugment(image, num_ops: int, magnitude: float, seed):
  """Applies `num_ops` random operations of `OPS` at `magnitude`.

  Args:
    image: uint8 `[H, W, 3]` with static shape.
    num_ops: operations per image, >= 1.
    magnitude: in [0, 10].
    seed: int64 `[2]` stateless seed.

  Returns:
    uint8 `[H, W, 3]`, same shape.
  """
  seeds = augment.split_seed(seed, 2 * num_ops)
  shape = image.shape
  for i in range(num_ops):
    choice = tf.random.stateless_uniform([], seeds[2 * i], 0, len(OPS),
                                         dtype=tf.int32)
    sign = tf.where(tf.random.stateless_uniform([], seeds[2 * i + 1]) < 0.5,
                    -1.0, 1.0)
    image = tf.ensure_shape(
        _apply_chosen_op(image, choice, tf.constant(magnitude, tf.float32),
                         sign), shape)
  return image
