"""ConvMixer (Trockman & Kolter, "Patches Are All You Need?")."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from etcjax.models.vit import check_images


class DepthwiseConv(nn.Module):
  """k x k depthwise convolution, 'SAME' padding, with bias.

  Parameters `kernel` `[k, k, 1, C]` and `bias` `[C]`, identical to
  `nn.Conv(C, (k, k), feature_group_count=C)` so checkpoints move freely.
  """

  kernel_size: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    k = self.kernel_size
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, k, 1, c),
                        jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    y = jax.lax.conv_general_dilated(
        x, kernel.astype(self.dtype), (1, 1), "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=c)
    return y + bias.astype(self.dtype)


class ConvMixer(nn.Module):
  """ConvMixer-dim/depth with patch size P and kernel size k.

  Attributes:
    num_classes: size of the head.
    dim: channels (the "D" of ConvMixer-D/depth).
    depth: number of mixer layers.
    patch_size: P, stride of the patch embedding.
    kernel_size: k of the depthwise convolutions.
    dtype: compute dtype; parameters and BatchNorm statistics stay float32.
  """

  num_classes: int
  dim: int
  depth: int
  patch_size: int
  kernel_size: int = 9
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images, *, train: bool = False):
    """Classifies images.

    Args:
      images: float `[N, H, W, 3]` in [-1, 1]; H, W multiples of patch_size.
      train: use batch statistics (and update `batch_stats`) when True.
        Under `jax.jit` with the batch sharded over devices, the batch mean
        is the global-batch mean: no cross-device axis name is needed.

    Returns:
      float32 logits `[N, num_classes]`.
    """
    check_images(images, self.patch_size, "ConvMixer")
    norm = lambda name: nn.BatchNorm(
        use_running_average=not train, momentum=0.9, epsilon=1e-5,
        dtype=self.dtype, name=name)
    p = self.patch_size
    x = nn.Conv(self.dim, (p, p), strides=(p, p), padding="VALID",
                dtype=self.dtype, name="patch_embed")(images.astype(self.dtype))
    x = norm("patch_norm")(nn.gelu(x, approximate=False))
    for i in range(self.depth):
      y = DepthwiseConv(self.kernel_size, dtype=self.dtype,
                        name=f"depthwise_{i}")(x)
      x = x + norm(f"depthwise_norm_{i}")(nn.gelu(y, approximate=False))
      x = nn.Conv(self.dim, (1, 1), dtype=self.dtype, name=f"pointwise_{i}")(x)
      x = norm(f"pointwise_norm_{i}")(nn.gelu(x, approximate=False))
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x).astype(
        jnp.float32)
