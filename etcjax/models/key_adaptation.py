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

Per-position patch embeddings (`per_position_embedding=True` on ViT and
ConvMixer: one kernel per block position) go further: they absorb a
*different* in-block transform per block, i.e. the paper's EtC (block
scrambling, rotation/flip, negative-positive and colour shuffle per block).
`to_per_position` turns a shared-kernel model into the equivalent
per-position one, which `adapt` then adapts block by block.

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
from etcjax import errors

Params = Mapping[str, Any]


class AdaptationError(errors.UserError, ValueError):
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


@dataclasses.dataclass(frozen=True)
class PerBlockTransform:
  """A plan seen as a block permutation plus an in-block transform per block.

  Attributes:
    block_order: int `[nb]`, the plain block shown at each encrypted block
      position (raster order).
    local_maps: int `[nb, P*P*C]`; row j: for each value of encrypted block
      j, its position in the plain block (row-major `[P, P, C]`).
    signs: float32 `[nb, P*P*C]` in {-1, +1}, -1 where the value was
      negative-positive transformed.
    block_size: P.
    grid: `(H // P, W // P)`.
  """

  block_order: np.ndarray
  local_maps: np.ndarray
  signs: np.ndarray
  block_size: int
  grid: tuple

  @property
  def scrambles(self) -> bool:
    return not np.array_equal(self.block_order, np.arange(self.block_order.size))


def per_block_transform(plan: encryption.Plan) -> PerBlockTransform:
  """Decomposes a block-wise plan into block order and per-block transforms.

  Accepts the paper's EtC (a different rotation/flip, negative-positive and
  colour choice per block) as well as common-key schemes.

  Args:
    plan: an `encryption.Plan` acting on 8-bit pixels.

  Returns:
    The plan's `PerBlockTransform`.

  Raises:
    AdaptationError: the plan is per-image, works on another representation
      (LE/ELE nibbles, grayscale EtC), moves values across blocks, or XORs
      with a mask other than negative-positive (0 or 255).
  """
  if plan.representation != "pixels" or plan.per_image:
    raise AdaptationError(
        f"scheme {plan.scheme!r} cannot be absorbed by a model: adaptation "
        "needs one plan for all images acting on 8-bit RGB pixels "
        "(schemes 'block_common' or 'etc')")
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
  if not np.isin(mask, (0, 255)).all():
    raise AdaptationError("plan XOR mask is not a negative-positive mask")
  signs = np.where(mask == 255, -1.0, 1.0).astype(np.float32)
  return PerBlockTransform(src_block[:, 0], local, signs, b, (gh, gw))


def block_transform(plan: encryption.Plan) -> BlockTransform:
  """Decomposes a plan into block order and a common in-block transform.

  Args:
    plan: an `encryption.Plan` acting on 8-bit pixels.

  Returns:
    The plan's `BlockTransform`.

  Raises:
    AdaptationError: as `per_block_transform`, or the plan draws a
      different in-block transform per block (the paper's EtC), which no
      single kernel absorbs (a per-position embedding does, see
      `to_per_position`).
  """
  t = per_block_transform(plan)
  if not ((t.local_maps == t.local_maps[:1]).all()
          and (t.signs == t.signs[:1]).all()):
    raise AdaptationError(
        f"scheme {plan.scheme!r} draws a different in-block transform for "
        "every block, which no single patch-embedding kernel can absorb; "
        "use scheme 'block_common' (or 'etc' with steps=('scramble',)) for "
        "key-adapted models, or a model with per_position_embedding=True "
        "(see key_adaptation.to_per_position)")
  return BlockTransform(t.block_order, t.local_maps[0], t.signs[0],
                        t.block_size, t.grid)


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


def _check_patch(kernel_shape, block_size: int, values: int, where: str):
  p, q, c = kernel_shape[-4:-1]
  if (p, q) != (block_size, block_size) or c * p * q != values:
    raise AdaptationError(
        f"{where} has patch size {p}x{q} with {c} channels, but the plan's "
        f"block size is {block_size} ({values // block_size**2} channels); "
        "adaptation needs block size == patch size")


