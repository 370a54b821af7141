"""Host-side (tf.data) encryption equals the jitted `encryption.apply`."""

import numpy as np
import pytest
import tensorflow as tf

from etcjax import encryption
from etcjax.data import host_encryption
from etcjax.encryption import jpeg
from etcjax.encryption import plans

from .conftest import synthetic_images


@pytest.mark.parametrize("scheme", ["etc", "etc_gray", "block_common", "le",
                                    "ele", "pe"])
def test_encryptor_matches_apply_bit_for_bit(scheme):
  images = synthetic_images(3, size=32)
  images[0, :8, :8] = [0, 0, 255]  # saturated colours: YCbCr rounding edges
  images[1, :8, :8] = [255, 0, 0]
  plan = encryption.make_plan(encryption.generate_key(), scheme, (32, 32, 3))
  encrypt = tf.function(host_encryption.Encryptor(plan))
  got = np.stack([encrypt(tf.constant(image)).numpy() for image in images])
  np.testing.assert_array_equal(got, np.asarray(encryption.apply(plan, images)))


def test_ycbcr_twin_matches_on_many_colours():
  # 2^20 random colours (of 2^24; all of them take seconds) plus the
  # extremes of every channel.
  codes = np.random.default_rng(0).integers(0, 1 << 24, 1 << 20)
  colours = np.stack([codes >> 16, (codes >> 8) & 255, codes & 255], -1)
  corners = np.array(np.meshgrid([0, 255], [0, 255], [0, 255])).reshape(3, -1).T
  colours = np.concatenate([colours, corners]).astype(np.uint8)[None]
  np.testing.assert_array_equal(
      host_encryption.rgb_to_ycbcr(tf.constant(colours)).numpy(),
      np.asarray(plans.rgb_to_ycbcr(colours)))


@pytest.mark.parametrize("channels,quality", [(3, 85), (3, 80), (1, 90)])
def test_tf_jpeg_round_trip_equals_the_jpeg_module(channels, quality):
  images = synthetic_images(2, size=32)
  if channels == 1:
    images = images[..., :1]
  got = np.stack([host_encryption.jpeg_round_trip(tf.constant(x), quality).numpy()
                  for x in images])
  np.testing.assert_array_equal(got, jpeg.jpeg_round_trip(images, quality))


def test_check_jpeg():
  key = encryption.generate_key()
  host_encryption.check_jpeg(encryption.make_plan(key, "etc", (32, 32, 3)), 85)
  with pytest.raises(ValueError, match="not JPEG-compliant"):
    host_encryption.check_jpeg(encryption.make_plan(key, "pe", (32, 32, 3)), 85)
  with pytest.raises(ValueError, match="multiple of 16"):
    host_encryption.check_jpeg(
        encryption.make_plan(key, "etc", (32, 32, 3), block_size=8), 85)
  with pytest.raises(ValueError, match=r"\[1, 100\]"):
    host_encryption.check_jpeg(encryption.make_plan(key, "etc", (32, 32, 3)), 0)
