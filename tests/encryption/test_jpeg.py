"""Tests of JPEG/PNG coding and the JPEG-compliance rule of EtC."""

import glob
import io
import os

import numpy as np
from PIL import Image, JpegImagePlugin
import pytest

from etcjax import encryption
from etcjax.data import image_folder
from etcjax.encryption import jpeg

KEY = bytes(range(32))


def _smooth_images(n, h, w, seed=0):
  """Natural-ish uint8 RGB images: smooth gradients plus mild noise."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
  images = []
  for _ in range(n):
    a, b, c = rng.uniform(-1, 1, 3)
    base = np.stack([128 + 100 * np.sin(3 * a * yy + 2 * b * xx + k) for k in
                     (0, 2, 4)], axis=-1) + 40 * c * yy[..., None]
    images.append(base + rng.normal(0, 6, base.shape))
  return np.clip(np.round(images), 0, 255).astype(np.uint8)


def psnr(a, b):
  mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
  return 10 * np.log10(255.0**2 / mse)


# --------------------------------------------------------------------------
# The compliance rule.


@pytest.mark.parametrize("scheme,block_size,subsampling", [
    ("etc", 16, "4:2:0"), ("etc", 32, "4:2:0"), ("etc", 8, "4:4:4"),
    ("etc", 16, "4:4:4"), ("etc", None, "4:2:0"), ("etc_gray", 8, "4:2:0"),
    ("etc_gray", 8, "4:4:4"), ("block_common", 16, "4:2:0"),
])
def test_compliant_combinations_pass(scheme, block_size, subsampling):
  jpeg.check_jpeg_compatible(scheme, block_size, subsampling)


def test_block_8_etc_with_420_is_rejected_with_a_useful_message():
  with pytest.raises(ValueError, match=r"multiple of 16.*|4:4:4") as info:
    jpeg.check_jpeg_compatible("etc", 8, "4:2:0")
  message = str(info.value)
  assert "block size 8" in message and "multiple of 16" in message
  assert "4:4:4" in message  # tells the user what would work


@pytest.mark.parametrize("scheme,block_size,subsampling,expected", [
    ("etc", 12, "4:4:4", "multiple of 8"),
    ("etc", 24, "4:2:0", "multiple of 16"),
    ("block_common", 8, "4:2:0", "multiple of 16"),
    ("etc_gray", 4, "4:4:4", "grayscale JPEG codes 8x8 blocks"),
])
def test_misaligned_blocks_are_rejected(scheme, block_size, subsampling,
                                        expected):
  with pytest.raises(ValueError, match=expected):
    jpeg.check_jpeg_compatible(scheme, block_size, subsampling)


@pytest.mark.parametrize("scheme", ["le", "ele", "pe", "pe_per_image"])
def test_baselines_need_explicit_permission(scheme):
  with pytest.raises(ValueError, match="not JPEG-compliant.*PNG"):
    jpeg.check_jpeg_compatible(scheme, None, "4:2:0")
  jpeg.check_jpeg_compatible(scheme, None, "4:2:0", allow_noncompliant=True)


def test_bad_subsampling_and_scheme_are_rejected():
  with pytest.raises(ValueError, match="chroma subsampling must be one of"):
    jpeg.check_jpeg_compatible("etc", 16, "4:2:2")
  with pytest.raises(ValueError, match="unknown scheme"):
    jpeg.check_jpeg_compatible("rot13", 16, "4:2:0")


def test_mcu_size():
  assert jpeg.mcu_size("4:2:0") == 16
  assert jpeg.mcu_size("4:4:4") == 8
  assert jpeg.mcu_size(None, channels=1) == 8


# --------------------------------------------------------------------------
# Encoding and decoding.


def test_png_round_trip_is_exact_for_rgb_and_gray():
  rgb = np.random.default_rng(0).integers(0, 256, (3, 16, 24, 3), np.uint8)
  gray = rgb[..., :1].copy()
  for images in (rgb, gray):
    files = jpeg.encode_png(images)
    assert len(files) == 3 and all(f[:8] == b"\x89PNG\r\n\x1a\n" for f in files)
    np.testing.assert_array_equal(jpeg.decode(files), images)


def test_jpeg_settings_reach_the_file():
  images = _smooth_images(2, 32, 48)
  for subsampling, code in (("4:2:0", 2), ("4:4:4", 0)):
    data = jpeg.encode_jpeg(images, 85, subsampling)[0]
    with Image.open(io.BytesIO(data)) as im:
      assert im.format == "JPEG" and im.mode == "RGB"
      assert JpegImagePlugin.get_sampling(im) == code
  small = sum(map(len, jpeg.encode_jpeg(images, 30)))
  large = sum(map(len, jpeg.encode_jpeg(images, 95)))
  assert small < large
  out = jpeg.jpeg_round_trip(images, 95)
  assert out.shape == images.shape and out.dtype == np.uint8
  assert psnr(out, images) > 30


def test_single_channel_images_become_grayscale_jpegs():
  images = _smooth_images(2, 16, 48)[..., :1]
  data = jpeg.encode_jpeg(images, 90)[0]
  with Image.open(io.BytesIO(data)) as im:
    assert im.mode == "L" and im.size == (48, 16)
  out = jpeg.jpeg_round_trip(images, 90)
  assert out.shape == images.shape
  assert psnr(out, images) > 30
  assert jpeg.decode([data], channels=3).shape == (1, 16, 48, 3)


@pytest.mark.parametrize("images,error,match", [
    (np.zeros((2, 8, 8, 3), np.float32), TypeError, "uint8"),
    (np.zeros((8, 8, 3), np.uint8), ValueError, r"\[N, H, W, C\]"),
    (np.zeros((1, 8, 8, 2), np.uint8), ValueError, "C = 1"),
])
def test_bad_batches_are_rejected(images, error, match):
  with pytest.raises(error, match=match):
    jpeg.encode_jpeg(images, 85)
  with pytest.raises(error, match=match):
    jpeg.encode_png(images)


@pytest.mark.parametrize("quality", [0, 101, 85.0, True])
def test_bad_quality_is_rejected(quality):
  with pytest.raises(ValueError, match=r"quality must be an integer in \[1, 100\]"):
    jpeg.encode_jpeg(np.zeros((1, 8, 8, 3), np.uint8), quality)


def test_decode_errors_name_the_file():
  good = jpeg.encode_jpeg(np.zeros((1, 16, 16, 3), np.uint8), 85)[0]
  for bad in (b"not an image", good[:40]):
    with pytest.raises(ValueError, match="cannot decode file 1 of the batch"):
      jpeg.decode([good, bad])
  other = jpeg.encode_png(np.zeros((1, 8, 8, 3), np.uint8))[0]
  with pytest.raises(ValueError, match="one shape"):
    jpeg.decode([good, other])
  with pytest.raises(ValueError, match="at least one"):
    jpeg.decode([])
  with pytest.raises(ValueError, match="codec must be one of"):
    jpeg.encode(np.zeros((1, 8, 8, 3), np.uint8), "webp")


# --------------------------------------------------------------------------
# Compliance: what the rule is for.


@pytest.mark.parametrize("subsampling", ["4:2:0", "4:4:4"])
def test_aligned_block_scrambling_commutes_with_jpeg_exactly(subsampling):
  # Scrambling whole MCUs permutes whole DCT blocks and chroma groups, so
  # JPEG then decryption equals JPEG of the plain image bit for bit (given
  # the chroma-replicating decoder).
  images = _smooth_images(2, 64, 96)
  enc = encryption.encrypt(images, KEY, "etc", 16, steps=["scramble"])
  assert not np.array_equal(enc, images)
  decrypted = encryption.decrypt(jpeg.jpeg_round_trip(enc, 85, subsampling),
                                 KEY, "etc", 16, steps=["scramble"])
  np.testing.assert_array_equal(decrypted,
                                jpeg.jpeg_round_trip(images, 85, subsampling))


def test_misaligned_block_scrambling_does_not_commute():
  # The counterpart: block 8 under 4:2:0 splits chroma MCUs, which the rule
  # above rejects for good reason.
  images = _smooth_images(2, 64, 96)
  enc = encryption.encrypt(images, KEY, "etc", 8, steps=["scramble"])
  decrypted = encryption.decrypt(jpeg.jpeg_round_trip(enc, 85, "4:2:0"),
                                 KEY, "etc", 8, steps=["scramble"])
  plain_jpeg = jpeg.jpeg_round_trip(images, 85, "4:2:0")
  assert psnr(decrypted, images) < psnr(plain_jpeg, images) - 1.0


def _psnr_gap(images, fancy_upsampling=False):
  """Mean PSNR(decrypt(jpeg(encrypt(x))), x) - PSNR(jpeg(x), x), QF 85, 4:2:0."""
  gaps = []
  for i in range(len(images)):
    x = images[i:i + 1]
    enc = encryption.encrypt(x, KEY, "etc", 16)
    dec = encryption.decrypt(
        jpeg.jpeg_round_trip(enc, 85, "4:2:0", fancy_upsampling), KEY, "etc", 16)
    plain = jpeg.jpeg_round_trip(x, 85, "4:2:0", fancy_upsampling)
    gaps.append(psnr(dec, x) - psnr(plain, x))
  return float(np.mean(gaps))


def _imagenette_sample(imagenette_dir, n):
  paths = sorted(glob.glob(os.path.join(imagenette_dir, "val", "*", "*.JPEG")))
  assert len(paths) >= n, f"expected Imagenette images under {imagenette_dir}"
  step = len(paths) // n
  return np.stack([image_folder.read_image(p) for p in paths[::step][:n]])


def test_etc_jpeg_error_matches_plain_jpeg_on_imagenette(imagenette_dir):
  gap = _psnr_gap(_imagenette_sample(imagenette_dir, 8))
  assert abs(gap) < 0.5, gap


def test_etc_jpeg_error_matches_plain_jpeg_on_cifar10(tfds_data_dir):
  from etcjax.data import tfds_source  # pylint: disable=g-import-not-at-top
  images, _, _ = tfds_source.load_tfds("cifar10", "test[:64]", tfds_data_dir)
  gap = _psnr_gap(images)
  assert abs(gap) < 0.5, gap


def test_fancy_upsampling_breaks_compliance(imagenette_dir):
  # Why `decode` replicates chroma: libjpeg's default interpolation mixes
  # chroma of neighbouring, unrelated encryption blocks.
  images = _imagenette_sample(imagenette_dir, 8)
  assert _psnr_gap(images, fancy_upsampling=True) < -1.0
