"""Fixtures of the input pipeline tests: configs and small synthetic datasets.

Synthetic images carry their own identity: image i of a split has the value
i in its top-left pixel (and a pattern elsewhere), so tests can tell which
examples a pipeline yielded when augmentation is off.
"""

import os

import ml_collections
import numpy as np
import pytest
from PIL import Image

from etcjax.training import default_config

CLASSES = ("ant", "bee", "cat")
SIZE = 32


def synthetic_images(count: int, offset: int = 0, size: int = SIZE) -> np.ndarray:
  """uint8 `[count, size, size, 3]`; image i has top-left value offset + i."""
  rng = np.random.default_rng(offset)
  images = rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8)
  images[:, 0, 0, :] = (offset + np.arange(count))[:, None] % 256
  return images


def image_ids(images: np.ndarray, offset: int = 0) -> np.ndarray:
  """Inverse of `synthetic_images` for un-augmented images."""
  return images[:, 0, 0, 0].astype(np.int64) - offset


def write_folder(root, split: str, images: np.ndarray, labels) -> list:
  """Writes PNGs `root/<split>/<class>/<i:04d>.png`; returns their paths."""
  paths = []
  for i, (image, label) in enumerate(zip(images, labels)):
    folder = os.path.join(root, split, CLASSES[label])
    os.makedirs(folder, exist_ok=True)
    paths.append(os.path.join(folder, f"{i:04d}.png"))
    Image.fromarray(image).save(paths[-1])
  return paths


@pytest.fixture(scope="session")
def folder_dataset(tmp_path_factory):
  """A 3-class image folder: 'train' (40 images) and 'val' (23 images).

  Returns:
    dict with 'root', and per split `(images, labels)` indexed by image id
    (`image_ids`), not in the folder's file order.
  """
  root = str(tmp_path_factory.mktemp("folder"))
  out = {"root": root}
  for split, count, offset in (("train", 40, 0), ("val", 23, 100)):
    images = synthetic_images(count, offset)
    labels = np.arange(count) % len(CLASSES)
    write_folder(root, split, images, labels)
    out[split] = (images, labels.astype(np.int32))
  return out


@pytest.fixture
def make_config():
  """Builds a training config with overrides ('augment.crop' etc. allowed)."""

  def make(**overrides):
    config = default_config.get_default_config()
    # get_default_config's jpeg_quality placeholder is one object shared by
    # every config it returns, so setting it in one config sets it in all;
    # reset it and work on an independent copy.
    config.encryption.jpeg_quality = None
    config = ml_collections.ConfigDict(config.to_dict())
    config.augment.crop = "none"
    config.augment.flip = False
    for name, value in overrides.items():
      node = config
      *parents, leaf = name.split("__")
      for parent in parents:
        node = node[parent]
      node[leaf] = value
    return config

  return make
