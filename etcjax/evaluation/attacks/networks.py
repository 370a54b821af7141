"""Small image-to-image networks of the learned attacks (GAN, ITN).

These are attack tools, not classification models, so they live here and
not in `etcjax.models`. Images enter and leave in [-1, 1], NHWC.

- `UNet`: encoder-decoder with skip connections (Ronneberger et al. 2015),
  the generator of the GAN attack and the inverse transformation network
  of the ITN attack. Its receptive field spans a CIFAR-10 image, so it can
  in principle learn position-dependent (scrambling) maps at 32x32; at
  224x224 it is local.
- `PatchDiscriminator`: PatchGAN (Isola et al. 2017), real/fake logits per
  overlapping patch.
"""

from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def _groups(features: int) -> int:
  return min(8, features)


class ConvBlock(nn.Module):
  """Two 3x3 convolutions, each with group norm and ReLU."""

  features: int

  @nn.compact
  def __call__(self, x):
    for _ in range(2):
      x = nn.Conv(self.features, (3, 3))(x)
      x = nn.GroupNorm(num_groups=_groups(self.features))(x)
      x = nn.relu(x)
    return x


class UNet(nn.Module):
  """U-Net generator.

  Attributes:
    features: channels per level, finest first; the image side must be
      divisible by 2^(len(features) - 1).
    out_channels: output channels.
  """

  features: Sequence[int] = (32, 64, 128)
  out_channels: int = 3

  @nn.compact
  def __call__(self, x):
    """Maps float32 `[N, H, W, C]` in [-1, 1] to `[N, H, W, out]` in [-1, 1]."""
    skips = []
    for level, features in enumerate(self.features):
      if level:
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
      x = ConvBlock(features)(x)
      skips.append(x)
    for features, skip in zip(reversed(self.features[:-1]),
                              reversed(skips[:-1])):
      x = nn.ConvTranspose(features, (2, 2), strides=(2, 2))(x)
      x = ConvBlock(features)(jnp.concatenate([x, skip], axis=-1))
    return jnp.tanh(nn.Conv(self.out_channels, (1, 1))(x))


class PatchDiscriminator(nn.Module):
  """PatchGAN discriminator.

  Attributes:
    features: channels of the strided convolutions.
  """

  features: Sequence[int] = (32, 64, 128)

  @nn.compact
  def __call__(self, x):
    """Maps float32 `[N, H, W, C]` in [-1, 1] to logits `[N, h, w, 1]`."""
    for level, features in enumerate(self.features):
      x = nn.Conv(features, (4, 4), strides=(2, 2) if level < 2 else (1, 1))(x)
      if level:
        x = nn.GroupNorm(num_groups=_groups(features))(x)
      x = nn.leaky_relu(x, 0.2)
    return nn.Conv(1, (4, 4))(x)


def widths(width: int, levels: int = 3) -> Sequence[int]:
  """Channels per level: `width`, doubling per level."""
  return tuple(width * 2**i for i in range(levels))


def to_signed(images) -> jnp.ndarray:
  """uint8 [0, 255] -> float32 [-1, 1]."""
  return jnp.asarray(images, jnp.float32) / 127.5 - 1.0


def to_uint8(x) -> jnp.ndarray:
  """float [-1, 1] -> uint8 [0, 255] (rounded, clipped)."""
  return jnp.clip(jnp.round((x + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


def predict(module: nn.Module, params, images, batch_size: int = 64):
  """Runs an image-to-image network over a uint8 batch.

  Args:
    module: a `UNet`.
    params: its parameters.
    images: uint8 `[N, H, W, C]`.
    batch_size: images per call.

  Returns:
    uint8 numpy `[N, H, W, out_channels]`.
  """
  out = [np.asarray(_apply_uint8(module, params, images[s:s + batch_size]))
         for s in range(0, len(images), batch_size)]
  return np.concatenate(out)


@functools.partial(jax.jit, static_argnums=0)
def _apply_uint8(module, params, images):
  return to_uint8(module.apply({"params": params}, to_signed(images)))