def adapt_patch_kernel(kernel, t: BlockTransform):
  """Permutes and sign-flips a patch-embedding kernel's input rows.

  Args:
    kernel: `[P, P, C, D]` float kernel of a stride-P patch convolution.
    t: the plan's `BlockTransform` with block size P.

  Returns:
    The adapted kernel, same shape and dtype.
  """
  _check_patch(kernel.shape, t.block_size, t.local_map.size,
               "the patch-embedding kernel")
  flat = np.asarray(kernel).reshape(t.local_map.size, -1)
  adapted = flat[t.local_map] * t.sign[:, None].astype(flat.dtype)
  return adapted.reshape(kernel.shape)


def adapt_per_position_kernel(kernel, t: PerBlockTransform):
  """Adapts a per-position patch-embedding kernel block by block.

  Encrypted block j shows plain block `block_order[j]` transformed by its
  own in-block map, so position j gets the kernel of position
  `block_order[j]` with rows permuted and sign-flipped by block j's map.

  Args:
    kernel: `[nb, P, P, C, D]` float kernel, one `[P, P, C, D]` kernel per
      block position (raster order), e.g. from `to_per_position`.
    t: the plan's `PerBlockTransform` with block size P and nb blocks.

  Returns:
    The adapted kernel, same shape and dtype.
  """
  _check_patch(kernel.shape, t.block_size, t.local_maps.shape[1],
               "the per-position patch-embedding kernel")
  nb, k = t.local_maps.shape
  if kernel.shape[0] != nb:
    raise AdaptationError(
        f"the per-position kernel has {kernel.shape[0]} positions but the "
        f"plan has {nb} blocks; make the plan for the model's image size")
  flat = np.asarray(kernel).reshape(nb, k, -1)[t.block_order]
  adapted = np.take_along_axis(flat, t.local_maps[:, :, None], axis=1)
  adapted = adapted * t.signs[:, :, None].astype(flat.dtype)
  return adapted.reshape(kernel.shape)


def _adapt_kernel(kernel, plan: encryption.Plan, where: str):
  """Adapts a shared (4-D) or per-position (5-D) kernel; returns it and the
  plan's block order."""
  kernel = np.asarray(kernel)
  if kernel.ndim == 4:
    t = block_transform(plan)
    return adapt_patch_kernel(kernel, t), t.block_order
  if kernel.ndim == 5:
    t = per_block_transform(plan)
    return adapt_per_position_kernel(kernel, t), t.block_order
  raise AdaptationError(
      f"{where} has shape {kernel.shape}; expected [P, P, C, D] (shared) or "
      "[nb, P, P, C, D] (per position)")


def adapt_vit(params: Params, plan: encryption.Plan) -> dict:
  """Adapts ViT parameters (vit_jax names) to images encrypted with `plan`.

  Args:
    params: the ViT's 'params' collection, with `embedding/kernel`
      `[P, P, 3, D]` (or `[nb, P, P, 3, D]` with a per-position embedding)
      and `Transformer/posembed_input/pos_embedding` `[1, 1 + nb, D]`
      (class token first).
    plan: a plan accepted by `block_transform` (by `per_block_transform`
      for a per-position embedding), block size P, made for the model's
      input size.

  Returns:
    A new params tree (numpy arrays where changed);
    `model(adapted, apply(plan, x)) == model(params, x)` up to float
    rounding.

  Raises:
    AdaptationError: the plan cannot be absorbed, or sizes do not match.
  """
  params = _copy_tree(params)
  params["embedding"]["kernel"], block_order = _adapt_kernel(
      params["embedding"]["kernel"], plan, "the ViT's embedding/kernel")
  posemb = np.asarray(params["Transformer"]["posembed_input"]["pos_embedding"])
  nb = block_order.size
  if posemb.shape[1] != nb + 1:
    raise AdaptationError(
        f"position embedding has {posemb.shape[1] - 1} patch positions but "
        f"the plan has {nb} blocks; make the plan for the model's image size")
  order = np.concatenate([[0], 1 + block_order])  # class token stays first
  params["Transformer"]["posembed_input"]["pos_embedding"] = posemb[:, order]
  return params


