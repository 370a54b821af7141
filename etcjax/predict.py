r"""Classifies images with an exported model.

    # The data owner: plain images, encrypted here with the key first.
    python -m etcjax.predict --export=WORKDIR/export --key_file=owner.key cat.png dogs/
    # The cloud: images that are already encrypted (no key).
    python -m etcjax.predict --export=WORKDIR/export --encrypted enc/000001.png

For a model trained on encrypted images, plain images are encrypted with
the given key (refused unless its fingerprint is the one the model was
trained with) and, if the model was trained on JPEG-compressed encrypted
images, JPEG-compressed the same way. Prints one line per image:
`path<TAB>label<TAB>probability` (or JSON with --json). Exit status 1 on
a wrong key or unusable image (one line on stderr), 2 on usage errors.
(`--key` is the old name of `--key_file`.)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from etcjax import command_line
from etcjax import encryption
from etcjax import inference
from etcjax.data import errors as data_errors
from etcjax.data import image_folder
from etcjax.encryption import jpeg


# The library's classifier (kept here under its old name).
Classifier = inference.Classifier


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
    InputError: an unreadable file, or one of another size (named).
  """
  out = np.empty((len(files),) + tuple(shape), np.uint8)
  for i, path in enumerate(files):
    try:
      if encrypted:
        with open(path, "rb") as f:
          image = jpeg.decode_image(f.read(), channels=shape[-1], name=path)
      else:
        image = image_folder.read_image(path)
    except (data_errors.DataError, jpeg.UndecodableImageError) as e:
      # An unreadable image file, named.
      raise inference.InputError(str(e)) from None
    if image.shape != tuple(shape):
      if resize and not encrypted:
        image = np.asarray(Image.fromarray(image).resize(
            (shape[1], shape[0]), Image.BICUBIC))
      else:
        hint = ("" if encrypted else
                " (pass --resize to resize plain images)")
        raise inference.InputError(
            f"{path} is {image.shape[1]}x{image.shape[0]}, the model needs "
            f"{shape[1]}x{shape[0]} images{hint}")
    out[i] = image
  return out


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="python -m etcjax.predict", description=__doc__.split("\n\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("images", nargs="+", type=command_line.path_arg,
                 help="image files or folders")
  p.add_argument("--export", required=True, type=command_line.path_arg,
                 help="export folder (WORKDIR/export of a training run)")
  p.add_argument("--key_file", default=None, type=command_line.path_arg,
                 help="key file: encrypt plain images for an encrypted model")
  command_line.add_alias(p, "--key", "--key_file",
                         type=command_line.path_arg)
  p.add_argument("--encrypted", action="store_true",
                 help="the images are already encrypted")
  p.add_argument("--resize", action="store_true",
                 help="resize plain images to the model's size")
  p.add_argument("--json", action="store_true",
                 help="print JSON: [{path, label, probability, "
                 "probabilities}]")
  return p


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Runs the CLI; returns the exit status."""
  return command_line.run(_main, argv)


def _main(argv: Optional[Sequence[str]]) -> int:
  args = _parser().parse_args(argv)
  if args.key_file is not None and args.encrypted:
    raise command_line.UsageError(
        "pass either --key_file (plain images) or --encrypted, not both")
  classifier = inference.Classifier(args.export)
  info = classifier.info
  # Check the key before reading any image: a wrong key fails fast.
  key = encryption.load_key(args.key_file) if args.key_file else None
  if key is not None and classifier.encrypted_model:
    classifier.plan(key)
  files = find_images(args.images)
  shape = info["input_shape"] if args.encrypted else info["image_shape"]
  images = read_images(files, shape, args.encrypted, args.resize)
  labels, probs = classifier.classify(images, key, args.encrypted)
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
