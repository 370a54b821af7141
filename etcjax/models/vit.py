"""Vision Transformer with the parameter tree of the published vit_jax checkpoints.

Module and parameter names follow google-research/vision_transformer
(`models_vit.py`), so that `ViT-B_16.npz` (ImageNet-21k) loads by name:
`embedding/kernel`, `cls`, `Transformer/posembed_input/pos_embedding`,
`Transformer/encoderblock_{i}/{LayerNorm_0, MultiHeadDotProductAttention_1,
LayerNorm_2, MlpBlock_3}`, `Transformer/encoder_norm`, `pre_logits`, `head`.
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp

# Sizes from "An Image is Worth 16x16 Words" (Table 1) and DeiT for Ti/S.
VIT_SIZES = {
    "Ti": dict(hidden_size=192, num_layers=12, num_heads=3, mlp_dim=768),
    "S": dict(hidden_size=384, num_layers=12, num_heads=6, mlp_dim=1536),
    "B": dict(hidden_size=768, num_layers=12, num_heads=12, mlp_dim=3072),
    "L": dict(hidden_size=1024, num_layers=24, num_heads=16, mlp_dim=4096),
}


def check_images(images, patch_size: int, model: str) -> None:
  """Raises a clear error for inputs a patch-based model cannot take."""
  if images.ndim != 4:
    raise ValueError(
        f"{model} expects images [N, H, W, 3], got shape {tuple(images.shape)}")
  _, h, w, c = images.shape
  if c != 3:
    raise ValueError(f"{model} expects 3-channel RGB images, got {c} channels")
  if h % patch_size or w % patch_size:
    raise ValueError(
        f"{model} needs image sizes divisible by its patch size {patch_size}, "
        f"got {h}x{w}")


class AddPositionEmbs(nn.Module):
  """Adds a learned position embedding `[1, L, D]` to the token sequence."""

  @nn.compact
  def __call__(self, inputs):
    pos = self.param("pos_embedding", nn.initializers.normal(stddev=0.02),
                     (1,) + inputs.shape[1:], jnp.float32)
    return inputs + pos.astype(inputs.dtype)


class MlpBlock(nn.Module):
  """Dense -> exact GELU -> Dense."""

  mlp_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    out_dim = x.shape[-1]
    init = dict(kernel_init=nn.initializers.xavier_uniform(),
                bias_init=nn.initializers.normal(stddev=1e-6), dtype=self.dtype)
    x = nn.Dense(self.mlp_dim, name="Dense_0", **init)(x)
    x = nn.gelu(x, approximate=False)
    return nn.Dense(out_dim, name="Dense_1", **init)(x)


class Encoder1DBlock(nn.Module):
  """Pre-LayerNorm transformer block."""

  mlp_dim: int
  num_heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    # Explicit names: current flax numbers auto-names per type, while the
    # published checkpoints use one counter across the block's submodules.
    y = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="LayerNorm_0")(x)
    y = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads, dtype=self.dtype,
        kernel_init=nn.initializers.xavier_uniform(),
        name="MultiHeadDotProductAttention_1")(y, y)
    x = x + y
    y = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="LayerNorm_2")(x)
    y = MlpBlock(self.mlp_dim, dtype=self.dtype, name="MlpBlock_3")(y)
    return x + y


class Encoder(nn.Module):
  num_layers: int
  mlp_dim: int
  num_heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = AddPositionEmbs(name="posembed_input")(x)
    for i in range(self.num_layers):
      x = Encoder1DBlock(self.mlp_dim, self.num_heads, dtype=self.dtype,
                         name=f"encoderblock_{i}")(x)
    return nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="encoder_norm")(x)


class VisionTransformer(nn.Module):
  """ViT classifier (class-token readout).

  Attributes:
    num_classes: size of the head.
    patch_size: side of the square patches (stride of the patch conv).
    hidden_size, num_layers, num_heads, mlp_dim: transformer sizes.
    representation_size: width of the tanh pre-logits layer, None for none.
    dtype: compute dtype (bfloat16 on TPU); parameters stay float32.
  """

  num_classes: int
  patch_size: int
  hidden_size: int
  num_layers: int
  num_heads: int
  mlp_dim: int
  representation_size: Optional[int] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images, *, train: bool = False):
    """Classifies images.

    Args:
      images: float `[N, H, W, 3]` in [-1, 1] (pixel / 127.5 - 1); H and W
        multiples of `patch_size`.
      train: unused (no dropout), kept for a uniform model interface.

    Returns:
      float32 logits `[N, num_classes]`.
    """
    del train
    check_images(images, self.patch_size, "ViT")
    p = self.patch_size
    x = nn.Conv(self.hidden_size, (p, p), strides=(p, p), padding="VALID",
                dtype=self.dtype, name="embedding")(images.astype(self.dtype))
    n, h, w, d = x.shape
    x = x.reshape(n, h * w, d)
    cls = self.param("cls", nn.initializers.zeros, (1, 1, d), jnp.float32)
    x = jnp.concatenate([jnp.tile(cls.astype(x.dtype), (n, 1, 1)), x], axis=1)
    x = Encoder(self.num_layers, self.mlp_dim, self.num_heads, dtype=self.dtype,
                name="Transformer")(x)
    x = x[:, 0]
    if self.representation_size is not None:
      x = nn.tanh(nn.Dense(self.representation_size, dtype=self.dtype,
                           name="pre_logits")(x))
    x = nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros,
                 dtype=self.dtype, name="head")(x)
    return x.astype(jnp.float32)
