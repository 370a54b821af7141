"""FR-Attack (Chang & Case 2020): undoing negative-positive without the key.

Negative-positive transformation maps a value p to p ^ 255, which flips its
leading bit. The basic attack folds every value so that its leading bit is
0 (p -> p ^ 255 when p >= 128): values that were below 128 come back
exactly, and the others as their mirror image, so edges and shapes
reappear wherever the scheme leaves pixels in place (PE, LE; EtC only
within its scrambled blocks).

The advanced variant decodes unit by unit (pixels for PE, blocks for EtC)
in raster wavefront order and gives each unit the colour order and
inversion under which it continues its already decoded top and left
neighbours most smoothly (pixels: closest to linear extrapolations of the
neighbours' gradients, with a small colour-prior term; blocks: smallest
step across the shared edges); the first unit's choice, and with it the global
colour order and inversion, is then resolved with the adversary's
knowledge of the data distribution (`priors.ImagePrior`). Against PE this
restores images up to rare local errors; against EtC the neighbours in the
scrambled layout are unrelated blocks, so it finds little.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import tqdm

from etcjax.encryption import plans
from etcjax.evaluation import visual_metrics
from etcjax.evaluation.attacks import priors
from etcjax.evaluation.attacks import threat_model

# Schemes the advanced variant understands: per-pixel (PE) or per-block
# (EtC) colour order and inversion, applied to unscrambled-in-place units.
ADVANCED_SCHEMES = ("pe", "pe_per_image", "etc")
# Weight of the colour prior against smoothness in the per-unit choice
# (smoothness in grey levels, the prior in nats); chosen on CIFAR-10
# training images against PE (10-40 did about equally well, 0 worse).
PRIOR_WEIGHT = 20.0


def fold(encrypted: np.ndarray) -> np.ndarray:
  """Sets the leading bit of every value to 0 by inverting values >= 128.

  Args:
    encrypted: uint8 array of any shape.

  Returns:
    uint8, same shape, values in [0, 127]; equal to the plain values
    wherever those were < 128 and only negative-positive (p ^ 255) and
    identity were applied.
  """
  encrypted = np.asarray(encrypted)
  if encrypted.dtype != np.uint8:
    raise TypeError(f"FR-Attack works on uint8 values, got {encrypted.dtype}")
  return np.where(encrypted >= 128, encrypted ^ 255, encrypted).astype(np.uint8)


def basic(context: threat_model.AttackContext) -> np.ndarray:
  """The basic FR-Attack on the attacked images.

  Args:
    context: the attack context (any scheme).

  Returns:
    uint8 `[N, H, W, 3]` reconstructions.
  """
  return visual_metrics.as_rgb(fold(context.encrypted), context.representation)


def _pixel_predictions(decoded, rows, cols):
  """Predictions of pixels (rows, cols) from decoded neighbours.

  Linear extrapolation from the two pixels to the left and the two above,
  and the planar prediction left + top - top-left: smooth images continue
  their gradients, which tells a value from its inversion even where it
  crosses mid-grey (where p and 255 - p are close).

  Args:
    decoded: int32 `[N, gh, gw, 1, 1, C]`, decoded so far.
    rows, cols: int `[m]`, pixels on the current wavefront.

  Returns:
    `(predictions, valid)`: float `[N, m, P, C]` and bool `[m, P]` for the
    P = 5 predictors (two-pixel left, two-pixel top, planar, left, top).
  """
  def at(dr, dc):
    r, c = rows - dr, cols - dc
    ok = (r >= 0) & (c >= 0)
    return decoded[:, np.maximum(r, 0), np.maximum(c, 0), 0, 0], ok
  left, ok_l = at(0, 1)
  left2, ok_l2 = at(0, 2)
  top, ok_t = at(1, 0)
  top2, ok_t2 = at(2, 0)
  top_left, ok_tl = at(1, 1)
  predictions = np.stack([2 * left - left2, 2 * top - top2,
                          left + top - top_left, left, top], axis=2)
  valid = np.stack([ok_l2, ok_t2, ok_tl, ok_l, ok_t], axis=1)
  return predictions, valid


def _decode_pixels(here, predictions, valid, transforms, prior,
                   prior_weight):
  """Picks every wavefront pixel's candidate transform (the unit = 1 case).

  The same choice as scoring every candidate image, computed per channel:
  a candidate puts source channel s, inverted or not, in output channel c,
  and both its smoothness cost and its colour bin are sums over output
  channels, so 3 x 3 x 2 per-channel terms give all K (up to 48)
  candidates' costs (8x less work than building the candidates).

  Args:
    here: uint8 `[N, m, C]`, the encrypted pixels.
    predictions: int `[N, m, P, C]` and `valid` bool `[m, P]`, from
      `_pixel_predictions`.
    transforms: the candidate `priors.Photometric` transforms.
    prior, prior_weight: as for `decode_units`.

  Returns:
    int32 `[N, m, C]`, every pixel under its cheapest candidate.
  """
  n, m, c = here.shape
  x = here.astype(np.int32)
  values = np.stack([x, 255 - x], axis=-1)  # [N, m, S, 2]: p, p ^ 255
  # [N, m, C, S, 2]: smoothness cost of source channel s (inverted or not)
  # in output channel c, summed over the valid predictors.
  per_channel = sum(
      np.abs(values[:, :, None] - predictions[:, :, p, :, None, None])
      * valid[None, :, p, None, None, None]
      for p in range(valid.shape[1]))
  # pick[k, c]: where candidate k's output channel c comes from in the
  # flattened (source channel, inverted) axis.
  pick = np.asarray([[2 * order[j] + (mask[j] != 0) for j in range(c)]
                     for order, mask in transforms])
  per_channel = per_channel.reshape(n, m, c, 2 * c)
  cost = sum(per_channel[:, :, j, pick[:, j]] for j in range(c))
  cost = cost / valid.sum(-1)[None, :, None]  # [N, m, K]
  flat = values.reshape(n, m, 2 * c)
  if prior is not None and prior_weight:
    # `priors._colour_bins` of every candidate, from per-channel bins.
    bins = flat >> (8 - priors.COLOUR_BITS)
    index = sum(bins[:, :, pick[:, j]] << (priors.COLOUR_BITS * (c - 1 - j))
                for j in range(c))
    cost = cost - prior_weight * prior.colour_logp[index]
  best = np.argmin(cost, axis=2)  # [N, m]
  return np.take_along_axis(flat, pick[best].reshape(n, m, c), axis=2)


def decode_units(encrypted: np.ndarray, unit: int,
                 transforms: Sequence[priors.Photometric],
                 progress: bool = False,
                 prior: Optional[priors.ImagePrior] = None,
                 prior_weight: float = 0.0) -> np.ndarray:
  """Per-unit photometric decoding by smoothness with decoded neighbours.

  Args:
    encrypted: uint8 `[N, H, W, 3]`.
    unit: unit side in pixels (1: pixels; B: blocks), dividing H and W.
    transforms: candidate `priors.Photometric` transforms; the first
      unit of every image keeps the first candidate.
    progress: show a progress bar over wavefronts.
    prior: a colour prior that adds `-prior_weight * log p(colour)` per
      pixel to every candidate's cost (None: smoothness only).
    prior_weight: its weight, in grey levels per nat.

  Returns:
    uint8 `[N, H, W, 3]`, every unit transformed by its chosen candidate.
  """
  n, h, w, c = encrypted.shape
  gh, gw = h // unit, w // unit
  units = encrypted.reshape(n, gh, unit, gw, unit, c).transpose(0, 1, 3, 2, 4, 5)
  decoded = np.zeros((n, gh, gw, unit, unit, c), np.int32)
  decoded[:, 0, 0] = priors.apply_photometric(units[:, 0, 0], transforms[0])
  for k in tqdm.trange(1, gh + gw - 1, desc="FR wavefront", leave=False,
                       disable=not progress):
    # Units on one anti-diagonal depend only on the previous ones.
    rows = np.arange(max(0, k - gw + 1), min(gh - 1, k) + 1)
    cols = k - rows
    here = units[:, rows, cols]
    if unit == 1:
      decoded[:, rows, cols, 0, 0] = _decode_pixels(
          here[:, :, 0, 0], *_pixel_predictions(decoded, rows, cols),
          transforms, prior, prior_weight)
      continue
    cand = np.stack([priors.apply_photometric(here, t) for t in transforms],
                    axis=2).astype(np.int32)  # [N, m, K, u, u, C]
    has_top, has_left = rows > 0, cols > 0
    # Bottom row of the unit above, right column of the unit to the left.
    top = decoded[:, np.maximum(rows - 1, 0), cols][:, :, -1]  # [N, m, u, C]
    left = decoded[:, rows, np.maximum(cols - 1, 0)][:, :, :, -1]
    cost = (np.abs(cand[:, :, :, 0] - top[:, :, None]).sum((-1, -2))
            * has_top[None, :, None]
            + np.abs(cand[:, :, :, :, 0] - left[:, :, None]).sum((-1, -2))
            * has_left[None, :, None])
    if prior is not None and prior_weight:
      # Colour likelihood per pixel, scaled like one boundary's worth of
      # smoothness cost (u pixels).
      cost = cost - prior_weight * unit * prior.colour_log_likelihood(
          cand).mean((-1, -2))
    best = np.argmin(cost, axis=2)  # [N, m]
    decoded[:, rows, cols] = np.take_along_axis(
        cand, best[:, :, None, None, None, None], axis=2)[:, :, 0]
  out = decoded.transpose(0, 1, 3, 2, 4, 5).reshape(n, h, w, c)
  return out.astype(np.uint8)


def advanced(context: threat_model.AttackContext,
             prior: Optional[priors.ImagePrior] = None,
             chunk: int = 256) -> np.ndarray:
  """The advanced FR-Attack.

  Args:
    context: the attack context; scheme in `ADVANCED_SCHEMES`.
    prior: the adversary's prior (fitted to `context.public_plain` when
      None).
    chunk: images decoded at once (bounds memory).

  Returns:
    uint8 `[N, H, W, 3]` reconstructions.
  """
  if context.scheme not in ADVANCED_SCHEMES:
    raise ValueError(
        f"the advanced FR-Attack applies to schemes {list(ADVANCED_SCHEMES)}, "
        f"not {context.scheme!r}")
  if context.representation != plans.PIXELS:
    raise ValueError(f"advanced FR-Attack needs pixel images, got {context.representation}")
  steps = context.steps_on()
  pixel_wise = context.scheme.startswith("pe")
  transforms = priors.photometric_transforms(
      3, colour="channel" in steps, inversion="negpos" in steps,
      per_channel_inversion=pixel_wise)
  unit = 1 if pixel_wise else context.block_size
  prior = prior or priors.ImagePrior.fit(context.public_plain)
  out = []
  for start in tqdm.trange(0, len(context.encrypted), chunk,
                           desc=f"FR advanced {context.scheme}", leave=False,
                           disable=not context.progress):
    decoded = decode_units(context.encrypted[start:start + chunk], unit,
                           transforms, prior=prior, prior_weight=PRIOR_WEIGHT)
    # The first unit fixed every other unit's choice relative to it: try
    # every global transform of the whole image and keep the likeliest.
    scores = np.stack([prior.score(priors.apply_photometric(decoded, t))
                       for t in transforms], axis=1)  # [n, K]
    best = np.argmax(scores, axis=1)
    out.append(np.stack([priors.apply_photometric(image, transforms[k])
                         for image, k in zip(decoded, best)]))
  return np.concatenate(out)
