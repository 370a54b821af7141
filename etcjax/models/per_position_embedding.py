"""Patch embedding with its own kernel for every patch position.

A key-aware first layer for block-wise encryption whose in-block transform
differs from block to block (the paper's EtC: rotation/flip,
negative-positive and colour shuffle drawn per block). A shared kernel
cannot undo a different transform at every position; one kernel per
position can, exactly (see `etcjax.models.key_adaptation.to_per_position`
and `adapt`). The price is `nb` times the embedding's parameters
(ViT-B/16 at 224: 196 x 590k = 116 M; ConvMixer-128 with P=4 at 32: 64 x
6k = 0.4 M).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from etcjax.models import patch_embedding
from etcjax.models.bias import add_bias


class PerPositionPatchEmbedding(nn.Module):
  """Non-overlapping P x P patches to D features, one kernel per position.

  Parameters: `kernel` `[nb, P, P, C, D]` (nb = (H/P) * (W/P) positions in
  raster order, fixed by the image size at initialisation) and a shared
  `bias` `[D]`. With all `nb` kernels equal it computes exactly what
  `PatchEmbedding` computes with that kernel.

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
        caller's `check_images`), of the size the module was initialised
        for.

    Returns:
      `[N, H/P, W/P, D]` in `dtype`.

    Raises:
      ValueError: the kernel was made for another number of positions.
    """
    n, h, w, c = images.shape
    p = self.patch_size
    gh, gw = h // p, w // p
    shape = (gh * gw, p, p, c, self.features)
    if self.has_variable("params", "kernel"):
      stored = tuple(self.get_variable("params", "kernel").shape)
      if stored != shape:
        raise ValueError(
            f"per-position patch embedding has kernel {stored} but the "
            f"images give {gh}x{gw} patches of {p}x{p}x{c}, i.e. {shape}: a "
            "per-position embedding is tied to one image size")
    # Each position's kernel is initialised as a shared kernel would be
    # (fan-in P*P*C, not nb*P*P*C).
    init = nn.initializers.lecun_normal(in_axis=(1, 2, 3), out_axis=-1,
                                        batch_axis=(0,))
    kernel = self.param("kernel", init, shape, jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.features,),
                      jnp.float32)
    x = patch_embedding.space_to_depth(images.astype(self.dtype), p)
    x = x.reshape(n, gh * gw, p * p * c)
    x = jnp.einsum("nlk,lkd->nld", x,
                   kernel.reshape(gh * gw, p * p * c, self.features).astype(
                       self.dtype))
    return add_bias(x, bias.astype(self.dtype)).reshape(n, gh, gw,
                                                        self.features)
