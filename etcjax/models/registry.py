"""Model registry: names to module constructors, and initialisation."""

from __future__ import annotations

import functools
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from etcjax import errors
from etcjax.models import adaptation_networks
from etcjax.models import convmixer
from etcjax.models import resnet
from etcjax.models import vit


class UnknownModelError(errors.UserError, ValueError):
  """A model name that is not in `MODELS` (the message lists the known ones)."""


class ModelParameterError(errors.UserError, ValueError):
  """A model argument out of range, e.g. num_classes < 1."""


# name -> constructor(num_classes=..., dtype=..., **overrides) -> flax module.
MODELS: Dict[str, Callable[..., nn.Module]] = {}

for _name, _config in vit.VIT_VARIANTS.items():
  MODELS[_name] = functools.partial(vit.VisionTransformer, **_config)

# The paper's presets: 256/8 with P=1 for CIFAR-10 (0.71 M parameters) and
# 384/8 with P=4 for Imagenette (1.47 M); both with k=9. Other sizes by
# overriding dim, depth, patch_size, kernel_size.
MODELS["ConvMixer-256/8"] = functools.partial(
    convmixer.ConvMixer, dim=256, depth=8, patch_size=1, kernel_size=9)
MODELS["ConvMixer-384/8"] = functools.partial(
    convmixer.ConvMixer, dim=384, depth=8, patch_size=4, kernel_size=9)

# PE baseline classifier.
MODELS["ResNet-18"] = functools.partial(resnet.ResNet, stage_sizes=(2, 2, 2, 2))


def _adapted_resnet18(num_classes: int, dtype=jnp.float32, *,
                      per_position: bool, block_size: int = 4,
                      hidden_features=(384, 384), width: int = 64,
                      stage_sizes=(2, 2, 2, 2)) -> nn.Module:
  return adaptation_networks.AdaptedClassifier(
      adaptation=adaptation_networks.BlockwiseAdaptation(
          block_size=block_size, hidden_features=tuple(hidden_features),
          per_position=per_position, dtype=dtype),
      classifier=resnet.ResNet(num_classes, stage_sizes=tuple(stage_sizes),
                               width=width, dtype=dtype))


# LE and ELE baselines: their adaptation networks in front of ResNet-18 (the
# paper uses PyramidNet + ShakeDrop; report these under their own names).
MODELS["LE-ResNet-18"] = functools.partial(_adapted_resnet18,
                                           per_position=False)
MODELS["ELE-ResNet-18"] = functools.partial(_adapted_resnet18,
                                            per_position=True)


def list_models():
  """Returns the registered model names, sorted."""
  return sorted(MODELS)


def describe(name: str, overrides: Optional[Mapping[str, Any]] = None) -> str:
  """A model's display name with its constructor overrides, for logs and tables.

  A registered name with overrides is another model (e.g. 'ConvMixer-256/8'
  with dim=128 is not ConvMixer-256/8), so tables must not show the name
  alone.

  Args:
    name: a registered name.
    overrides: the `build` overrides ({} or None: the model as named).

  Returns:
    E.g. 'ConvMixer-256/8 (depth=6, dim=128)' or 'ViT-B_16'.
  """
  if not overrides:
    return name
  return f"{name} ({', '.join(f'{k}={v}' for k, v in sorted(overrides.items()))})"


def build(name: str, num_classes: int, dtype=jnp.float32,
          **overrides) -> nn.Module:
  """Builds the module of a registered model.

  Args:
    name: a registered name (see `list_models()`).
    num_classes: classifier outputs (>= 1).
    dtype: compute dtype (parameters are float32).
    **overrides: constructor arguments to change (e.g. `num_layers=2`,
      `patch_size=2`, `representation_size=768`).

  Returns:
    The flax module; `module.apply(variables, images, train=False)` maps
    float32 `[N, H, W, 3]` images in [-1, 1] to float32 logits.

  Raises:
    UnknownModelError: an unknown name (the message lists the known ones).
    ModelParameterError: num_classes < 1.
  """
  if name not in MODELS:
    raise UnknownModelError(
        f"unknown model {name!r}; known models: {list_models()}")
  if num_classes < 1:
    raise ModelParameterError(
        f"num_classes must be positive, got {num_classes}")
  return MODELS[name](num_classes=num_classes, dtype=dtype, **overrides)


def init_variables(module: nn.Module, image_size: int, rng) -> Dict[str, Any]:
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
    The variables dict: 'params' (float32), and 'batch_stats' for models
    with BatchNorm.
  """
  images = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  return module.init(rng, images, train=False)


def create(name: str, num_classes: int, image_size: int, *, rng=0,
           dtype=jnp.float32, init: bool = True,
           **overrides) -> Tuple[nn.Module, Any]:
  """Builds a model and initialises its variables.

  Args:
    name: a registered model name, e.g. 'ViT-B_16', 'ConvMixer-256/8'.
    num_classes: classifier outputs.
    image_size: side of the square input images.
    rng: int seed or a `jax.random` key.
    dtype: compute dtype.
    init: if False, return `jax.ShapeDtypeStruct`s instead of arrays
      (nothing is computed).
    **overrides: module attributes to change.

  Returns:
    `(module, variables)`: `variables['params']` (and `['batch_stats']` for
    models with BatchNorm).
  """
  module = build(name, num_classes, dtype, **overrides)
  if isinstance(rng, int):
    rng = jax.random.PRNGKey(rng)
  initialise = functools.partial(init_variables, module, image_size)
  if not init:
    return module, jax.eval_shape(initialise, rng)
  return module, jax.jit(initialise)(rng)
