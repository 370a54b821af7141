"""Image folders laid out as `root/<class>/<image>` (ImageNet style).

Class names are the sub-folder names in sorted order; labels are their
indices. Greyscale or palette images decode to RGB.
"""

from __future__ import annotations

import dataclasses
import os
from typing import List, Sequence

import numpy as np
from PIL import Image

from etcjax.data import errors

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif",
                    ".tiff")


@dataclasses.dataclass(frozen=True)
class ImageFolder:
  """The files of an image folder.

  Attributes:
    root: the folder.
    paths: path of every image, sorted by class then file name.
    labels: int32 `[len(paths)]`, class index of every image.
    class_names: sub-folder names, sorted; `labels` index into it.
  """

  root: str
  paths: List[str]
  labels: np.ndarray
  class_names: List[str]

  def __len__(self) -> int:
    return len(self.paths)


def scan(root: str | os.PathLike,
         extensions: Sequence[str] = IMAGE_EXTENSIONS) -> ImageFolder:
  """Lists the images of `root/<class>/*`.

  Args:
    root: folder with one sub-folder per class.
    extensions: file endings counted as images (case-insensitive).

  Returns:
    An `ImageFolder`.

  Raises:
    FileNotFoundError: `root` is not a directory.
    ValueError: `root` has no class sub-folders or no images.
  """
  root = os.fspath(root)
  if not os.path.isdir(root):
    raise FileNotFoundError(
        f"image folder {root} does not exist or is not a directory; expected "
        "root/<class>/<image files>")
  class_names = sorted(
      d for d in os.listdir(root)
      if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))
  if not class_names:
    raise errors.DataError(
        f"image folder {root} has no class sub-folders; expected "
        "root/<class>/<image files>")
  exts = tuple(e.lower() for e in extensions)
  paths, labels = [], []
  for label, name in enumerate(class_names):
    folder = os.path.join(root, name)
    for file in sorted(os.listdir(folder)):
      if file.lower().endswith(exts) and not file.startswith("."):
        paths.append(os.path.join(folder, file))
        labels.append(label)
  if not paths:
    raise errors.DataError(
        f"image folder {root} has class folders {class_names[:5]} but no "
        f"images with endings {list(exts)}")
  return ImageFolder(root, paths, np.asarray(labels, np.int32), class_names)


def read_image(path: str | os.PathLike) -> np.ndarray:
  """Decodes one image file to RGB.

  Args:
    path: an image file PIL can read.

  Returns:
    uint8 `[H, W, 3]` in [0, 255].

  Raises:
    ValueError: the file is not a readable image (the message names it).
  """
  try:
    with Image.open(path) as image:
      return np.asarray(image.convert("RGB"), dtype=np.uint8)
  except (OSError, SyntaxError, ValueError) as e:
    raise errors.DataError(f"cannot read image {os.fspath(path)}: {e}") from None
