"""Plain-domain augmentations: shapes, uint8 range, determinism, PIL parity."""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageEnhance, ImageOps

from etcjax.data import augment
from etcjax.data import randaugment

from .conftest import synthetic_images


def _seed(a, b=0):
  return tf.constant([a, b], tf.int64)


@pytest.fixture(scope="module")
def image():
  return synthetic_images(1, size=32)[0]


@pytest.fixture(scope="module")
def photo():
  # Smooth gradients plus noise: a natural-looking histogram for PIL parity.
  y, x = np.mgrid[0:40, 0:48]
  base = np.stack([x * 5, y * 6, (x + y) * 2], -1).astype(np.float64)
  noise = np.random.default_rng(0).normal(0, 8, base.shape)
  return np.clip(base + noise + 20, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("mode", augment.CROP_MODES)
@pytest.mark.parametrize("train", [True, False])
def test_crop_modes_give_the_model_size(image, mode, train):
  source = image if mode == "none" else np.repeat(image, 2, axis=0)  # 64x32
  out = augment.crop(tf.constant(source), mode, 32, _seed(1), train).numpy()
  assert out.shape == (32, 32, 3) and out.dtype == np.uint8
  if mode == "none":
    np.testing.assert_array_equal(out, image)


def test_crop_none_refuses_other_sizes(image):
  with pytest.raises(tf.errors.InvalidArgumentError, match="crop='none'"):
    augment.crop(tf.constant(image[:16]), "none", 32, _seed(0), True)
  with pytest.raises(ValueError, match="augment.crop"):
    augment.crop(tf.constant(image), "center", 32, _seed(0), True)


def test_random_crop_pad_is_a_window_of_the_padded_image(image):
  padded = np.pad(image, ((4, 4), (4, 4), (0, 0)))
  offsets = set()
  for s in range(20):
    out = augment.random_crop_pad(tf.constant(image), 32, _seed(s)).numpy()
    matches = [(dy, dx) for dy in range(9) for dx in range(9)
               if np.array_equal(padded[dy:dy + 32, dx:dx + 32], out)]
    assert matches, "crop is not a 32x32 window of the 4-padded image"
    offsets.add(matches[0])
  assert len(offsets) > 5


def test_flip_and_determinism(image):
  flips = [np.array_equal(augment.random_flip(tf.constant(image), _seed(s)).numpy(),
                          image[:, ::-1]) for s in range(20)]
  assert 3 < sum(flips) < 17
  a = augment.random_resized_crop(tf.constant(image), 32, _seed(5, 9)).numpy()
  b = augment.random_resized_crop(tf.constant(image), 32, _seed(5, 9)).numpy()
  c = augment.random_resized_crop(tf.constant(image), 32, _seed(5, 10)).numpy()
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def test_random_erasing_replaces_one_box(image):
  areas = []
  for s in range(20):
    out = augment.random_erasing(tf.constant(image), 1.0, _seed(s)).numpy()
    assert out.shape == image.shape and out.dtype == np.uint8
    changed = (out != image).any(-1)
    rows, cols = np.nonzero(changed)
    assert len(rows), "probability 1 must erase"
    box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    # Noise rarely equals the original pixel; the box is almost all changed.
    assert changed.sum() > 0.9 * box
    areas.append(box / image[..., 0].size)
  assert min(areas) >= 0.015 and max(areas) <= 0.36
  assert len(set(areas)) > 5
  for s in range(5):
    out = augment.random_erasing(tf.constant(image), 0.0, _seed(s)).numpy()
    np.testing.assert_array_equal(out, image)


# ---------------------------------------------------------------- RandAugment


def test_parse_spec():
  assert randaugment.parse("") is None
  assert randaugment.parse("n2-m9") == (2, 9.0)
  assert randaugment.parse("n1-m0.5") == (1, 0.5)
  for bad in ("n2m9", "rand-m9-n2", "n0-m5", "n2-m11"):
    with pytest.raises(ValueError, match="randaugment"):
      randaugment.parse(bad)


@pytest.mark.parametrize("name", randaugment.OPS)
def test_every_op_keeps_shape_and_range(photo, name):
  for sign in (-1.0, 1.0):
    out = randaugment.apply_op(tf.constant(photo), name, 9.0, sign).numpy()
    assert out.shape == photo.shape and out.dtype == np.uint8


@pytest.mark.parametrize("name", [n for n in randaugment.OPS
                                  if n not in ("autocontrast", "equalize")])
def test_magnitude_zero_is_identity(photo, name):
  out = randaugment.apply_op(tf.constant(photo), name, 0.0, 1.0).numpy()
  np.testing.assert_array_equal(out, photo)


@pytest.mark.parametrize("name,ours,pil", [
    ("autocontrast", randaugment.autocontrast, ImageOps.autocontrast),
    ("equalize", randaugment.equalize, ImageOps.equalize),
    ("solarize", lambda x: randaugment.solarize(x, 100.0),
     lambda x: ImageOps.solarize(x, 100)),
    ("posterize", lambda x: randaugment.posterize(x, 5),
     lambda x: ImageOps.posterize(x, 5)),
    ("color", lambda x: randaugment.color(x, 1.7),
     lambda x: ImageEnhance.Color(x).enhance(1.7)),
    ("contrast", lambda x: randaugment.contrast(x, 0.4),
     lambda x: ImageEnhance.Contrast(x).enhance(0.4)),
    ("brightness", lambda x: randaugment.brightness(x, 1.3),
     lambda x: ImageEnhance.Brightness(x).enhance(1.3)),
    ("sharpness", lambda x: randaugment.sharpness(x, 1.8),
     lambda x: ImageEnhance.Sharpness(x).enhance(1.8)),
])
def test_point_ops_match_pil(photo, name, ours, pil):
  got = ours(tf.constant(photo)).numpy()
  want = np.asarray(pil(Image.fromarray(photo)))
  np.testing.assert_array_equal(got, want, err_msg=name)


def test_geometry(photo):
  square = photo[:40, :40]
  rotated = randaugment.rotate(tf.constant(square), 90.0).numpy()
  assert (np.array_equal(rotated, np.rot90(square, 1))
          or np.array_equal(rotated, np.rot90(square, -1)))
  moved = randaugment.translate_x(tf.constant(photo), 5.0).numpy()
  np.testing.assert_array_equal(moved[:, 5:], photo[:, :-5])
  assert (moved[:, :5] == 128).all()
  moved = randaugment.translate_y(tf.constant(photo), -3.0).numpy()
  np.testing.assert_array_equal(moved[:-3], photo[3:])
  sheared = randaugment.shear_x(tf.constant(photo), 0.25).numpy()
  np.testing.assert_array_equal(sheared[0], photo[0])  # row 0 does not move
  assert not np.array_equal(sheared, photo)


def test_randaugment_is_deterministic_and_varied(photo):
  outs = [randaugment.randaugment(tf.constant(photo), 2, 9.0, _seed(s)).numpy()
          for s in range(12)]
  again = randaugment.randaugment(tf.constant(photo), 2, 9.0, _seed(3)).numpy()
  np.testing.assert_array_equal(outs[3], again)
  assert all(o.shape == photo.shape and o.dtype == np.uint8 for o in outs)
  assert len({o.tobytes() for o in outs}) > 8
