"""Vision Transformer with the parameter tree of the published vit_jax checkpoints.

Module and parameter names follow google-research/vision_transformer, so
that `ViT-B_16.npz` (ImageNet-21k) loads by name, with no conversion:
`embedding/{kernel,bias}`, `cls`, `Transformer/posembed_input/pos_embedding`,
`Transformer/encoderblock_{i}/{LayerNorm_0, MultiHeadDotProductAttention_1,
LayerNorm_2, MlpBlock_3/{Dense_0, Dense_1}}`, `Transformer/encoder_norm`,
`pre_logits` (only with `representation_size`) and `head`.

Numerics: pre-LayerNorm blocks with epsilon 1e-6 and exact (erf) GELU, as in
the original TensorFlow/JAX ViT and timm. (vit_jax's Flax port calls
`nn.gelu`, whose default is the tanh approximation; the two differ by less
than 1e-3 per activation.)
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from etcjax.models.attention import DenseGeneralParams, SelfAttention
from etcjax.models.bias import Dense
from etcjax.models.gelu import gelu_with_bias
from etcjax.models.layer_norm import LayerNorm
from etcjax.models.patch_embedding import PatchEmbedding, check_images
from etcjax.models.per_position_embedding import PerPositionPatchEmbedding

# Sizes from "An Image is Worth 16x16 Words" (Table 1); Ti and S from DeiT,
# as published in vit_jax's AugReg checkpoints.
VIT_SIZES = {
    "Ti": dict(hidden_size=192, num_layers=12, num_heads=3, mlp_dim=768),
    "S": dict(hidden_size=384, num_layers=12, num_heads=6, mlp_dim=1536),
    "B": dict(hidden_size=768, num_layers=12, num_heads=12, mlp_dim=3072),
    "L": dict(hidden_size=1024, num_layers=24, num_heads=16, mlp_dim=4096),
}

# The published combinations of size and patch size, named as the files.
VIT_VARIANTS = {
    "ViT-Ti_16": dict(VIT_SIZES["Ti"], patch_size=16),
    "ViT-S_16": dict(VIT_SIZES["S"], patch_size=16),
    "ViT-B_16": dict(VIT_SIZES["B"], patch_size=16),
    "ViT-B_32": dict(VIT_SIZES["B"], patch_size=32),
    "ViT-L_16": dict(VIT_SIZES["L"], patch_size=16),
}


class AddPositionEmbs(nn.Module):
  """Adds a learned position embedding `[1, L, D]` to the token sequence."""

  @nn.compact
  def __call__(self, tokens):
    """Adds the embedding.

    Args:
      tokens: `[N, L, D]`, the class token first.

    Returns:
      `[N, L, D]`, same dtype.

    Raises:
      ValueError: the stored embedding was made for another number of tokens
        (another image or patch size).
    """
    shape = (1,) + tuple(tokens.shape[1:])
    if self.has_variable("params", "pos_embedding"):
      stored = self.get_variable("params", "pos_embedding").shape
      if tuple(stored) != shape:
        raise ValueError(
            f"position embedding has shape {tuple(stored)} but the images give "
            f"{shape[1]} tokens of width {shape[2]}: the parameters were made "
            "for another image or patch size; resample them with "
            "etcjax.models.load_pretrained or resample_posemb")
    pos = self.param("pos_embedding", nn.initializers.normal(stddev=0.02),
                     shape, jnp.float32)
    return tokens + pos.astype(tokens.dtype)


class MlpBlock(nn.Module):
  """Dense -> exact GELU -> dropout -> Dense -> dropout.

  Attributes:
    mlp_dim: hidden width.
    dropout_rate: dropout after each Dense when training.
    dtype: compute dtype.
  """

  mlp_dim: int
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, deterministic: bool):
    """`[N, L, D]` -> `[N, L, D]`."""
    bias_init = nn.initializers.normal(stddev=1e-6)
    out_dim = x.shape[-1]
    # Dense_0's bias is added inside gelu_with_bias (one pass over the
    # [N, L, mlp_dim] activations); its parameters are nn.Dense's.
    kernel, bias = DenseGeneralParams((out_dim, self.mlp_dim), 1,
                                      bias_init=bias_init, name="Dense_0")()
    x = gelu_with_bias(x @ kernel.astype(self.dtype), bias)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
    x = Dense(out_dim, kernel_init=nn.initializers.xavier_uniform(),
              bias_init=bias_init, dtype=self.dtype, name="Dense_1")(x)
    return nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)


class Encoder1DBlock(nn.Module):
  """Pre-LayerNorm transformer block: x + MHA(LN(x)), then x + MLP(LN(x)).

  Attributes:
    mlp_dim: MLP hidden width.
    num_heads: attention heads.
    dropout_rate: dropout on the residual branches.
    attention_dropout_rate: dropout on the attention weights.
    dtype: compute dtype.
    attention_method: see `attention.select_method`.
  """

  mlp_dim: int
  num_heads: int
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  attention_method: str = "auto"

  @nn.compact
  def __call__(self, x, *, deterministic: bool):
    """`[N, L, D]` -> `[N, L, D]`."""
    # Explicit names: linen numbers auto-names per module type, while the
    # published checkpoints (pre-linen) used one counter for the block.
    y = LayerNorm(epsilon=1e-6, dtype=self.dtype, name="LayerNorm_0")(x)
    y = SelfAttention(
        self.num_heads, self.attention_dropout_rate, dtype=self.dtype,
        method=self.attention_method,
        name="MultiHeadDotProductAttention_1")(y, deterministic=deterministic)
    y = nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)
    x = x + y
    y = LayerNorm(epsilon=1e-6, dtype=self.dtype, name="LayerNorm_2")(x)
    y = MlpBlock(self.mlp_dim, self.dropout_rate, dtype=self.dtype,
                 name="MlpBlock_3")(y, deterministic=deterministic)
    return x + y


class Encoder(nn.Module):
  """Position embedding, `num_layers` blocks and the final LayerNorm."""

  num_layers: int
  mlp_dim: int
  num_heads: int
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  attention_method: str = "auto"

  @nn.compact
  def __call__(self, x, *, train: bool):
    """`[N, L, D]` -> `[N, L, D]`."""
    x = AddPositionEmbs(name="posembed_input")(x)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
    for i in range(self.num_layers):
      x = Encoder1DBlock(
          self.mlp_dim, self.num_heads, self.dropout_rate,
          self.attention_dropout_rate, dtype=self.dtype,
          attention_method=self.attention_method,
          name=f"encoderblock_{i}")(x, deterministic=not train)
    return LayerNorm(epsilon=1e-6, dtype=self.dtype, name="encoder_norm")(x)


class VisionTransformer(nn.Module):
  """ViT classifier with class-token readout.

  Attributes:
    num_classes: size of the head.
    patch_size: side of the square patches.
    hidden_size: token width D.
    num_layers: encoder blocks.
    num_heads: attention heads.
    mlp_dim: MLP hidden width.
    representation_size: width of the tanh pre-logits layer; None for none
      (the fine-tuning setting of vit_jax).
    dropout_rate: dropout after the position embedding and on residual
      branches (active only with `train=True`; needs a 'dropout' rng).
    attention_dropout_rate: dropout on attention weights.
    in_channels: channels of the input images.
    per_position_embedding: one patch-embedding kernel per patch position
      (`embedding/kernel` `[nb, P, P, C, D]`), a key-aware first layer for
      the paper's EtC; see `per_position_embedding.py`.
    dtype: compute dtype (bfloat16 on TPU); parameters stay float32 and the
      logits are float32.
    attention_method: how attention is computed ('auto', 'xla', 'native';
      see `attention.select_method`); parameters and function are the same.
  """

  num_classes: int
  patch_size: int
  hidden_size: int
  num_layers: int
  num_heads: int
  mlp_dim: int
  representation_size: Optional[int] = None
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  in_channels: int = 3
  per_position_embedding: bool = False
  dtype: Any = jnp.float32
  attention_method: str = "auto"

  @nn.compact
  def __call__(self, images, *, train: bool = False):
    """Classifies images.

    Args:
      images: float `[N, H, W, in_channels]` in [-1, 1] (pixel / 127.5 - 1);
        H and W multiples of `patch_size`.
      train: enables dropout.

    Returns:
      float32 logits `[N, num_classes]`.
    """
    check_images(images, patch_size=self.patch_size,
                 channels=self.in_channels, model="ViT")
    embed = (PerPositionPatchEmbedding if self.per_position_embedding
             else PatchEmbedding)
    x = embed(self.hidden_size, self.patch_size, dtype=self.dtype,
              name="embedding")(images)
    n, h, w, d = x.shape
    x = x.reshape(n, h * w, d)
    cls = self.param("cls", nn.initializers.zeros, (1, 1, d), jnp.float32)
    x = jnp.concatenate([jnp.tile(cls.astype(x.dtype), (n, 1, 1)), x], axis=1)
    x = Encoder(self.num_layers, self.mlp_dim, self.num_heads,
                self.dropout_rate, self.attention_dropout_rate,
                dtype=self.dtype, attention_method=self.attention_method,
                name="Transformer")(x, train=train)
    x = x[:, 0]
    if self.representation_size is not None:
      x = nn.tanh(Dense(self.representation_size, dtype=self.dtype,
                        name="pre_logits")(x))
    x = Dense(self.num_classes, kernel_init=nn.initializers.zeros,
              dtype=self.dtype, name="head")(x)
    return x.astype(jnp.float32)