def adapt_patch_conv(params: Params, plan: encryption.Plan,
                     kernel_path=("patch_embed", "kernel")) -> dict:
  """Adapts a convolutional patch-embedding model (ConvMixer).

  Only the in-block steps can be absorbed; block scrambling cannot, because
  later convolutions mix neighbouring patches.

  Args:
    params: the model's 'params' collection.
    plan: a plan accepted by `block_transform` (`per_block_transform` for a
      per-position embedding) without block scrambling.
    kernel_path: path of the stride-P patch convolution's kernel.

  Returns:
    A new params tree (numpy arrays where changed).

  Raises:
    AdaptationError: the plan scrambles blocks, or sizes do not match.
  """
  if per_block_transform(plan).scrambles:
    raise AdaptationError(
        "block scrambling cannot be absorbed by a convolutional model (its "
        "depthwise convolutions mix neighbouring patches); make the plan "
        "with steps that exclude 'scramble'")
  params = _copy_tree(params)
  node = params
  for name in kernel_path[:-1]:
    node = node[name]
  node[kernel_path[-1]], _ = _adapt_kernel(
      node[kernel_path[-1]], plan, "the patch-embedding kernel")
  return params


def _family(params: Params) -> str:
  if "embedding" in params and "Transformer" in params:
    return "vit"
  if "patch_embed" in params:
    return "conv"
  raise AdaptationError(
      "key adaptation knows the patch embeddings of ViT ('embedding' with "
      "'Transformer/posembed_input') and ConvMixer ('patch_embed'); these "
      f"parameters have top-level names {sorted(params)}")


def adapt(params: Params, plan: encryption.Plan) -> dict:
  """Adapts a ViT or ConvMixer to images encrypted with `plan`.

  Args:
    params: the model's 'params' collection (BatchNorm statistics need no
      change: adaptation leaves every activation after the patch embedding
      as it was).
    plan: see `adapt_vit` and `adapt_patch_conv`.

  Returns:
    A new params tree.

  Raises:
    AdaptationError: an unknown model, or a plan the model cannot absorb.
  """
  if _family(params) == "vit":
    return adapt_vit(params, plan)
  return adapt_patch_conv(params, plan)


def patch_kernel_path(params: Params):
  """Path of the patch-embedding kernel, e.g. `('embedding', 'kernel')`.

  Args:
    params: a model's 'params' collection.

  Returns:
    The path tuple, or None for a model without a known patch embedding.
  """
  for name in ("embedding", "patch_embed"):
    if name in params and "kernel" in params[name]:
      return (name, "kernel")
  return None


def set_leaf(params: Params, path, value) -> dict:
  """A copy of `params` with the leaf at `path` replaced by `value`."""
  params = _copy_tree(params)
  node = params
  for name in path[:-1]:
    node = node[name]
  node[path[-1]] = value
  return params


def to_per_position(params: Params, num_positions: int) -> dict:
  """The same model with its patch-embedding kernel repeated per position.

  The result, used with `per_position_embedding=True`, computes exactly
  what `params` computes; `adapt` then adapts each position separately.

  Args:
    params: a ViT's or ConvMixer's 'params' with a shared `[P, P, C, D]`
      patch-embedding kernel.
    num_positions: block positions `(H // P) * (W // P)` of the images.

  Returns:
    A new params tree whose kernel is `[num_positions, P, P, C, D]`.
  """
  params = _copy_tree(params)
  node = params["embedding" if _family(params) == "vit" else "patch_embed"]
  kernel = np.asarray(node["kernel"])
  if kernel.ndim != 4:
    raise AdaptationError(
        f"expected a shared [P, P, C, D] kernel, got shape {kernel.shape}")
  node["kernel"] = np.ascontiguousarray(
      np.broadcast_to(kernel, (num_positions,) + kernel.shape))
  return params


def _copy_tree(tree):
  if isinstance(tree, Mapping):
    return {k: _copy_tree(v) for k, v in tree.items()}
  return tree
