"""Key adaptation: models that classify encrypted images as plain ones.

For a block-wise scheme whose in-block transform is common to all blocks
(`block_common`, or `etc` restricted to block scrambling), with block size
equal to the patch size, encryption acts on a patch-embedding network as:

- the in-block pixel and colour shuffle permutes the rows of the flattened
  patch-embedding kernel `[P*P*C, D]`;
- negative-positive p -> 255 - p is, under the input normalisation
  x = p / 127.5 - 1, exactly x -> -x: a sign flip of those rows;
- block scrambling permutes the patch tokens, which a ViT only sees through
  its position embedding (the encoder is permutation-equivariant and the
  class token is read out), so permuting the position-embedding rows
  absorbs it. A convolutional model (ConvMixer) mixes neighbouring patches
  and cannot absorb block scrambling.

`adapt(params, plan)` returns parameters with which the model gives on
encrypted images exactly (up to float rounding) the logits the original
parameters give on the plain images.

Security: adapted parameters and the public pretrained parameters they came
from together reveal the in-block transform and the block order (match the
kernel rows and position-embedding rows); see
`etcjax.evaluation.attacks.adapted_model_key_recovery`. Never publish an
adapted model derived from public weights if the key must stay secret.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

from etcjax import encryption

Params = Mapping[str, Any]


class AdaptationError(ValueError):
  """Raised when a plan's transform cannot be absorbed by a model."""


@dataclasses.dataclass(frozen=True)
class BlockTransform:
  """A plan seen as a block permutation plus one common in-block transform.

  Attributes:
    block_order: int `[nb]`, the plain block shown at each encrypted block
      position (raster order).
    local_map: int `[P*P*C]`, for each value of an encrypted block, its
      position in the plain block (row-major `[P, P, C]`).
    sign: float32 `[P*P*C]` in {-1, +1}, -1 where the value was
      negative-positive transformed.
    block_size: P.
    grid: `(H // P, W // P)`.
  """

  block_order: np.ndarray
  local_map: np.ndarray
  sign: np.ndarray
  block_size: int
  grid: tuple

  @property
  def scrambles(self) -> bool:
    return not np.array_equal(self.block_order, np.arange(self.block_order.size))


