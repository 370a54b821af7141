"""Mixup, CutMix and label smoothing as pure JAX functions on batches.

Used inside the jitted train step, after on-device encryption: the images
mixed here are the ones the model sees (encrypted when training on EtC
images). Following timm, one mixing coefficient is drawn per batch and every
example is paired with its mirror in the batch (`images[::-1]`), so no
second batch or shuffle is needed and the result is deterministic for a
given `rng`.
"""

from __future__ import annotations

from typing import Tuple

import jax
import jax.numpy as jnp

from etcjax.data import errors


def onehot(labels, num_classes: int, label_smoothing: float = 0.0):
  """One-hot targets with optional label smoothing.

  Args:
    labels: int `[B]` in [0, num_classes).
    num_classes: K.
    label_smoothing: in [0, 1); the true class gets `1 - label_smoothing +
      label_smoothing / K`, every other class `label_smoothing / K`.

  Returns:
    float32 `[B, K]`, every row summing to 1.
  """
  if not 0.0 <= label_smoothing < 1.0:
    raise errors.DataError(
        f"label_smoothing must be in [0, 1), got {label_smoothing}")
  targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  return targets * (1.0 - label_smoothing) + label_smoothing / num_classes


def _cutmix_mask(rng, lam, height: int, width: int):
  """A box covering about `1 - lam` of the image, and its exact area fraction.

  Returns:
    `(mask, area)`: bool `[H, W]`, True inside the box; float32 scalar, the
    box's area after clipping to the image, as a fraction of H * W.
  """
  rng_y, rng_x = jax.random.split(rng)
  ratio = jnp.sqrt(1.0 - lam)
  cut_h = jnp.round(height * ratio).astype(jnp.int32)
  cut_w = jnp.round(width * ratio).astype(jnp.int32)
  # The centre is uniform over the image and the box is clipped at the
  # border (as in the CutMix paper), so the pasted area can be smaller than
  # 1 - lam; labels are mixed by the area actually pasted.
  cy = jax.random.randint(rng_y, (), 0, height)
  cx = jax.random.randint(rng_x, (), 0, width)
  y0 = jnp.clip(cy - cut_h // 2, 0, height)
  y1 = jnp.clip(cy + cut_h - cut_h // 2, 0, height)
  x0 = jnp.clip(cx - cut_w // 2, 0, width)
  x1 = jnp.clip(cx + cut_w - cut_w // 2, 0, width)
  rows = jnp.arange(height)[:, None]
  cols = jnp.arange(width)[None, :]
  mask = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)
  area = ((y1 - y0) * (x1 - x0)).astype(jnp.float32) / (height * width)
  return mask, area


def mix(rng, images, labels_onehot, mixup_alpha: float, cutmix_alpha: float,
        mix_prob: float = 1.0, switch_prob: float = 0.5
        ) -> Tuple[jax.Array, jax.Array]:
  """Applies mixup or CutMix to a batch (one method and coefficient per batch).

  With probability `mix_prob` the batch is mixed; then CutMix is chosen with
  probability `switch_prob` when both alphas are positive (else whichever
  is). Mixup: `x = lam * x + (1 - lam) * x[::-1]` with lam ~ Beta(a, a).
  CutMix: a box of area about `1 - lam` is pasted from `x[::-1]`; labels are
  mixed by the pasted fraction. With both alphas 0 this is the identity.

  Args:
    rng: a JAX PRNG key.
    images: float `[B, H, W, C]` (any value range; mixing is convex).
    labels_onehot: float `[B, K]` targets (e.g. from `onehot`), rows summing
      to 1.
    mixup_alpha: Beta parameter of mixup, >= 0 (0 = off).
    cutmix_alpha: Beta parameter of CutMix, >= 0 (0 = off).
    mix_prob: probability in [0, 1] of mixing a batch at all.
    switch_prob: probability in [0, 1] of CutMix rather than mixup when
      both are on.

  Returns:
    `(images, targets)`: same shapes and dtypes as the inputs; target rows
    still sum to 1.
  """
  for name, value in (("mixup_alpha", mixup_alpha),
                      ("cutmix_alpha", cutmix_alpha)):
    if value < 0:
      raise errors.DataError(f"{name} must be >= 0, got {value}")
  for name, value in (("mix_prob", mix_prob), ("switch_prob", switch_prob)):
    if not 0.0 <= value <= 1.0:
      raise errors.DataError(f"{name} must be in [0, 1], got {value}")
  if images.ndim != 4 or labels_onehot.ndim != 2 or \
      images.shape[0] != labels_onehot.shape[0]:
    raise ValueError(
        "mix needs images [B, H, W, C] and labels_onehot [B, K] with the same "
        f"B, got {images.shape} and {labels_onehot.shape}")
  if mixup_alpha == 0 and cutmix_alpha == 0:
    return images, labels_onehot

  rng_apply, rng_switch, rng_lam, rng_box = jax.random.split(rng, 4)
  if mixup_alpha > 0 and cutmix_alpha > 0:
    use_cutmix = jax.random.bernoulli(rng_switch, switch_prob)
  else:
    use_cutmix = jnp.asarray(cutmix_alpha > 0)
  # Beta needs a positive parameter on both branches; the unused one's value
  # is discarded by the select below.
  alpha = jnp.where(use_cutmix, cutmix_alpha or 1.0, mixup_alpha or 1.0)
  lam = jax.random.beta(rng_lam, alpha, alpha)
  apply = jax.random.bernoulli(rng_apply, mix_prob)

  height, width = images.shape[1:3]
  box, area = _cutmix_mask(rng_box, lam, height, width)
  lam = jnp.where(use_cutmix, 1.0 - area, lam)
  lam = jnp.where(apply, lam, 1.0)
  partner = images[::-1]
  mixed = jnp.where(
      use_cutmix,
      jnp.where(box[None, :, :, None], partner, images),
      lam * images + (1.0 - lam) * partner)
  mixed = jnp.where(apply, mixed, images).astype(images.dtype)
  lam = lam.astype(labels_onehot.dtype)
  targets = lam * labels_onehot + (1.0 - lam) * labels_onehot[::-1]
  return mixed, targets
