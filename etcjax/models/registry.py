"""Model registry: names to module constructors, and initialisation."""

from __future__ import annotations

import functools
from typing import Any, Callable, Dict, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from etcjax.models import convmixer
from etcjax.models import vit

# name -> constructor(num_classes, dtype) -> flax module.
MODELS: Dict[str, Callable[..., nn.Module]] = {}

for _size, _sizes in vit.VIT_SIZES.items():
  for _patch in (16, 32):
    MODELS[f"ViT-{_size}_{_patch}"] = functools.partial(
        vit.VisionTransformer, patch_size=_patch, **_sizes)

# The paper's presets: 256/8 with P=1 for CIFAR-10, 384/8 with P=4 for
# Imagenette; both with k=9.
MODELS["ConvMixer-256/8"] = functools.partial(
    convmixer.ConvMixer, dim=256, depth=8, patch_size=1, kernel_size=9)
MODELS["ConvMixer-384/8"] = functools.partial(
    convmixer.ConvMixer, dim=384, depth=8, patch_size=4, kernel_size=9)


def list_models():
  """Returns the registered model names, sorted."""
  return sorted(MODELS)


def build(name: str, num_classes: int, dtype=jnp.float32, **overrides) -> nn.Module:
  """Builds the module of a registered model.

  Args:
    name: a registered name (see `list_models()`).
    num_classes: classifier outputs.
    dtype: compute dtype (parameters are float32).
    **overrides: module attributes to change (e.g. `patch_size=2`).

  Returns:
    The flax module.
  """
  if name not in MODELS:
    raise ValueError(f"unknown model {name!r}; known models: {list_models()}")
  if num_classes < 1:
    raise ValueError(f"num_classes must be positive, got {num_classes}")
  return MODELS[name](num_classes=num_classes, dtype=dtype, **overrides)


def init_variables(module: nn.Module, image_size: int, rng):
  """Initialises a module's variables for `[1, image_size, image_size, 3]` inputs.

  Pure in `rng`, so
  `jax.eval_shape(functools.partial(init_variables, module, size), rng)`
  gives the shapes without computing anything (init from shapes, then
  shard with `jax.jit(..., out_shardings=...)`).

  Args:
    module: a model from `build`.
    image_size: side of the square input images.
    rng: a `jax.random` key.

  Returns:
    The variables dict ('params', and 'batch_stats' for BatchNorm models).
  """
  images = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  return module.init(rng, images, train=False)


def create(name: str, num_classes: int, image_size: int, *, rng=0,
           dtype=jnp.float32, **overrides) -> Tuple[nn.Module, Any]:
  """Builds a model and initialises its variables.

  Args:
    name: a registered model name, e.g. 'ViT-B_16', 'ConvMixer-256/8'.
    num_classes: classifier outputs.
    image_size: side of the square input images.
    rng: int seed or a `jax.random` key.
    dtype: compute dtype.
    **overrides: module attributes to change.

  Returns:
    `(module, variables)`: `variables['params']` (and `['batch_stats']` for
    models with BatchNorm).
  """
  module = build(name, num_classes, dtype, **overrides)
  if isinstance(rng, int):
    rng = jax.random.PRNGKey(rng)
  return module, jax.jit(functools.partial(init_variables, module, image_size))(rng)
