"""Whole tfds splits as numpy arrays, never downloading from library code.

Small image datasets (CIFAR-10: 60,000 x 32x32x3, 180 MB) are loaded fully
into memory; larger ones should be read through the streaming pipeline.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np

from etcjax.data import errors

_BATCH = 4096


def _builder(name: str, data_dir: Optional[str]):
  # Imported on use: tensorflow takes seconds to import, and most users of
  # etcjax.data (encrypted datasets, image folders) never need it.
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    return tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise errors.DataError(f"unknown tfds dataset {name!r}: {e}") from None


def load_tfds(name: str, split: str, data_dir: Optional[str] = None
              ) -> Tuple[np.ndarray, np.ndarray, List[str]]:
  """Loads a prepared tfds image-classification split into memory.

  Images keep the order of the prepared split files (no shuffling), so an
  image's position is its stable index in the split.

  Args:
    name: tfds builder name, optionally with config/version
      (e.g. 'cifar10', 'cifar10:3.0.2').
    split: a split name or tfds slice (e.g. 'train', 'test[:64]').
    data_dir: tfds data_dir; None means tfds' default (`$TFDS_DATA_DIR` or
      ~/tensorflow_datasets).

  Returns:
    `(images, labels, label_names)`: uint8 `[N, H, W, 3]` in [0, 255]
    (single-channel datasets repeated to 3 channels), int32 `[N]` labels in
    [0, len(label_names)), and the class names.

  Raises:
    FileNotFoundError: the dataset is not prepared under the data_dir (the
      message names the folder searched and how to prepare it).
    ValueError: unknown dataset or split, or not a fixed-size image
      classification dataset with 'image' and 'label' features.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = _builder(name, data_dir)
  if not builder.is_prepared():
    raise FileNotFoundError(
        f"tfds dataset {name!r} is not prepared in {builder.data_dir} "
        f"(data_dir {builder.data_dir_root}); etcjax never downloads data "
        f"itself. Prepare it on a connected machine with `tfds build {name} "
        f"--data_dir={builder.data_dir_root}` (or tfds.load(..., "
        "download=True)), or pass the data_dir that holds it")
  features = builder.info.features
  if "image" not in features or "label" not in features:
    raise errors.DataError(
        f"tfds dataset {name!r} has features {sorted(features.keys())}; "
        "expected an image classification dataset with 'image' and 'label'")
  shape = features["image"].shape
  if len(shape) != 3 or None in shape or shape[-1] not in (1, 3):
    raise errors.DataError(
        f"tfds dataset {name!r} has images of shape {shape}; load_tfds needs "
        "fixed-size [H, W, 1 or 3] images (export variable-size datasets to "
        "an image folder and resize them instead)")
  try:
    ds = builder.as_dataset(split=split, shuffle_files=False)
  except (ValueError, KeyError) as e:
    raise errors.DataError(
        f"tfds dataset {name!r} has no split {split!r} (splits: "
        f"{sorted(builder.info.splits.keys())}): {e}") from None
  ds = ds.map(lambda ex: (ex["image"], ex["label"]))
  images, labels = [], []
  for image_batch, label_batch in tfds.as_numpy(ds.batch(_BATCH)):
    images.append(image_batch)
    labels.append(label_batch)
  if not images:
    raise errors.DataError(f"split {split!r} of tfds dataset {name!r} is empty")
  images = np.concatenate(images).astype(np.uint8, copy=False)
  if images.shape[-1] == 1:
    images = np.repeat(images, 3, axis=-1)
  return (images, np.concatenate(labels).astype(np.int32),
          list(features["label"].names))


def label_names(name: str, data_dir: Optional[str] = None) -> List[str]:
  """Class names of a tfds dataset (from its metadata; no data is read).

  Args:
    name: tfds builder name.
    data_dir: tfds data_dir (None = tfds' default).

  Returns:
    The 'label' feature's names.
  """
  return list(_builder(name, data_dir).info.features["label"].names)


def version(name: str, data_dir: Optional[str] = None) -> str:
  """Version of a tfds dataset that `load_tfds` reads, e.g. '3.0.2'.

  Args:
    name: tfds builder name.
    data_dir: tfds data_dir (None = tfds' default).

  Returns:
    The builder's version string.
  """
  return str(_builder(name, data_dir).version)


def split_size(name: str, split: str, data_dir: Optional[str] = None) -> int:
  """Number of examples of a prepared split (from metadata).

  Args:
    name: tfds builder name.
    split: split name or slice.
    data_dir: tfds data_dir (None = tfds' default).

  Returns:
    The example count.
  """
  builder = _builder(name, data_dir)
  return int(builder.info.splits[split].num_examples)
