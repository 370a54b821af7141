"""Classifying images with a model: what the model sees, batched and jitted.

One path for every user of a trained or exported model (`predict`, the
accuracy evaluation, key-adapted models): plain images are encrypted with
the model's plan, JPEG-compressed if the model was trained so, normalised
to [-1, 1] and classified in fixed-size batches by one jitted apply.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from etcjax import encryption
from etcjax import errors
from etcjax.encryption import jpeg
from etcjax.inference import export as export_lib

BATCH_SIZE = 256


class InputError(errors.UserError, ValueError):
  """Images or arguments that do not fit the model (shape, key, flags)."""


def normalize(images):
  """Maps pixel values to the models' input range.

  Args:
    images: `[N, H, W, C]` uint8 or float in [0, 255] (numpy or jax).

  Returns:
    float32 `[N, H, W, C]` in [-1, 1].
  """
  return jnp.asarray(images).astype(jnp.float32) / 127.5 - 1.0


def model_inputs(images: np.ndarray, plan: Optional[encryption.Plan],
                 quality: Optional[int]) -> np.ndarray:
  """What the model sees: plain images encrypted, then JPEG-coded.

  Args:
    images: uint8 `[N, H, W, 3]` plain images.
    plan: the model's encryption plan, or None for a plain-image model.
    quality: JPEG quality factor (4:2:0, as `python -m etcjax.encrypt`
      writes), or None for no compression.

  Returns:
    uint8 `[N] + input_shape`.
  """
  x = images if plan is None else encryption.apply_numpy(plan, images)
  if quality is not None:
    x = jpeg.jpeg_round_trip(x, quality, "4:2:0")
  return x


class Model:
  """A flax module and its variables, applied in batches by one jitted call."""

  def __init__(self, module, variables: Dict[str, Any],
               batch_size: int = BATCH_SIZE):
    """Wraps a model.

    Args:
      module: a flax module; `module.apply(variables, x, train=False)` maps
        float32 `[n] + input_shape` in [-1, 1] to logits `[n, classes]`.
      variables: its variables.
      batch_size: images per forward pass.
    """
    self.module, self.variables, self.batch_size = module, variables, batch_size
    # Same-shaped inputs (plain and encrypted images) compile once.
    self._apply = jax.jit(
        lambda v, x: module.apply(v, normalize(x), train=False))

  def logits(self, images: np.ndarray) -> np.ndarray:
    """Logits of model inputs.

    Args:
      images: uint8 `[N] + input_shape` in [0, 255].

    Returns:
      float32 `[N, num_classes]`.
    """
    return np.concatenate([
        np.asarray(self._apply(self.variables,
                               images[i:i + self.batch_size]))
        for i in range(0, len(images), self.batch_size)])

  def probabilities(self, images: np.ndarray) -> np.ndarray:
    """Class probabilities: float32 `[N, num_classes]`, rows summing to 1."""
    return np.asarray(jax.nn.softmax(self.logits(images), axis=-1))

  def predict(self, images: np.ndarray) -> np.ndarray:
    """Predicted labels: int32 `[N]`."""
    return self.logits(images).argmax(-1).astype(np.int32)


class Classifier(Model):
  """An exported model ready to classify plain or encrypted images."""

  def __init__(self, export_dir: str, batch_size: int = 128):
    """Loads an export.

    Args:
      export_dir: folder written at the end of training (`WORKDIR/export`)
        or by `python -m etcjax.adapt export`.
      batch_size: images per forward pass.

    Raises:
      FileNotFoundError: no complete export there.
      ExportError: not a usable etcjax export.
    """
    module, variables, self.info = export_lib.load(export_dir)
    self.export_dir = export_dir
    super().__init__(module, variables, batch_size)

  @property
  def encrypted_model(self) -> bool:
    """Whether the model was trained on encrypted images."""
    return self.info["scheme"] is not None

  def plan(self, key: bytes) -> Optional[encryption.Plan]:
    """The plan that encrypts plain images as the model expects.

    Raises:
      KeyMismatchError: the key is not the one the model was trained with.
    """
    return export_lib.encryption_plan(self.info, key,
                                      f"the model in {self.export_dir}")

  def model_inputs(self, images: np.ndarray, key: Optional[bytes] = None,
                   encrypted: bool = False) -> np.ndarray:
    """Turns a batch into what the model was trained on.

    Args:
      images: uint8 `[N, H, W, 3]`: plain images of the export's
        `image_shape`, or, with `encrypted`, encrypted images of its
        `input_shape`.
      key: the data owner's key, to encrypt plain images for a model
        trained on encrypted images.
      encrypted: the images are already encrypted (no key needed).

    Returns:
      uint8 `[N] + input_shape`.

    Raises:
      KeyMismatchError: the key is not the one the model was trained with.
      InputError: wrong shapes, or the arguments do not fit the model.
    """
    info = self.info
    if not self.encrypted_model:
      if key is not None or encrypted:
        raise InputError(
            "this model was trained on plain images: classify plain images "
            "without a key (drop --key_file / --encrypted)")
      _check_shape(images, info["image_shape"], "plain images")
      return images
    if encrypted:
      if key is not None:
        raise InputError("pass either a key (plain images) or --encrypted, "
                         "not both")
      _check_shape(images, info["input_shape"], "encrypted images")
      return images
    if key is None:
      raise InputError(
          f"this model classifies images encrypted with scheme "
          f"{info['scheme']!r} and key fingerprint {info['key_fingerprint']}: "
          "pass the key (--key_file=KEY_FILE) to encrypt plain images, or "
          "--encrypted for images that are already encrypted")
    plan = self.plan(key)
    _check_shape(images, info["image_shape"], "plain images")
    # With the export's steps: a key-adapted ConvMixer, e.g., expects
    # 'block_common' without block scrambling.
    return model_inputs(images, plan, info["jpeg_quality"])

  def classify(self, images: np.ndarray, key: Optional[bytes] = None,
               encrypted: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    """Predicted labels and probabilities.

    Args:
      images, key, encrypted: as for `model_inputs`.

    Returns:
      `(labels, probabilities)`: int32 `[N]` indices into
      `info['label_names']`, float32 `[N, num_classes]`.
    """
    probs = self.probabilities(self.model_inputs(images, key, encrypted))
    return probs.argmax(-1).astype(np.int32), probs


def _check_shape(images: np.ndarray, expected, what: str) -> None:
  if images.dtype != np.uint8 or images.ndim != 4 or \
      tuple(images.shape[1:]) != tuple(expected):
    raise InputError(
        f"{what} must be uint8 [N, {', '.join(map(str, expected))}], got "
        f"{images.dtype} {tuple(images.shape)}")
