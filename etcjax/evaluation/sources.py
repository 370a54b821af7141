"""The evaluation datasets as in-memory uint8 arrays.

Two datasets, as in the paper: CIFAR-10 (32x32, read through tfds, never
downloaded) and Imagenette (an image folder `ROOT/{train,val}/<class>/*`
of equally sized images, 224x224 in our copy). Subsets are deterministic:
the first images of a CIFAR-10 split (stored in random order), evenly
spaced images of a folder (sorted by class, so every class is covered).
"""

from __future__ import annotations

import dataclasses
import os
from typing import List, Optional, Sequence

import numpy as np
import tqdm

from etcjax import encryption
from etcjax.data import image_folder
from etcjax.data import tfds_source
from etcjax.evaluation import requests

# Dataset name -> (split of evaluation images, split the adversary learns
# the data distribution from).
DATASETS = {"cifar10": ("test", "train"), "imagenette": ("val", "train")}


@dataclasses.dataclass(frozen=True)
class Images:
  """Images of one split.

  Attributes:
    dataset: 'cifar10' or 'imagenette'.
    split: split name.
    images: uint8 `[N, H, W, 3]` in [0, 255].
    labels: int32 `[N]`.
    indices: int64 `[N]`, each image's index in its full split (stable ids,
      e.g. for per-image keys).
    label_names: class names.
  """

  dataset: str
  split: str
  images: np.ndarray
  labels: np.ndarray
  indices: np.ndarray
  label_names: List[str]

  def __len__(self) -> int:
    return len(self.images)


def check_dataset(name: str) -> str:
  """Returns `name` if it is a known dataset, else raises listing them."""
  if name not in DATASETS:
    raise requests.RequestError(f"unknown dataset {name!r}; known datasets: {sorted(DATASETS)}")
  return name


def check_size(size: str, sizes) -> str:
  """Returns `size` if it names a preset in `sizes`, else raises listing them."""
  if size not in sizes:
    raise requests.RequestError(f"unknown size {size!r}; sizes: {list(sizes)}")
  return size


def check_limit(limit: Optional[int], what: str = "an image limit"
                ) -> Optional[int]:
  """Returns `limit` if None or positive, else raises (0 must not mean all)."""
  if limit is not None and limit < 1:
    raise requests.RequestError(f"{what} must be positive, got {limit}")
  return limit


def subset(count: int, limit: Optional[int]) -> np.ndarray:
  """Evenly spaced indices of `limit` of `count` items (all when None).

  Args:
    count: number of items.
    limit: how many to keep; None or >= count keeps all.

  Returns:
    int64 `[min(count, limit)]`, sorted, distinct.
  """
  if limit is not None and limit < 1:
    raise requests.RequestError(f"an image limit must be positive, got {limit}")
  if limit is None or limit >= count:
    return np.arange(count)
  return np.unique(np.linspace(0, count - 1, limit).round().astype(np.int64))


def load(dataset: str, split: str, *, data_dir: Optional[str] = None,
         imagenette_dir: Optional[str] = None, limit: Optional[int] = None,
         progress: bool = True) -> Images:
  """Loads (part of) a split into memory.

  Args:
    dataset: 'cifar10' (tfds) or 'imagenette' (image folder).
    split: 'train'/'test' for cifar10, 'train'/'val' for imagenette.
    data_dir: tfds data_dir for cifar10 (None = tfds' default).
    imagenette_dir: the Imagenette folder (required for 'imagenette').
    limit: keep this many evenly spaced images (all when None).
    progress: show a progress bar while decoding image files.

  Returns:
    The `Images`.

  Raises:
    FileNotFoundError: the data is not where it was said to be.
    ValueError: unknown dataset or split, or images of unequal size.
  """
  check_dataset(dataset)
  if dataset == "cifar10":
    if limit is not None and limit < 1:
      raise requests.RequestError(f"an image limit must be positive, got {limit}")
    # CIFAR-10's splits are in random order, so their first images are a
    # fair sample, and reading only those is much faster.
    spec = f"{split}[:{limit}]" if limit else split
    images, labels, names = tfds_source.load_tfds("cifar10", spec, data_dir)
    return Images(dataset, split, images, labels, np.arange(len(images)),
                  names)
  if not imagenette_dir:
    raise requests.RequestError(
        "dataset 'imagenette' needs --imagenette_dir: a folder with train/ "
        "and val/ sub-folders of class folders of equally sized images")
  if not os.path.isdir(imagenette_dir):
    raise FileNotFoundError(
        f"--imagenette_dir {imagenette_dir} does not exist or is not a folder")
  root = os.path.join(imagenette_dir, split)
  if not os.path.isdir(root):
    present = sorted(d for d in os.listdir(imagenette_dir)
                     if os.path.isdir(os.path.join(imagenette_dir, d)))
    raise FileNotFoundError(
        f"split folder {root} does not exist; {imagenette_dir} has "
        f"{present or 'no sub-folders'} (expected train/ and val/)")
  folder = image_folder.scan(root)
  keep = subset(len(folder), limit)
  images = [image_folder.read_image(folder.paths[i])
            for i in tqdm.tqdm(keep, desc=f"reading {dataset}/{split}",
                               unit="img", disable=not progress, leave=False)]
  _check_same_size(images, [folder.paths[i] for i in keep])
  return Images(dataset, split, np.stack(images), folder.labels[keep], keep,
                folder.class_names)


def _check_same_size(images: Sequence[np.ndarray], paths: Sequence[str]) -> None:
  first = images[0].shape
  for image, path in zip(images, paths):
    if image.shape != first:
      raise requests.RequestError(
          f"images of an evaluation split must share one size: {paths[0]} is "
          f"{first[1]}x{first[0]} but {path} is {image.shape[1]}x"
          f"{image.shape[0]}; resize the folder's images to one size (a "
          "multiple of the block size) first")


def encrypt(images: Images, key: bytes, scheme: str,
            block_size: Optional[int] = None, chunk: int = 2048) -> np.ndarray:
  """Encrypts a split with a key, in chunks (bounded device memory).

  Args:
    images: the plain `Images`.
    key: the secret key, 32 bytes.
    scheme: a name in `encryption.SCHEMES`; 'pe_per_image' keys each image
      by its index in the split (`images.indices`).
    block_size: block side; the scheme's default when None.
    chunk: images per encryption call.

  Returns:
    uint8 `[N] + encrypted_shape` numpy array.
  """
  per_image = scheme == "pe_per_image"
  parts = []
  for start in range(0, len(images), chunk):
    batch = images.images[start:start + chunk]
    ids = images.indices[start:start + chunk] if per_image else None
    parts.append(encryption.encrypt(batch, key, scheme, block_size,
                                    image_ids=ids))
  return np.concatenate(parts)
