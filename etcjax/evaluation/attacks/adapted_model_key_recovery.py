"""Key recovery from a key-adapted model and the public weights it came from.

A model adapted with `etcjax.models.key_adaptation` differs from its public
pretrained origin only by a row permutation (with sign flips) of the
patch-embedding kernel and a permutation of the position embedding. Anyone
holding both recovers the in-block transform and the block order, i.e. the
whole effective key of a common-key block-wise scheme, by matching rows;
after fine-tuning the rows drift but stay closest to their origin.

This attack exists to show the risk, not to be used: never release an
adapted model derived from public weights when the key must stay secret.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import numpy as np

from etcjax import encryption
from etcjax.models import key_adaptation


@dataclasses.dataclass(frozen=True)
class Recovery:
  """What the attack recovered.

  Attributes:
    transform: the recovered `key_adaptation.BlockTransform`.
    plan: an `encryption.Plan` rebuilt from it; `encryption.invert(plan, x)`
      decrypts images encrypted with the secret key.
    in_block_accuracy: share of in-block positions (and signs) recovered
      correctly, when the true plan was given; else None.
    block_order_accuracy: share of block positions recovered correctly, when
      the true plan was given; else None.
  """

  transform: key_adaptation.BlockTransform
  plan: encryption.Plan
  in_block_accuracy: Optional[float]
  block_order_accuracy: Optional[float]


def _normalise(rows):
  rows = np.asarray(rows, np.float64)
  rows = rows - rows.mean(axis=1, keepdims=True)
  return rows / (np.linalg.norm(rows, axis=1, keepdims=True) + 1e-12)


def recover(public: Mapping[str, Any], adapted: Mapping[str, Any],
            image_shape, true_plan: Optional[encryption.Plan] = None
            ) -> Recovery:
  """Recovers a common-key block-wise plan from a (public, adapted) ViT pair.

  Args:
    public: the public ViT 'params' (vit_jax names).
    adapted: 'params' of the adapted (possibly fine-tuned) model.
    image_shape: `(H, W, 3)` of the model's inputs.
    true_plan: the real plan, only to score the recovery.

  Returns:
    A `Recovery`.
  """
  kernel = np.asarray(public["embedding"]["kernel"])
  p = kernel.shape[0]
  k_pub = _normalise(kernel.reshape(-1, kernel.shape[-1]))
  k_adp = _normalise(np.asarray(adapted["embedding"]["kernel"]).reshape(
      k_pub.shape[0], -1))
  # Correlation with every public row; a negative peak is a sign flip.
  corr = k_adp @ k_pub.T
  local_map = np.abs(corr).argmax(axis=1)
  sign = np.sign(corr[np.arange(corr.shape[0]), local_map]).astype(np.float32)

  pos_pub = np.asarray(
      public["Transformer"]["posembed_input"]["pos_embedding"])[0, 1:]
  pos_adp = np.asarray(
      adapted["Transformer"]["posembed_input"]["pos_embedding"])[0, 1:]
  block_order = (_normalise(pos_adp) @ _normalise(pos_pub).T).argmax(axis=1)

  h, w, _ = image_shape
  transform = key_adaptation.BlockTransform(
      block_order=block_order, local_map=local_map, sign=sign, block_size=p,
      grid=(h // p, w // p))
  plan = key_adaptation.plan_from_block_transform(
      transform, image_shape, fingerprint="recovered")
  in_block = order = None
  if true_plan is not None:
    truth = key_adaptation.block_transform(true_plan)
    in_block = float(np.mean((truth.local_map == local_map)
                             & (truth.sign == sign)))
    order = float(np.mean(truth.block_order == block_order))
  return Recovery(transform, plan, in_block, order)
