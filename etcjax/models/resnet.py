"""ResNet-18, CIFAR variant: the classifier of the paper's PE baseline.

He et al.'s basic-block ResNet-18 adapted to 32x32 inputs as is usual for
CIFAR: a 3x3 stride-1 stem without max-pooling, four stages of two basic
blocks with 64, 128, 256, 512 channels (stride 2 at stages 2-4, 1x1
projection shortcuts where the shape changes), global average pooling and a
dense head: 11.17 M parameters with 10 classes.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from etcjax.models.bias import Dense
from etcjax.models.patch_embedding import check_images

BN_MOMENTUM = 0.9  # PyTorch's 0.1
BN_EPSILON = 1e-5


class BasicBlock(nn.Module):
  """relu(BN(conv3x3(relu(BN(conv3x3(x))))) + shortcut(x)).

  Attributes:
    features: output channels.
    stride: stride of the first conv (and of the projection shortcut).
    train: use batch statistics.
    dtype: compute dtype.
  """

  features: int
  stride: int
  train: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    """`[N, H, W, C]` -> `[N, H/stride, W/stride, features]`."""
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype)
    norm = functools.partial(nn.BatchNorm, use_running_average=not self.train,
                             momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                             dtype=self.dtype)
    y = conv(self.features, (3, 3), self.stride, padding=1, name="conv1")(x)
    y = nn.relu(norm(name="norm1")(y))
    y = conv(self.features, (3, 3), 1, padding=1, name="conv2")(y)
    y = norm(name="norm2")(y)
    if self.stride != 1 or x.shape[-1] != self.features:
      x = conv(self.features, (1, 1), self.stride, name="shortcut_conv")(x)
      x = norm(name="shortcut_norm")(x)
    return nn.relu(x + y)


class ResNet(nn.Module):
  """CIFAR-style ResNet of basic blocks.

  Attributes:
    num_classes: size of the head.
    stage_sizes: blocks per stage; (2, 2, 2, 2) is ResNet-18.
    width: channels of the first stage (doubled at each later stage).
    in_channels: channels of the input images.
    dtype: compute dtype; parameters and BatchNorm statistics stay float32.
  """

  num_classes: int
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  width: int = 64
  in_channels: int = 3
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images, *, train: bool = False):
    """Classifies images.

    Args:
      images: float `[N, H, W, in_channels]` in [-1, 1]; H and W multiples of
        2**(len(stage_sizes) - 1) so that every stride-2 stage halves evenly.
      train: batch statistics (apply with `mutable=['batch_stats']`).

    Returns:
      float32 logits `[N, num_classes]`.
    """
    check_images(images, patch_size=2 ** (len(self.stage_sizes) - 1),
                 channels=self.in_channels, model="ResNet")
    x = nn.Conv(self.width, (3, 3), padding=1, use_bias=False,
                dtype=self.dtype, name="stem_conv")(images.astype(self.dtype))
    x = nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM,
                     epsilon=BN_EPSILON, dtype=self.dtype, name="stem_norm")(x)
    x = nn.relu(x)
    for s, blocks in enumerate(self.stage_sizes):
      for b in range(blocks):
        x = BasicBlock(self.width * 2 ** s, 2 if s > 0 and b == 0 else 1,
                       train, dtype=self.dtype,
                       name=f"stage{s + 1}_block{b + 1}")(x)
    x = jnp.mean(x, axis=(1, 2))
    x = Dense(self.num_classes, dtype=self.dtype, name="head")(x)
    return x.astype(jnp.float32)
