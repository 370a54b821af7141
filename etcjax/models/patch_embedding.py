"""Input checks and the patch embedding shared by the patch-based models."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from etcjax.models.bias import add_bias


def check_images(images, *, patch_size: int, channels: int, model: str) -> None:
  """Raises a ValueError naming what is wrong with a batch of input images.

  Args:
    images: the model input; expected float `[N, H, W, channels]` with H and W
      multiples of `patch_size`, values in [-1, 1] (pixel / 127.5 - 1).
    patch_size: the model's patch (or block) size; 1 for no constraint.
    channels: the channel count the model was built for.
    model: model name for the message.

  Raises:
    ValueError: wrong rank, channel count, integer dtype, or a spatial size
      that is not a multiple of `patch_size`.
  """
  shape = tuple(images.shape)
  if len(shape) != 4:
    raise ValueError(
        f"{model} expects images [N, H, W, {channels}], got shape {shape}")
  _, h, w, c = shape
  if c != channels:
    raise ValueError(
        f"{model} expects {channels}-channel images [N, H, W, {channels}], "
        f"got {c} channels (shape {shape}); NCHW input must be transposed")
  if not jnp.issubdtype(images.dtype, jnp.floating):
    raise ValueError(
        f"{model} expects float images normalised to [-1, 1] "
        f"(pixel / 127.5 - 1), got dtype {images.dtype}")
  if h % patch_size or w % patch_size:
    raise ValueError(
        f"{model} needs image height and width divisible by its patch size "
        f"{patch_size}, got {h}x{w}")


def space_to_depth(images, patch_size: int):
  """Cuts images into non-overlapping patches, flattened in (row, col, channel) order.

  Args:
    images: `[N, H, W, C]`, H and W multiples of `patch_size` (P).

  Returns:
    `[N, H/P, W/P, P*P*C]` of the same dtype: entry (i, j) holds patch
    (i, j) in the order of a `[P, P, C, D]` conv kernel's leading axes.
  """
  n, h, w, c = images.shape
  p = patch_size
  x = images.reshape(n, h // p, p, w // p, p, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(n, h // p, w // p, p * p * c)


def depth_to_space(patches, patch_size: int):
  """Inverse of `space_to_depth`.

  Args:
    patches: `[N, h, w, P*P*C]`, each entry a patch in (row, col, channel)
      order.

  Returns:
    `[N, h*P, w*P, C]` of the same dtype.
  """
  n, h, w, d = patches.shape
  p = patch_size
  c = d // (p * p)
  x = patches.reshape(n, h, w, p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(n, h * p, w * p, c)


class PatchEmbedding(nn.Module):
  """Non-overlapping P x P patches to D features: a conv with stride P.

  The parameters are those of `nn.Conv(D, (P, P), strides=P)` (`kernel`
  `[P, P, C, D]`, `bias` `[D]`), so vit_jax's `embedding` loads as is. It is
  computed as space-to-depth followed by one matmul: the same arithmetic,
  and XLA:CPU runs the weight gradient of a strided conv far slower than
  that of a dot (measured 10x for 1x1 convs), while on TPU both are a
  matmul on the MXU.

  Attributes:
    features: D, output channels.
    patch_size: P.
    dtype: compute dtype; the parameters stay float32.
  """

  features: int
  patch_size: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images):
    """Embeds patches.

    Args:
      images: float `[N, H, W, C]`, H and W multiples of P (checked by the
        caller's `check_images`).

    Returns:
      `[N, H/P, W/P, D]` in `dtype`.
    """
    c = images.shape[-1]
    p = self.patch_size
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (p, p, c, self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.features,),
                      jnp.float32)
    x = space_to_depth(images.astype(self.dtype), p)
    x = x @ kernel.reshape(p * p * c, self.features).astype(self.dtype)
    return add_bias(x, bias.astype(self.dtype))
