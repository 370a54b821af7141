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

Both can run on S x S pixel cells (`space_to_depth` = S): the image is cut
into cells, each cell's S*S*3 values become one position's channels, and
(for the U-Net) the output is put back the same way, as in pixel-shuffle
super-resolution (Shi et al. 2016). The networks then work on an image S
times smaller with more channels. Why: XLA:CPU computes the weight
gradients of convolutions on large grids with few channels very slowly
(measured 10-20x their forward pass at 32x32 with 32 channels, 4x at 8x8
with 128), so S = 2 trains the CIFAR-10 U-Net 8x faster on a CPU
(benchmarks/attack_networks_speed.py). The same is done for the other
ops that are slow to differentiate there: 2x2 max pooling is a reshape and
a max, and the 2x2 stride-2 transposed convolution is a dense layer per
position followed by depth-to-space (the same function, computed as a
matmul).
"""

from __future__ import annotations

import functools
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from etcjax.data import sharding
from etcjax.evaluation.attacks import threat_model
from etcjax.models import patch_embedding


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


def max_pool_2x2(x):
  """2x2 max pooling with stride 2: `[N, H, W, C]` -> `[N, H/2, W/2, C]`."""
  n, h, w, c = x.shape
  return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class Upsample2x(nn.Module):
  """The 2x2 stride-2 transposed convolution, as a dense layer and depth-to-space.

  Attributes:
    features: output channels.
  """

  features: int

  @nn.compact
  def __call__(self, x):
    """Maps `[N, H, W, C]` to `[N, 2H, 2W, features]`."""
    return patch_embedding.depth_to_space(nn.Dense(4 * self.features)(x), 2)


class UNet(nn.Module):
  """U-Net generator.

  Attributes:
    features: channels per level, finest first; the image side must be
      divisible by `space_to_depth` * 2^(len(features) - 1).
    out_channels: output channels.
    space_to_depth: S, the side of the pixel cells the network works on
      (1: single pixels).
  """

  features: Sequence[int] = (32, 64, 128)
  out_channels: int = 3
  space_to_depth: int = 1

  @nn.compact
  def __call__(self, x):
    """Maps float32 `[N, H, W, C]` in [-1, 1] to `[N, H, W, out]` in [-1, 1]."""
    s = self.space_to_depth
    x = patch_embedding.space_to_depth(x, s)
    skips = []
    for level, features in enumerate(self.features):
      if level:
        x = max_pool_2x2(x)
      x = ConvBlock(features)(x)
      skips.append(x)
    for features, skip in zip(reversed(self.features[:-1]),
                              reversed(skips[:-1])):
      x = Upsample2x(features)(x)
      x = ConvBlock(features)(jnp.concatenate([x, skip], axis=-1))
    x = nn.Conv(self.out_channels * s * s, (1, 1))(x)
    return jnp.tanh(patch_embedding.depth_to_space(x, s))


class PatchDiscriminator(nn.Module):
  """PatchGAN discriminator.

  Attributes:
    features: channels of the strided convolutions.
    space_to_depth: S, the side of the pixel cells it works on.
  """

  features: Sequence[int] = (32, 64, 128)
  space_to_depth: int = 1

  @nn.compact
  def __call__(self, x):
    """Maps float32 `[N, H, W, C]` in [-1, 1] to logits `[N, h, w, 1]`."""
    x = patch_embedding.space_to_depth(x, self.space_to_depth)
    for level, features in enumerate(self.features):
      x = nn.Conv(features, (4, 4), strides=(2, 2) if level < 2 else (1, 1))(x)
      if level:
        x = nn.GroupNorm(num_groups=_groups(features))(x)
      x = nn.leaky_relu(x, 0.2)
    return nn.Conv(1, (4, 4))(x)


def widths(width: int, levels: int = 3) -> Sequence[int]:
  """Channels per level: `width`, doubling per level."""
  return tuple(width * 2**i for i in range(levels))


def generator(size: threat_model.TrainingSize, image_shape) -> UNet:
  """The U-Net of a learned attack of this size, for `(H, W, 3)` images."""
  size.check_fits(image_shape)
  return UNet(widths(size.width, size.levels),
              space_to_depth=size.space_to_depth)


def discriminator(size: threat_model.TrainingSize,
                  image_shape) -> PatchDiscriminator:
  """The GAN attack's discriminator of this size, for `(H, W, 3)` images."""
  size.check_fits(image_shape)
  return PatchDiscriminator(widths(size.width, size.levels),
                            space_to_depth=size.space_to_depth)


def to_signed(images) -> jnp.ndarray:
  """uint8 [0, 255] -> float32 [-1, 1]."""
  return jnp.asarray(images, jnp.float32) / 127.5 - 1.0


def to_uint8(x) -> jnp.ndarray:
  """float [-1, 1] -> uint8 [0, 255] (rounded, clipped)."""
  return jnp.clip(jnp.round((x + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


def predict(module: nn.Module, params, images, batch_size: int = 64,
            mesh: Optional[Mesh] = None):
  """Runs an image-to-image network over a uint8 batch, split over devices.

  Args:
    module: a `UNet`.
    params: its parameters.
    images: uint8 `[N, H, W, C]`.
    batch_size: images per call (rounded up to a multiple of the devices).
    mesh: the devices (default: `sharding.make_mesh()`, all of them).

  Returns:
    uint8 numpy `[N, H, W, out_channels]`.
  """
  mesh = sharding.make_mesh() if mesh is None else mesh
  devices = mesh.devices.size
  chunk = -(-batch_size // devices) * devices
  params = sharding.replicate(params, mesh)
  out = []
  for start in range(0, len(images), chunk):
    part = np.asarray(images[start:start + chunk])
    pad = -len(part) % devices  # The last chunk: every device gets as many.
    padded = np.concatenate([part, np.zeros((pad,) + part.shape[1:], part.dtype)])
    result = _apply_uint8(module, params, sharding.global_batch(padded, mesh))
    out.append(np.asarray(result)[:len(part)])
  return np.concatenate(out)


@functools.partial(jax.jit, static_argnums=0)
def _apply_uint8(module, params, images):
  return to_uint8(module.apply({"params": params}, to_signed(images)))

