"""Block-wise adaptation networks of the paper's LE and ELE baselines.

LE (Tanaka, "Learnable Image Encryption", 2018) and ELE (Madono et al.,
"Block-wise Scrambled Image Recognition Using Adaptation Network", 2020)
place a trainable adaptation network before an ordinary classifier. It
works on M x M blocks (M = 4) of the 6-channel representation in which each
8-bit colour value is split into its upper and lower 4 bits:

1. images in [-1, 1] -> pixels 0..255 -> 6 planes of 4-bit values 0..15
   (upper R, G, B then lower R, G, B), rescaled to [-1, 1];
2. space-to-depth: each block becomes one vector of M*M*6 values;
3. dense layers on those vectors (1x1 convolutions on the block grid) with
   BatchNorm and ReLU. LE shares one network across all block positions;
   ELE has a separate sub-network per block position;
4. a last dense layer to M*M*3 values and depth-to-space back to an
   `[N, H, W, 3]` image for the classifier.

The paper's classifier behind them is PyramidNet with ShakeDrop; here a
CIFAR ResNet-18 stands in (registered as 'LE-ResNet-18', 'ELE-ResNet-18'),
and results must be reported under that name. The hidden widths are this
implementation's choice.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from etcjax.models.bias import Dense, add_bias
from etcjax.models.patch_embedding import check_images
from etcjax.models.patch_embedding import depth_to_space
from etcjax.models.patch_embedding import space_to_depth

BN_MOMENTUM = 0.9  # PyTorch's 0.1
BN_EPSILON = 1e-5


def nibble_planes(images):
  """Splits normalised images into their 4-bit planes.

  Args:
    images: float `[N, H, W, 3]` in [-1, 1], as `pixel / 127.5 - 1` of uint8
      pixels (values in between are rounded to the nearest pixel value).

  Returns:
    float32 `[N, H, W, 6]` in [-1, 1]: the upper 4 bits of R, G, B, then the
    lower 4 bits, each value v in 0..15 mapped to v / 7.5 - 1. Constant
    (zero gradient) in `images`: the representation is not differentiable.
  """
  pixels = jnp.clip(jnp.round((images.astype(jnp.float32) + 1) * 127.5), 0,
                    255)
  upper = jnp.floor(pixels / 16)
  lower = pixels - 16 * upper
  planes = jnp.concatenate([upper, lower], axis=-1) / 7.5 - 1
  return jax.lax.stop_gradient(planes)


class PerPositionDense(nn.Module):
  """A dense layer with separate weights at each grid position.

  Attributes:
    features: output width.
    dtype: compute dtype.
  """

  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    """`[N, h, w, D]` -> `[N, h, w, features]`; kernel `[h, w, D, features]`."""
    _, h, w, d = x.shape
    kernel = self.param("kernel", nn.initializers.lecun_normal(
        in_axis=-2, out_axis=-1, batch_axis=(0, 1)), (h, w, d, self.features),
                        jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (h, w, self.features),
                      jnp.float32)
    y = jnp.einsum("nhwd,hwdf->nhwf", x.astype(self.dtype),
                   kernel.astype(self.dtype))
    return add_bias(y, bias.astype(self.dtype))


class BlockwiseAdaptation(nn.Module):
  """Tanaka's (LE) or, with `per_position`, Madono's (ELE) adaptation network.

  Attributes:
    block_size: M, the encryption block size.
    hidden_features: widths of the hidden block-wise layers.
    out_channels: channels of the image handed to the classifier.
    per_position: separate weights (and BatchNorm statistics) per block
      position (ELE) instead of one network shared by all blocks (LE).
    dtype: compute dtype.
  """

  block_size: int = 4
  hidden_features: Sequence[int] = (384, 384)
  out_channels: int = 3
  per_position: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images, *, train: bool = False):
    """Maps (encrypted) images to classifier inputs.

    Args:
      images: float `[N, H, W, 3]` in [-1, 1]; H, W multiples of M.
      train: batch statistics for BatchNorm.

    Returns:
      `[N, H, W, out_channels]` in `dtype`, unbounded.
    """
    check_images(images, patch_size=self.block_size, channels=3,
                 model="BlockwiseAdaptation")
    m = self.block_size
    dense = PerPositionDense if self.per_position else Dense
    # Per-position statistics for ELE: its sub-networks share nothing.
    norm_axes = (-3, -2, -1) if self.per_position else -1
    norm = functools.partial(
        nn.BatchNorm, use_running_average=not train, axis=norm_axes,
        momentum=BN_MOMENTUM, epsilon=BN_EPSILON, dtype=self.dtype)
    x = space_to_depth(nibble_planes(images).astype(self.dtype), m)
    for i, width in enumerate(self.hidden_features):
      x = dense(width, dtype=self.dtype, name=f"dense_{i}")(x)
      x = nn.relu(norm(name=f"norm_{i}")(x))
    x = dense(m * m * self.out_channels, dtype=self.dtype,
              name=f"dense_{len(self.hidden_features)}")(x)
    return depth_to_space(x, m)


class AdaptedClassifier(nn.Module):
  """An adaptation network followed by a classifier.

  Attributes:
    adaptation: maps images `[N, H, W, 3]` to classifier inputs.
    classifier: maps those to logits.
  """

  adaptation: nn.Module
  classifier: nn.Module

  def __call__(self, images, *, train: bool = False):
    """Classifies images.

    Args:
      images: float `[N, H, W, 3]` in [-1, 1].
      train: passed to both parts.

    Returns:
      float32 logits `[N, num_classes]`.
    """
    return self.classifier(self.adaptation(images, train=train), train=train)
