r"""Classifies images with an exported model.

    # The data owner: plain images, encrypted here with the key first.
    python -m etcjax.predict --export=WORKDIR/export --key=owner.key cat.png dogs/
    # The cloud: images that are already encrypted (no key).
    python -m etcjax.predict --export=WORKDIR/export --encrypted enc/000001.png

For a model trained on encrypted images, plain images are encrypted with
the given key (refused unless its fingerprint is the one the model was
trained with) and, if the model was trained on JPEG-compressed encrypted
images, JPEG-compressed the same way. Prints one line per image:
`path<TAB>label<TAB>probability` (or JSON with --json). Exit status 1 on
a wrong key or unusable image, 2 on usage errors.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import jax
import numpy as np
from PIL import Image

from etcjax import encryption
from etcjax.data import image_folder
from etcjax.encryption import jpeg
from etcjax.training import export as export_lib
from etcjax.training import steps

_BATCH = 128


class Classifier:
  """An exported model ready to classify batches of images."""

  def __init__(self, export_dir: str):
    """Loads an export.

    Args:
      export_dir: folder written at the end of training (`WORKDIR/export`).
    """
    self.module, self.variables, self.info = export_lib.load(export_dir)
    self._logits = jax.jit(
        lambda variables, x: self.module.apply(variables, x, train=False))

  @property
  def encrypted_model(self) -> bool:
    """Whether the model was trained on encrypted images."""
    return self.info["scheme"] is not None

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
      ValueError: wrong shapes, or the arguments do not fit the model.
    """
    info = self.info
    if not self.encrypted_model:
      if key is not None or encrypted:
        raise ValueError(
            "this model was trained on plain images: classify plain images "
            "without a key (drop --key / --encrypted)")
      _check_shape(images, info["image_shape"], "plain images")
      return images
    if encrypted:
      if key is not None:
        raise ValueError("pass either a key (plain images) or --encrypted, "
                         "not both")
      _check_shape(images, info["input_shape"], "encrypted images")
      return images
    if key is None:
      raise ValueError(
          f"this model classifies images encrypted with scheme "
          f"{info['scheme']!r} and key fingerprint {info['key_fingerprint']}: "
          "pass the key (--key=KEY_FILE) to encrypt plain images, or "
          "--encrypted for images that are already encrypted")
    encryption.check_fingerprint(key, info["key_fingerprint"], "the model")
    _check_shape(images, info["image_shape"], "plain images")
    # With the export's steps: a key-adapted ConvMixer, e.g., expects
    # 'block_common' without block scrambling.
    plan = export_lib.encryption_plan(info, key)
    encrypted_images = encryption.apply_numpy(plan, images)
    if info["jpeg_quality"] is not None:
      encrypted_images = jpeg.jpeg_round_trip(
          encrypted_images, info["jpeg_quality"], "4:2:0")
    return encrypted_images

  def probabilities(self, model_inputs: np.ndarray) -> np.ndarray:
    """Class probabilities of model inputs.

    Args:
      model_inputs: uint8 `[N] + input_shape` (see `model_inputs`).

    Returns:
      float32 `[N, num_classes]`, rows summing to 1.
    """
    out = []
    for start in range(0, len(model_inputs), _BATCH):
      x = steps.normalize(model_inputs[start:start + _BATCH])
      out.append(np.asarray(jax.nn.softmax(self._logits(self.variables, x))))
    return np.concatenate(out)

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
    raise ValueError(
        f"{what} must be uint8 [N, {', '.join(map(str, expected))}], got "
        f"{images.dtype} {tuple(images.shape)}")


def find_images(paths: Sequence[str]) -> List[str]:
  """Expands files and folders (recursively) into image files, sorted per folder.

  Args:
    paths: image files and/or folders.

  Returns:
    Image file paths.

  Raises:
    FileNotFoundError: a path does not exist, or a folder holds no images.
  """
  files = []
  for path in paths:
    if os.path.isdir(path):
      found = sorted(
          os.path.join(d, f) for d, _, names in os.walk(path) for f in names
          if f.lower().endswith(image_folder.IMAGE_EXTENSIONS))
      if not found:
        raise FileNotFoundError(f"folder {path} holds no image files")
      files.extend(found)
    elif os.path.isfile(path):
      files.append(path)
    else:
      raise FileNotFoundError(f"{path} does not exist")
  return files


def read_images(files: Sequence[str], shape, encrypted: bool,
                resize: bool) -> np.ndarray:
  """Reads image files into one batch of the given shape.

  Args:
    files: image paths.
    shape: `(H, W, 3)` every image must have.
    encrypted: the files are encrypted images (JPEGs are decoded as the
      training pipeline does; no resizing is possible).
    resize: resize plain images of another size (bicubic).

  Returns:
    uint8 `[len(files), H, W, 3]`.

  Raises:
    ValueError: an unreadable file, or one of another size (named).
  """
  out = np.empty((len(files),) + tuple(shape), np.uint8)
  for i, path in enumerate(files):
    if encrypted:
      with open(path, "rb") as f:
        image = jpeg.decode_image(f.read(), channels=shape[-1], name=path)
    else:
      image = image_folder.read_image(path)
    if image.shape != tuple(shape):
      if resize and not encrypted:
        image = np.asarray(Image.fromarray(image).resize(
            (shape[1], shape[0]), Image.BICUBIC))
      else:
        hint = ("" if encrypted else
                " (pass --resize to resize plain images)")
        raise ValueError(
            f"{path} is {image.shape[1]}x{image.shape[0]}, the model needs "
            f"{shape[1]}x{shape[0]} images{hint}")
    out[i] = image
  return out


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="python -m etcjax.predict", description=__doc__.split("\n\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("images", nargs="+", help="image files or folders")
  p.add_argument("--export", required=True,
                 help="export folder (WORKDIR/export of a training run)")
  p.add_argument("--key", default=None,
                 help="key file: encrypt plain images for an encrypted model")
  p.add_argument("--encrypted", action="store_true",
                 help="the images are already encrypted")
  p.add_argument("--resize", action="store_true",
                 help="resize plain images to the model's size")
  p.add_argument("--json", action="store_true",
                 help="print JSON: [{path, label, probability, "
                 "probabilities}]")
  return p


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = _parser().parse_args(argv)
  try:
    classifier = Classifier(args.export)
    info = classifier.info
    if args.key is not None and args.encrypted:
      raise ValueError("pass either --key (plain images) or --encrypted, "
                       "not both")
    # Check the key before reading any image: a wrong key fails fast.
    key = encryption.load_key(args.key) if args.key else None
    if key is not None and classifier.encrypted_model:
      encryption.check_fingerprint(key, info["key_fingerprint"], "the model")
    files = find_images(args.images)
    shape = info["input_shape"] if args.encrypted else info["image_shape"]
    images = read_images(files, shape, args.encrypted, args.resize)
    labels, probs = classifier.classify(images, key, args.encrypted)
  except (ValueError, FileNotFoundError, PermissionError) as e:
    # KeyMismatchError and InvalidKeyError are ValueErrors.
    print(f"error: {e}", file=sys.stderr)
    return 1
  names = info["label_names"]
  rows: List[Dict] = [
      {"path": path, "label": names[label],
       "probability": float(prob[label]),
       "probabilities": [float(p) for p in prob]}
      for path, label, prob in zip(files, labels, probs)]
  if args.json:
    print(json.dumps(rows, indent=2))
  else:
    for row in rows:
      print(f"{row['path']}\t{row['label']}\t{row['probability']:.4f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
