"""Knowledge of the data distribution, and the ambiguities it resolves.

Key-less reconstructions (FR, jigsaw) are determined only up to a global
transform: an image whose colours are all inverted, or whose channels are
all permuted, or that is rotated as a whole, is as smooth as the original.
The adversary knows the data distribution (plain images from the same
source), so it picks the global transform under which the reconstruction
looks most like those images: `ImagePrior` scores colours (a 16^3-bin RGB
histogram) and layout (per-cell mean colours on a coarse grid, e.g. skies
on top), both log-likelihoods fitted to plain images. This prior is weak:
among EtC's 96 global transforms of a plain training image it picked the
right one for 5% of CIFAR-10 and 12% of Imagenette images (12% and 27% up
to a left-right mirror, which natural-image statistics cannot tell apart),
so the jigsaw table also reports what a perfect prior would reach.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import List, Sequence, Tuple

import numpy as np

from etcjax.encryption import schemes

# A photometric transform: (channel order, per-channel XOR mask of 0/255).
Photometric = Tuple[Tuple[int, ...], Tuple[int, ...]]

COLOUR_BITS = 4  # Colour histogram bins per channel: 2^4.
_GRID = 4  # Layout cells per side.


def photometric_transforms(channels: int, colour: bool, inversion: bool,
                           per_channel_inversion: bool) -> List[Photometric]:
  """The photometric transforms a scheme's steps make possible.

  Args:
    channels: 3 (RGB) or 1 (grayscale representation).
    colour: whether channel orders are shuffled.
    inversion: whether values are inverted (negative-positive).
    per_channel_inversion: invert channels independently (PE) rather than
      all together (EtC).

  Returns:
    The transforms, identity first.
  """
  orders = (list(itertools.permutations(range(channels)))
            if colour and channels > 1 else [tuple(range(channels))])
  if not inversion:
    masks = [(0,) * channels]
  elif per_channel_inversion:
    masks = [tuple(255 * b for b in bits)
             for bits in itertools.product((0, 1), repeat=channels)]
  else:
    masks = [(0,) * channels, (255,) * channels]
  return [(o, m) for m in masks for o in orders]


def apply_photometric(images: np.ndarray, transform: Photometric) -> np.ndarray:
  """Applies a photometric transform to uint8 `[..., C]` values."""
  order, mask = transform
  return images[..., list(order)] ^ np.asarray(mask, np.uint8)


def geometric_transforms(shape: Tuple[int, int], rotate_flip: bool) -> List[int]:
  """Square symmetries (`schemes.square_transform` codes) of a whole image.

  Args:
    shape: `(H, W)` of the image.
    rotate_flip: whether the scheme rotates/flips blocks (else only the
      identity is possible).

  Returns:
    Symmetry codes in [0, 8) that keep an `H x W` image's shape.
  """
  if not rotate_flip:
    return [0]
  if shape[0] == shape[1]:
    return list(range(schemes.NUM_SQUARE_TRANSFORMS))
  return [t for t in range(schemes.NUM_SQUARE_TRANSFORMS) if t % 2 == 0]


@dataclasses.dataclass
class ImagePrior:
  """Log-likelihood of RGB images under simple statistics of a dataset.

  Attributes:
    colour_logp: float64 `[16^3]`, log-probability of each colour bin.
    cell_mean: float64 `[4, 4, 3]`, mean colour of every layout cell.
    cell_std: float64 `[4, 4, 3]`, its standard deviation over images.
  """

  colour_logp: np.ndarray
  cell_mean: np.ndarray
  cell_std: np.ndarray

  @classmethod
  def fit(cls, images: np.ndarray) -> "ImagePrior":
    """Fits the statistics to plain images of the data distribution.

    Args:
      images: uint8 `[M, H, W, 3]`, H and W multiples of 4.

    Returns:
      The prior.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or len(images) < 2:
      raise ValueError(
          f"a prior needs at least 2 RGB images [M, H, W, 3], got {images.shape}")
    counts = np.bincount(_colour_bins(_sample(images)).reshape(-1),
                         minlength=1 << (3 * COLOUR_BITS)).astype(np.float64)
    logp = np.log((counts + 1.0) / (counts.sum() + counts.size))
    cells = _cell_means(images)
    return cls(logp, cells.mean(0), cells.std(0) + 4.0)

  def colour_log_likelihood(self, pixels: np.ndarray) -> np.ndarray:
    """Log-probability of every pixel's colour bin.

    Args:
      pixels: uint8 `[..., 3]` RGB values.

    Returns:
      float64 `[...]`.
    """
    return self.colour_logp[_colour_bins(pixels)]

  def score(self, images: np.ndarray) -> np.ndarray:
    """Log-likelihood of every image (higher: more like the dataset).

    Args:
      images: uint8 `[K, H, W, 3]`, H and W multiples of 4.

    Returns:
      float64 `[K]`: the mean colour log-likelihood per pixel, weighted as
      48 observations, plus the Gaussian log-likelihood of the 48 layout
      cell means. (Pixels are far from independent, so weighting each one
      as an observation would let colours drown out layout.)
    """
    colour = self.colour_log_likelihood(_sample(images)).mean(axis=(1, 2))
    z = (_cell_means(images) - self.cell_mean) / self.cell_std
    layout = -0.5 * np.sum(z.reshape(len(images), -1) ** 2, axis=1)
    return colour * self.cell_mean.size + layout


def _sample(images: np.ndarray) -> np.ndarray:
  # Colour statistics of large images from a regular subsample: 4x fewer
  # pixels per side changes them little and scoring much faster.
  step = max(1, min(images.shape[1:3]) // 64)
  return images[:, ::step, ::step]


def _colour_bins(images: np.ndarray) -> np.ndarray:
  q = np.asarray(images, np.int64) >> (8 - COLOUR_BITS)
  return (q[..., 0] << (2 * COLOUR_BITS)) | (q[..., 1] << COLOUR_BITS) | q[..., 2]


def _cell_means(images: np.ndarray) -> np.ndarray:
  n, h, w, c = images.shape
  if h % _GRID or w % _GRID:
    raise ValueError(f"image sides must be multiples of {_GRID}, got {h}x{w}")
  cells = np.asarray(images, np.float64).reshape(
      n, _GRID, h // _GRID, _GRID, w // _GRID, c)
  return cells.mean(axis=(2, 4))


def resolve_global(candidates: Sequence[np.ndarray], prior: ImagePrior,
                   to_rgb) -> int:
  """Index of the candidate reconstruction the prior finds most likely.

  Args:
    candidates: K uint8 images (one reconstruction under K global
      transforms), each in the encrypted representation's layout.
    prior: the adversary's `ImagePrior`.
    to_rgb: maps a uint8 `[K, ...]` batch to RGB `[K, H, W, 3]`.

  Returns:
    The index of the best candidate.
  """
  return int(np.argmax(prior.score(to_rgb(np.stack(candidates)))))

