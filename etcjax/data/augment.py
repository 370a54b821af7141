"""Per-example plain-domain augmentations in TensorFlow: crops, flip, erasing.

Every function takes one uint8 image `[H, W, C]` and returns uint8, so
augmentations compose and the result is what encryption (on the host or on
the device) sees. Randomness comes only from stateless ops seeded by the
`seed` argument, an int64 `[2]` tensor that the pipeline derives from (data
seed, position of the example in the global stream): a resumed run, or a
run on a different number of hosts, augments every example identically.
"""

from __future__ import annotations

import math

import tensorflow as tf

from etcjax.data import errors

CROP_MODES = ("random_crop_pad", "random_resized_crop", "resize", "none")

# Random erasing (Zhong et al. 2020): erased area as a fraction of the image,
# and the box's aspect ratio range (sampled log-uniformly).
ERASE_AREA = (0.02, 1.0 / 3.0)
ERASE_ASPECT = (0.3, 1.0 / 0.3)
_ERASE_ATTEMPTS = 10


def split_seed(seed, num: int):
  """Derives `num` independent stateless seeds from one (int64 `[2]`).

  Returns:
    int64 `[num, 2]`.
  """
  return tf.random.experimental.stateless_split(seed, num)


def to_uint8(image):
  """Rounds and clips float pixel values in [0, 255] to uint8."""
  return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def resize(image, size: int):
  """Resizes to `size x size` (aspect ratio not kept), bilinear, antialiased.

  Args:
    image: uint8 `[H, W, C]`.
    size: output side.

  Returns:
    uint8 `[size, size, C]`; the input itself when it already has that size.
  """
  shape = tf.shape(image)

  def _resize():
    return to_uint8(tf.image.resize(image, (size, size), antialias=True))

  out = tf.cond((shape[0] == size) & (shape[1] == size), lambda: image,
                _resize)
  return tf.ensure_shape(out, (size, size, image.shape[-1]))


def random_crop_pad(image, size: int, seed):
  """Pads by size // 8 (4 pixels at 32) with zeros and crops size x size.

  The standard CIFAR augmentation; images of another size are first
  resized to `size x size`.

  Args:
    image: uint8 `[H, W, C]`.
    size: output side.
    seed: int64 `[2]` stateless seed.

  Returns:
    uint8 `[size, size, C]`.
  """
  image = resize(image, size)
  pad = size // 8
  padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
  return tf.image.stateless_random_crop(
      padded, (size, size, image.shape[-1]), seed)


def random_resized_crop(image, size: int, seed, scale=(0.08, 1.0),
                        ratio=(3.0 / 4.0, 4.0 / 3.0)):
  """Inception-style crop: random area and aspect ratio, resized to size.

  Args:
    image: uint8 `[H, W, C]`.
    size: output side.
    seed: int64 `[2]` stateless seed.
    scale: range of the crop's area as a fraction of the image's.
    ratio: range of the crop's aspect ratio (width / height).

  Returns:
    uint8 `[size, size, C]`.
  """
  begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
      tf.shape(image), bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
      seed=seed, min_object_covered=0.0, aspect_ratio_range=ratio,
      area_range=scale, max_attempts=10, use_image_if_no_bounding_boxes=True)
  window = tf.slice(image, begin, crop_size)
  window.set_shape((None, None, image.shape[-1]))
  return resize(window, size)


def crop(image, mode: str, size: int, seed, train: bool):
  """Brings an image to `size x size` as the crop mode says.

  Evaluation (train=False) only resizes; 'none' accepts images of exactly
  `size x size` only.

  Args:
    image: uint8 `[H, W, C]`.
    mode: one of `CROP_MODES`.
    size: output side.
    seed: int64 `[2]` stateless seed (unused for eval).
    train: training (random crops) or evaluation.

  Returns:
    uint8 `[size, size, C]`.
  """
  if mode not in CROP_MODES:
    raise errors.DataError(
        f"augment.crop must be one of {CROP_MODES}, got {mode!r}")
  if mode == "none":
    shape = tf.shape(image)
    check = tf.debugging.Assert(
        tf.reduce_all(shape[:2] == size),
        [f"augment.crop='none' needs images of exactly {size}x{size} "
         "(config.image_size; set augment.crop='resize' to resize them), got "
         "an image of height and width", shape[:2]])
    with tf.control_dependencies([check]):
      return tf.ensure_shape(tf.identity(image), (size, size, image.shape[-1]))
  if not train or mode == "resize":
    return resize(image, size)
  if mode == "random_crop_pad":
    return random_crop_pad(image, size, seed)
  return random_resized_crop(image, size, seed)


def random_flip(image, seed):
  """Flips left-right with probability 1/2.

  Args:
    image: uint8 `[H, W, C]`.
    seed: int64 `[2]` stateless seed.

  Returns:
    uint8 `[H, W, C]`.
  """
  return tf.image.stateless_random_flip_left_right(image, seed)


def random_erasing(image, probability: float, seed):
  """Random erasing: with some probability, fills a random box with noise.

  The box covers 2% to 1/3 of the image with aspect ratio in [0.3, 3.3]
  (up to 10 draws until one fits); its pixels get independent uniform
  random values.

  Args:
    image: uint8 `[H, W, C]`.
    probability: chance in [0, 1] of erasing.
    seed: int64 `[2]` stateless seed.

  Returns:
    uint8 `[H, W, C]`.
  """
  seeds = split_seed(seed, 5)
  shape = tf.shape(image)
  height, width = shape[0], shape[1]
  area = tf.cast(height * width, tf.float32)
  target = tf.random.stateless_uniform(
      [_ERASE_ATTEMPTS], seeds[0], ERASE_AREA[0], ERASE_AREA[1]) * area
  aspect = tf.exp(tf.random.stateless_uniform(
      [_ERASE_ATTEMPTS], seeds[1], math.log(ERASE_ASPECT[0]),
      math.log(ERASE_ASPECT[1])))
  box_h = tf.cast(tf.round(tf.sqrt(target * aspect)), tf.int32)
  box_w = tf.cast(tf.round(tf.sqrt(target / aspect)), tf.int32)
  fits = (box_h < height) & (box_w < width) & (box_h > 0) & (box_w > 0)
  first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
  box_h, box_w = box_h[first], box_w[first]
  corner = tf.random.stateless_uniform([2], seeds[2], 0.0, 1.0)
  top = tf.cast(corner[0] * tf.cast(tf.maximum(height - box_h + 1, 1),
                                    tf.float32), tf.int32)
  left = tf.cast(corner[1] * tf.cast(tf.maximum(width - box_w + 1, 1),
                                     tf.float32), tf.int32)
  rows = tf.range(height)[:, None]
  cols = tf.range(width)[None, :]
  inside = ((rows >= top) & (rows < top + box_h) &
            (cols >= left) & (cols < left + box_w))
  erase = (tf.random.stateless_uniform([], seeds[3]) < probability) & \
      tf.reduce_any(fits)
  noise = tf.cast(tf.random.stateless_uniform(
      shape, seeds[4], 0, 256, dtype=tf.int32), tf.uint8)
  return tf.where(erase & inside[:, :, None], noise, image)
