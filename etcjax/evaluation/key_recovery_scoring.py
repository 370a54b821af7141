"""Scores a recovered effective key against the truth (the owner's plan).

Kept apart from the attacks (`attacks.same_key`, `attacks.known_plaintext`),
which never see a plan: this module is the referee.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from etcjax import encryption
from etcjax.encryption import plans
from etcjax.encryption import schemes
from etcjax.evaluation import visual_metrics
from etcjax.evaluation.attacks import same_key

SCRAMBLING = ("etc", "etc_gray", "block_common", "ele")


@dataclasses.dataclass(frozen=True)
class KeyScore:
  """How much of the key an attack recovered.

  Attributes:
    neighbours: share of pairs of adjacent plain blocks that are adjacent in
      the same relative position after decryption, under the best global
      symmetry (NaN for schemes that do not scramble blocks), in [0, 1].
    blocks_exact: share of B x B blocks (pixels for PE) of all evaluated
      images decrypted to exactly the owner's decryption, in [0, 1].
    values_exact: share of the representation's values whose source and
      mask are right (the effective key's accuracy), in [0, 1].
    ssim: float `[N]`, SSIM of every decrypted image against its plain one.
    ssim_up_to_mirror: the larger of the mean SSIM of the decryptions and
      of their left-right mirror images: what the adversary recovers when
      the one global mirror its statistics cannot see is settled (a
      mirrored photo shows its content as well).
  """

  neighbours: float
  blocks_exact: float
  values_exact: float
  ssim: np.ndarray
  ssim_up_to_mirror: float


def _composite(truth_gather: np.ndarray, truth_xor: np.ndarray,
               plan: plans.Plan) -> np.ndarray:
  """bool `[P]`: output values the recovered plan decrypts right."""
  src = plan.ungather
  return ((truth_gather[src] == np.arange(src.size))
          & (truth_xor[src] == plan.xor[src]))


def neighbours(truth: plans.Plan, recovered: plans.Plan) -> float:
  """Share of adjacent plain blocks kept adjacent (best global symmetry).

  Args:
    truth: the owner's plan (one key for all images).
    recovered: the attack's effective plan.

  Returns:
    A share in [0, 1], NaN for schemes without block scrambling.
  """
  if truth.scheme not in SCRAMBLING:
    return float("nan")
  h0, w0, _ = truth.image_shape
  if h0 == w0 == truth.block_size:
    return float("nan")  # One block: no pairs.
  h, w, c = plans.representation_shape(truth.representation,
                                       truth.image_shape)
  b = truth.block_size
  gh, gw = h // b, w // b
  tops = (np.arange(gh)[:, None] * b * w + np.arange(gw)[None, :] * b) * c
  # Output block -> plain source block of its first value.
  source = truth.gather[recovered.ungather[tops.reshape(-1)]]
  y, x = source // (w * c), (source // c) % w
  src_block = (y // b) * gw + x // b
  location = np.zeros((gh * gw, 2), np.int64)
  location[src_block] = np.stack(np.divmod(np.arange(gh * gw), gw), axis=1)
  grid = np.arange(gh * gw).reshape(gh, gw)
  right = location[grid[:, 1:].reshape(-1)] - location[grid[:, :-1].reshape(-1)]
  down = location[grid[1:].reshape(-1)] - location[grid[:-1].reshape(-1)]
  best = 0.0
  for t in range(8):
    # Where the unit steps right and down go under symmetry t.
    probe = np.zeros((3, 3), np.int64)
    probe[1, 2], probe[2, 1] = 1, 2
    moved = schemes.square_transform(probe, t)
    step_r = np.argwhere(moved == 1)[0] - 1
    step_d = np.argwhere(moved == 2)[0] - 1
    hits = (np.all(right == step_r, axis=1).sum()
            + np.all(down == step_d, axis=1).sum())
    best = max(best, hits / max(len(right) + len(down), 1))
  return float(best)


def score(truth: plans.Plan, recovered: same_key.RecoveredKey,
          plain: np.ndarray, ciphertexts: np.ndarray,
          key: Optional[bytes] = None, image_ids: Optional[np.ndarray] = None,
          chunk: int = 256, mirror_images: int = 500,
          memo: Optional[dict] = None) -> KeyScore:
  """Scores a recovered key by decrypting every ciphertext with it.

  Args:
    truth: the owner's plan (for 'pe_per_image': the plan of PE with the
      same key, used only for its shapes; pass `key` and `image_ids`).
    recovered: the attack's result.
    plain: uint8 `[N, H, W, 3]`, the plain images.
    ciphertexts: uint8 `[N] + encrypted shape`, their encryptions.
    key, image_ids: for 'pe_per_image' only: the key and image ids that
      give each image's own plan.
    chunk: images decrypted at a time.
    mirror_images: `ssim_up_to_mirror` is measured on this many evenly
      spaced images (SSIM of 224x224 images costs ~10 ms each here).
    memo: a dict kept between calls on the same truth and images: a key
      that decrypts every value right scores what the owner's decryption
      scores, computed once.

  Returns:
    The `KeyScore`.
  """
  plan = recovered.plan
  b = plan.block_size
  exact_blocks, exact_values, ssims, mirrored = [], [], [], []
  per_image = image_ids is not None
  mirror_rows = np.unique(np.linspace(0, len(plain) - 1, min(
      len(plain), mirror_images)).round().astype(int))
  if not per_image:
    values = float(_composite(truth.gather, truth.xor, plan).mean())
    if values == 1.0 and memo is not None and "perfect" in memo:
      return dataclasses.replace(memo["perfect"])
  for start in range(0, len(plain), chunk):
    rows = slice(start, start + chunk)
    decrypted = np.asarray(plans.invert(plan, ciphertexts[rows]))
    if per_image:
      own = encryption.make_plan(key, "pe_per_image", truth.image_shape,
                                 image_ids=image_ids[rows])
      reference = plain[rows]
      exact_values += [_composite(g, x, plan).mean()
                       for g, x in zip(own.gather, own.xor)]
    else:
      # The owner's own decryption (etc_gray's RGB differs from the plain
      # image by YCbCr rounding).
      reference = np.asarray(plans.invert(truth, ciphertexts[rows]))
    n, h, w, c = decrypted.shape
    same = (decrypted == reference).reshape(n, h // b, b, w // b, b, c)
    exact_blocks.append(same.all(axis=(2, 4, 5)).reshape(n, -1).mean(axis=1))
    ssims.append(visual_metrics.ssim(plain[rows], decrypted))
    here = mirror_rows[(mirror_rows >= start) & (mirror_rows < start + chunk)]
    if here.size:
      mirrored.append(visual_metrics.ssim(
          plain[here], np.ascontiguousarray(decrypted[here - start, :, ::-1])))
  if not per_image:
    exact_values = [values]
  ssims = np.concatenate(ssims)
  result = KeyScore(
      neighbours=(float("nan") if per_image else neighbours(truth, plan)),
      blocks_exact=float(np.concatenate(exact_blocks).mean()),
      values_exact=float(np.mean(exact_values)),
      ssim=ssims,
      ssim_up_to_mirror=float(max(ssims[mirror_rows].mean(),
                                  np.concatenate(mirrored).mean())))
  if not per_image and values == 1.0 and memo is not None:
    memo["perfect"] = result
  return result
