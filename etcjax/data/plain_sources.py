"""The plain images a data owner encrypts: a tfds dataset or an image folder.

`open_source` opens some splits of a prepared tfds dataset (loaded into
memory) or of an image folder `ROOT/<split>/<class>/<image>` (read on
demand); `encrypted_writer` encrypts them into an encrypted dataset. Image
indices are positions in the split (for folders, in the sorted file list),
so they are the file stems of the encrypted dataset.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from etcjax.data import errors
from etcjax.data import image_folder


@dataclasses.dataclass
class SourceSplit:
  """The plain images of one split of a source.

  Attributes:
    name: the split's name.
    labels: int32 `[N]`, label of every image (indexing the source's
      `label_names`); an image's position is its source index.
    read: `index -> uint8 [H, W, 3]`; raises ValueError naming the image
      when it cannot be read.
    digest: for image folders, a hash of the split's file list: image
      indices are positions in it, so files written from another list must
      not be reused. None for tfds (fixed by the dataset version).
    describe: `index -> str` naming the image in messages (folders: its
      source file); None: "image <split>[<index>]".
  """

  name: str
  labels: np.ndarray
  read: Callable[[int], np.ndarray]
  digest: Optional[str] = None
  describe: Optional[Callable[[int], str]] = None

  def source_name(self, index: int) -> str:
    """How messages name image `index`: its source file, or split[index]."""
    if self.describe is not None:
      return self.describe(index)
    return f"image {self.name}[{index}]"

  def __len__(self) -> int:
    return len(self.labels)


@dataclasses.dataclass
class Source:
  """A dataset of plain images: a prepared tfds dataset or an image folder.

  Attributes:
    spec: the --source value ('tfds:NAME' or 'folder:ROOT').
    info: the manifest's `source` entry (kind, name, ...; no local paths).
    label_names: class names, shared by all splits.
    splits: the opened splits.
  """

  spec: str
  info: Dict[str, object]
  label_names: List[str]
  splits: List[SourceSplit]


def _open_tfds(name: str, splits: Sequence[str], data_dir: Optional[str],
               limit: Optional[int]) -> Tuple[Dict, List[str], List[SourceSplit]]:
  # Imported on use: tensorflow is slow to import and folder sources never
  # need it.
  from etcjax.data import tfds_source  # pylint: disable=g-import-not-at-top
  opened, names = [], None
  for split in splits:
    images, labels, names = tfds_source.load_tfds(
        name, f"{split}[:{limit}]" if limit else split, data_dir)
    opened.append(SourceSplit(
        split, labels, lambda i, images=images: images[i],
        describe=lambda i, split=split: f"image {name} {split}[{i}]"))
  version = str(tfds_source.version(name, data_dir))
  return {"kind": "tfds", "name": name, "version": version}, names, opened


def _open_folder(root: str, splits: Sequence[str], limit: Optional[int]
                 ) -> Tuple[Dict, List[str], List[SourceSplit]]:
  opened, names = [], None
  for split in splits:
    folder = image_folder.scan(os.path.join(root, split))
    if names is not None and folder.class_names != names:
      raise errors.DataError(
          f"split folders of {root} have different classes: "
          f"{splits[0]!r} has {names}, {split!r} has {folder.class_names}; "
          "every split needs the same class sub-folders")
    names = folder.class_names
    paths = folder.paths[:limit] if limit else folder.paths
    listing = "\n".join(os.path.relpath(p, root) for p in paths)
    opened.append(SourceSplit(
        split, folder.labels[:len(paths)],
        lambda i, paths=paths: image_folder.read_image(paths[i]),
        hashlib.sha256(listing.encode("utf-8")).hexdigest()[:16],
        describe=lambda i, paths=paths: f"source image {paths[i]}"))
  name = os.path.basename(os.path.normpath(os.path.abspath(root)))
  return {"kind": "folder", "name": name}, names, opened


def open_source(spec: str, splits: Sequence[str],
                tfds_data_dir: Optional[str] = None,
                limit: Optional[int] = None) -> Source:
  """Opens the plain images of some splits of a source.

  Args:
    spec: 'tfds:NAME' (a prepared tfds dataset) or 'folder:ROOT' (image
      folders `ROOT/<split>/<class>/<image>`).
    splits: split names ('train', 'test', ...; no tfds slicing).
    tfds_data_dir: tfds data_dir for tfds sources (None = tfds' default).
    limit: keep only the first `limit` images of every split (None = all).

  Returns:
    A `Source`. tfds splits are loaded into memory; folder images are read
    on demand.
  """
  kind, _, name = spec.partition(":")
  if kind not in ("tfds", "folder") or not name:
    raise errors.DataError(
        f"--source must be 'tfds:NAME' or 'folder:ROOT', got {spec!r}")
  if not splits:
    raise errors.SplitError("--split needs at least one split name")
  for split in splits:
    if not split or any(c in split for c in "[]:/\\%") or split.startswith("."):
      raise errors.SplitError(
          f"split name {split!r} is not a plain split name (no tfds slicing; "
          "use --limit to take the first images of a split)")
  if len(set(splits)) != len(splits):
    raise errors.SplitError(f"--split lists a split twice: {list(splits)}")
  if limit is not None and limit < 1:
    raise errors.DataError(
        f"--limit must be a positive number of images, got {limit}")
  if kind == "tfds":
    info, names, opened = _open_tfds(name, splits, tfds_data_dir, limit)
  else:
    info, names, opened = _open_folder(name, splits, limit)
  return Source(spec, info, names, opened)


def resize(image: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
  """Resizes one image (bicubic, plain domain) unless it already has `size`.

  Args:
    image: uint8 `[H, W, 3]`.
    size: `(H', W')`.

  Returns:
    uint8 `[H', W', 3]` (`image` itself when the size already matches).
  """
  if image.shape[:2] == tuple(size):
    return image
  pil = Image.fromarray(image).resize((size[1], size[0]),
                                      Image.Resampling.BICUBIC)
  return np.asarray(pil)


def first_image_shape(source: Source) -> Tuple[int, int, int]:
  """The shape `(H, W, 3)` of the first readable image of a source.

  Raises:
    DataError: none of the first readable candidates (up to 10 failures)
      could be read; the message lists why.
  """
  problems = []
  for split in source.splits:
    for i in range(len(split)):
      try:
        return tuple(split.read(i).shape)
      except errors.DataError as e:  # An unreadable image, named.
        problems.append(str(e))
        if len(problems) >= 10:
          break
  raise errors.DataError(
      f"no readable image found in {source.spec}: {problems}")