def block_transform(plan: encryption.Plan) -> BlockTransform:
  """Decomposes a plan into block order and a common in-block transform.

  Args:
    plan: an `encryption.Plan` acting on 8-bit pixels.

  Returns:
    The plan's `BlockTransform`.

  Raises:
    AdaptationError: the plan is per-image, works on another representation
      (LE/ELE nibbles, grayscale EtC), or draws a different in-block
      transform per block (the paper's EtC), which no single kernel absorbs.
  """
  if plan.representation != "pixels" or plan.per_image:
    raise AdaptationError(
        f"scheme {plan.scheme!r} cannot be absorbed by a model: adaptation "
        "needs one plan for all images acting on 8-bit RGB pixels "
        "(schemes 'block_common' or 'etc' with steps=('scramble',))")
  h, w, c = plan.image_shape
  b = plan.block_size
  gh, gw = h // b, w // b
  blocks = lambda a: np.asarray(a).reshape(gh, b, gw, b, c).transpose(
      0, 2, 1, 3, 4).reshape(gh * gw, b * b * c)
  src = blocks(plan.gather).astype(np.int64)
  mask = blocks(plan.xor)
  sy, sx, sc = src // (w * c), (src // c) % w, src % c
  src_block = (sy // b) * gw + sx // b
  local = ((sy % b) * b + sx % b) * c + sc
  if not (src_block == src_block[:, :1]).all():
    raise AdaptationError(
        f"plan of scheme {plan.scheme!r} moves values across blocks of size "
        f"{b}; it is not block-wise at this block size")
  if not ((local == local[:1]).all() and (mask == mask[:1]).all()):
    raise AdaptationError(
        f"scheme {plan.scheme!r} draws a different in-block transform for "
        "every block, which no single patch-embedding kernel can absorb; "
        "use scheme 'block_common' (or 'etc' with steps=('scramble',)) for "
        "key-adapted models")
  if not np.isin(mask[0], (0, 255)).all():
    raise AdaptationError("plan XOR mask is not a negative-positive mask")
  sign = np.where(mask[0] == 255, -1.0, 1.0).astype(np.float32)
  return BlockTransform(src_block[:, 0], local[0], sign, b, (gh, gw))


def plan_from_block_transform(t: BlockTransform, image_shape,
                              fingerprint: str = "unknown") -> encryption.Plan:
  """Rebuilds an encryption plan from a `BlockTransform` (inverse of `block_transform`).

  Args:
    t: block order, in-block map and signs.
    image_shape: `(H, W, C)` with `(H // P, W // P) == t.grid`.
    fingerprint: recorded in the plan (e.g. 'recovered' for an attack).

  Returns:
    A 'block_common'-style `encryption.Plan` that encrypts as `t` does.
  """
  h, w, c = image_shape
  b = t.block_size
  gh, gw = t.grid
  if (h // b, w // b) != (gh, gw) or h % b or w % b:
    raise AdaptationError(
        f"image shape {tuple(image_shape)} does not have the {gh}x{gw} grid "
        f"of {b}x{b} blocks of this transform")
  base = np.arange(h * w * c).reshape(gh, b, gw, b, c).transpose(
      0, 2, 1, 3, 4).reshape(gh * gw, b * b * c)
  gather = base[t.block_order][:, t.local_map]
  mask = np.broadcast_to(np.where(t.sign < 0, 255, 0).astype(np.uint8),
                         gather.shape)
  unblock = lambda a: a.reshape(gh, gw, b, b, c).transpose(0, 2, 1, 3, 4).reshape(-1)
  return encryption.plans.make(
      unblock(gather), unblock(np.ascontiguousarray(mask)), scheme="block_common",
      image_shape=(h, w, c), encrypted_shape=(h, w, c), block_size=b,
      representation="pixels", fingerprint=fingerprint)


def _check_patch(kernel_shape, t: BlockTransform, where: str):
  p, q, c = kernel_shape[:3]
  if (p, q) != (t.block_size, t.block_size) or c * p * q != t.local_map.size:
    raise AdaptationError(
        f"{where} has patch size {p}x{q} with {c} channels, but the plan's "
        f"block size is {t.block_size} ({t.local_map.size // t.block_size**2} "
        "channels); adaptation needs block size == patch size")


def adapt_patch_kernel(kernel, t: BlockTransform):
  """Permutes and sign-flips a patch-embedding kernel's input rows.

  Args:
    kernel: `[P, P, C, D]` float kernel of a stride-P patch convolution.
    t: the plan's `BlockTransform` with block size P.

  Returns:
    The adapted kernel, same shape and dtype.
  """
  _check_patch(kernel.shape, t, "the patch-embedding kernel")
  flat = np.asarray(kernel).reshape(t.local_map.size, -1)
  adapted = flat[t.local_map] * t.sign[:, None].astype(flat.dtype)
  return adapted.reshape(kernel.shape)


def adapt_vit(params: Params, plan: encryption.Plan) -> dict:
  """Adapts ViT parameters (vit_jax names) to images encrypted with `plan`.

  Args:
    params: the ViT's 'params' collection, with `embedding/kernel`
      `[P, P, 3, D]` and `Transformer/posembed_input/pos_embedding`
      `[1, 1 + nb, D]` (class token first).
    plan: a plan accepted by `block_transform`, block size P, made for the
      model's input size.

  Returns:
    A new params tree; `model(adapted, apply(plan, x)) == model(params, x)`
    up to float rounding.
  """
  t = block_transform(plan)
  params = _copy_tree(params)
  params["embedding"]["kernel"] = adapt_patch_kernel(
      params["embedding"]["kernel"], t)
  posemb = np.asarray(params["Transformer"]["posembed_input"]["pos_embedding"])
  nb = t.block_order.size
  if posemb.shape[1] != nb + 1:
    raise AdaptationError(
        f"position embedding has {posemb.shape[1] - 1} patch positions but "
        f"the plan has {nb} blocks; make the plan for the model's image size")
  order = np.concatenate([[0], 1 + t.block_order])  # class token stays first
  params["Transformer"]["posembed_input"]["pos_embedding"] = posemb[:, order]
  return params


def adapt_patch_conv(params: Params, plan: encryption.Plan,
                     kernel_path=("patch_embed", "kernel")) -> dict:
  """Adapts a convolutional patch-embedding model (ConvMixer).

  Only the in-block steps can be absorbed; block scrambling cannot, because
  later convolutions mix neighbouring patches.

  Args:
    params: the model's 'params' collection.
    plan: a plan accepted by `block_transform` without block scrambling.
    kernel_path: path of the stride-P patch convolution's kernel.

  Returns:
    A new params tree.

  Raises:
    AdaptationError: the plan scrambles blocks, or sizes do not match.
  """
  t = block_transform(plan)
  if t.scrambles:
    raise AdaptationError(
        "block scrambling cannot be absorbed by a convolutional model (its "
        "depthwise convolutions mix neighbouring patches); make the plan "
        "with steps that exclude 'scramble'")
  params = _copy_tree(params)
  node = params
  for name in kernel_path[:-1]:
    node = node[name]
  node[kernel_path[-1]] = adapt_patch_kernel(node[kernel_path[-1]], t)
  return params


def _copy_tree(tree):
  if isinstance(tree, Mapping):
    return {k: _copy_tree(v) for k, v in tree.items()}
  return tree
