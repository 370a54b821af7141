"""The examples of one split, held for random access by example index.

Three kinds of source:

* tfds datasets (fixed-size images, e.g. CIFAR-10): decoded uint8 arrays
  in memory (CIFAR-10 train is 150 MB), read once per process and cached.
* image folders `root/<split>/<class>/*`: only the file list is held; files
  are read and decoded lazily, per example, in the tf.data graph. This
  scales to folders far larger than memory, and after the first epoch the
  OS page cache serves the reads.
* encrypted datasets written by `python -m etcjax.encrypt`: like folders,
  with files listed from the manifest. JPEGs are decoded with chroma
  replication (no "fancy" upsampling), which keeps EtC images
  JPEG-compliant (see `etcjax.encryption.jpeg`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import re
import threading
from typing import Dict, List, Optional, Tuple

import numpy as np
import tensorflow as tf

from etcjax.data import encrypted_dataset
from etcjax.data import errors
from etcjax.data import image_folder

# Formats tf.io.decode_image reads; folders with other files (TIFF, PPM)
# are decoded with PIL through tf.numpy_function, which is slower.
_TF_DECODABLE = (".jpg", ".jpeg", ".png", ".bmp", ".gif")

# Decoders of file sources.
DECODE_IMAGE = "image"  # tf.io.decode_image, RGB.
DECODE_PIL = "pil"  # image_folder.read_image, RGB.
DECODE_JPEG = "jpeg"  # tf.io.decode_jpeg without fancy upsampling.
DECODE_PNG = "png"  # tf.io.decode_png.


SplitError = errors.SplitError


def sha256_digest(data: bytes) -> bytes:
  """The 32-byte SHA-256 of a file's bytes, as `Source.hashes` records it."""
  return hashlib.sha256(data).digest()


class _Verified:
  """What `Source.check_hashes` has verified of one Source's files.

  `done` bool `[N]` and `fingerprints` int64 `[N]` (allocated on first
  use), guarded by `lock`: tf.data may run checks of several batches at
  once.
  """

  def __init__(self):
    self.lock = threading.Lock()
    self.done: Optional[np.ndarray] = None
    self.fingerprints: Optional[np.ndarray] = None

# 'train', 'train[:2048]', 'test[100:]', 'train[:10%]', 'val[-500:]'.
_SPLIT = re.compile(r"([\w.-]+)(?:\[(-?\d+%?)?:(-?\d+%?)?\])?")


def parse_split(split: str) -> Tuple[str, Optional[Tuple[str, str]]]:
  """Splits a split spec into its name and its slice bounds.

  Every kind of source reads the same specs: a split name, optionally with
  a tfds-style slice `[start:stop]` of example counts or percentages
  (`train[:2048]`, `test[:10%]`, `train[-500:]`).

  Args:
    split: the spec.

  Returns:
    `(name, None)` without a slice, else `(name, (start, stop))` with the
    bounds as written ('' = open).

  Raises:
    SplitError: a malformed spec.
  """
  match = _SPLIT.fullmatch(split.strip()) if isinstance(split, str) else None
  if match is None:
    raise errors.SplitError(
        f"cannot read the split {split!r}: expected a split name, optionally "
        "with a slice such as 'train[:2048]', 'test[100:]' or 'train[:10%]'")
  name, start, stop = match.groups()
  if "[" not in split:
    return name, None
  return name, (start or "", stop or "")


def _bound(text: str, count: int, default: int) -> int:
  if not text:
    return default
  value = (int(text[:-1]) * count) // 100 if text.endswith("%") else int(text)
  return max(0, min(count, value if value >= 0 else count + value))


def select(source: "Source", split: str) -> "Source":
  """The examples of `source` that a split spec's slice names.

  Folders and encrypted datasets list their files class by class, so a
  slice there takes its examples in a fixed pseudo-random order of the
  split (the same on every host and run): `train[:2048]` covers every
  class, and `train[:N]` / `train[N:]` are disjoint. (tfds slices the
  prepared files' own, already mixed, order instead; `load_tfds_split`
  passes specs to tfds.)

  Args:
    source: a whole split.
    split: its spec, e.g. 'train[:2048]' (no slice: `source` itself).

  Returns:
    A `Source` with the selected examples, in their original order.

  Raises:
    SplitError: a malformed spec or an empty selection.
  """
  _, bounds = parse_split(split)
  if bounds is None:
    return source
  count = len(source)
  start, stop = _bound(bounds[0], count, 0), _bound(bounds[1], count, count)
  order = np.random.default_rng(0x5eed).permutation(count)
  chosen = np.sort(order[start:stop])
  if not len(chosen):
    raise errors.SplitError(f"split {split!r} selects no example of "
                     f"{source.description} ({count} examples)")
  return dataclasses.replace(
      source, labels=source.labels[chosen],
      images=None if source.images is None else source.images[chosen],
      paths=None if source.paths is None else source.paths[chosen],
      hashes=None if source.hashes is None else source.hashes[chosen],
      description=f"{source.description}, slice {split!r}")


@dataclasses.dataclass(frozen=True)
class Source:
  """One split, in memory (`images`) or as files (`paths`).

  Attributes:
    labels: int32 `[N]` in [0, len(label_names)).
    label_names: class names.
    description: how messages name the split, e.g. "split 'val' of image
      folder /data/imagenette".
    images: uint8 `[N, H, W, C]` (read-only), or None for file sources.
    paths: `[N]` file paths (numpy bytes array), or None.
    decoder: for file sources, one of DECODE_*.
    channels: channels of the decoded images (3, or 1 for grayscale-based
      EtC datasets).
    image_shape: `(H, W, C)` of every image when known to be fixed, else
      None (image folders may mix sizes).
    hashes: for encrypted datasets, object `[N]` of 32-byte SHA-256
      digests of every file as written (`encrypted_dataset.file_hash`);
      the pipeline then checks each batch's files: a file's SHA-256 once
      per Source (`check_hashes`), then the cheap fingerprint of the bytes
      that matched it, in the tf.data graph.
  """

  labels: np.ndarray
  label_names: List[str]
  description: str
  images: Optional[np.ndarray] = None
  paths: Optional[np.ndarray] = None
  decoder: Optional[str] = None
  channels: int = 3
  image_shape: Optional[Tuple[int, int, int]] = None
  hashes: Optional[np.ndarray] = None
  # Not an init field: `select` and `dataclasses.replace` make Sources of
  # other files, which start with nothing verified.
  _verified: "_Verified" = dataclasses.field(
      init=False, default_factory=lambda: _Verified(), compare=False,
      repr=False)

  def __len__(self) -> int:
    return len(self.labels)

  def check_hashes(self, index: np.ndarray, data: np.ndarray,
                   fingerprints: np.ndarray) -> np.bool_:
    """Checks files against `hashes`, each SHA-256 at most once per Source.

    The pipeline calls this (through tf.numpy_function, possibly from
    several tf.data threads at once) for the files of a batch whose bytes'
    fingerprint it has not yet seen verified. A file not verified before is
    SHA-256'd against its recorded digest and, when it matches, its
    fingerprint is recorded; a file verified before must have the
    fingerprint recorded then (bytes other than those that matched the
    digest cannot match it).

    Args:
      index: int64 `[n]` positions of the files in this split.
      data: object `[n]`, the files' bytes.
      fingerprints: int64 `[n]`, `tf.fingerprint` (farmhash64) of each
        file's bytes, as the pipeline computed it.

    Returns:
      bool: every file matches (the pipeline names a damaged one with
      `read_verified`).
    """
    record = self._verified
    # One lock around the whole check, hashing included: a file in two
    # batches in flight at once (an epoch's end and the next one's start)
    # is hashed once, not twice. Hashing a batch takes well under a
    # millisecond for CIFAR-size files, and only on a file's first epoch.
    with record.lock:
      if record.done is None:
        record.done = np.zeros(len(self), bool)
        record.fingerprints = np.zeros(len(self), np.int64)
      ok = True
      for i, d, f in zip(index, data, fingerprints):
        if record.done[i]:
          ok &= bool(record.fingerprints[i] == f)
        elif sha256_digest(d) == self.hashes[i]:
          record.fingerprints[i] = f
          record.done[i] = True
        else:
          ok = False
      return np.bool_(ok)

  def verified_fingerprints(self) -> Tuple[np.ndarray, np.ndarray]:
    """The files `check_hashes` verified so far, for the in-graph check.

    Returns:
      `(done, fingerprints)`: bool `[N]`, whether file i passed its SHA-256
      check, and int64 `[N]`, the farmhash64 fingerprint of the bytes that
      passed it (0 where not done). Copies.
    """
    record = self._verified
    with record.lock:
      if record.done is None:
        return np.zeros(len(self), bool), np.zeros(len(self), np.int64)
      return record.done.copy(), record.fingerprints.copy()

  def read_verified(self, index: np.ndarray) -> None:
    """Reads some files and checks them against `hashes`, for messages.

    Args:
      index: int `[n]` positions in this split.

    Raises:
      encrypted_dataset.DamagedFileError: a file's bytes differ from its
        recorded hash (the message names the file).
    """
    for i in index:
      path = os.fsdecode(self.paths[i])
      actual = encrypted_dataset.hash_file(path)
      if actual != self.hashes[i].hex():
        raise encrypted_dataset.DamagedFileError(
            encrypted_dataset.damaged_message(path, self.hashes[i].hex(),
                                              actual))

  def decode(self, path, data=None):
    """Reads and decodes one file in the tf.data graph.

    Args:
      path: scalar tf.string, a path from `paths`.
      data: scalar tf.string, the file's bytes when already read (the
        pipeline reads them itself for the hash check), else None.

    Returns:
      uint8 `[H, W, channels]` (`image_shape` when fixed).
    """
    if self.decoder == DECODE_PIL:
      image = tf.numpy_function(
          lambda p: image_folder.read_image(p.decode()), [path], tf.uint8,
          stateful=False)
      image.set_shape((None, None, 3))
    else:
      if data is None:
        data = tf.io.read_file(path)
      if self.decoder == DECODE_JPEG:
        image = tf.io.decode_jpeg(data, channels=self.channels,
                                  fancy_upscaling=False)
      elif self.decoder == DECODE_PNG:
        image = tf.io.decode_png(data, channels=self.channels)
      else:
        image = tf.io.decode_image(data, channels=self.channels,
                                   expand_animations=False)
        image.set_shape((None, None, self.channels))
    if self.image_shape is None:
      return image
    check = tf.debugging.Assert(
        tf.reduce_all(tf.shape(image) == self.image_shape),
        [f"{self.description}: expected images of shape {self.image_shape}, "
         "got shape", tf.shape(image), "in file", path])
    with tf.control_dependencies([check]):
      return tf.ensure_shape(tf.identity(image), self.image_shape)


def _read_only(array: np.ndarray) -> np.ndarray:
  # Cached sources are shared by every iterator; nobody may modify them.
  array.flags.writeable = False
  return array


@functools.lru_cache(maxsize=4)
def _tfds_arrays(name: str, split: str, data_dir: Optional[str]):
  # Imported on use: tensorflow_datasets is not needed for other sources.
  from etcjax.data import tfds_source  # pylint: disable=g-import-not-at-top
  images, labels, names = tfds_source.load_tfds(name, split, data_dir)
  return _read_only(images), _read_only(labels), tuple(names)


def clear_cache() -> None:
  """Frees the tfds splits cached in memory by `load_tfds_split`."""
  _tfds_arrays.cache_clear()


def load_tfds_split(name: str, split: str, data_dir: Optional[str]) -> Source:
  """A tfds split, decoded into memory (cached per process).

  Args:
    name: tfds builder name, e.g. 'cifar10'.
    split: split name or slice, e.g. 'train' or 'test[:500]'.
    data_dir: tfds data_dir; None = tfds' default. Never downloads.

  Returns:
    A `Source` with `images`.

  Raises:
    FileNotFoundError: the dataset is not prepared in the data_dir.
  """
  images, labels, names = _tfds_arrays(name, split, data_dir)
  return Source(labels=labels, label_names=list(names),
                description=f"split {split!r} of tfds dataset {name!r}",
                images=images, image_shape=tuple(images.shape[1:]))


def load_folder_split(root: str, split: str) -> Source:
  """A split of an image folder `root/<split>/<class>/*`.

  Args:
    root: the dataset folder.
    split: sub-folder name, e.g. 'train' or 'val'.

  Returns:
    A `Source` with `paths`; labels index the sorted class folder names.

  Raises:
    FileNotFoundError: `root/<split>` does not exist.
    ValueError: it has no class folders or no images.
  """
  folder = image_folder.scan(os.path.join(root, split))
  tf_decodable = all(p.lower().endswith(_TF_DECODABLE) for p in folder.paths)
  return Source(labels=folder.labels, label_names=folder.class_names,
                description=f"split {split!r} of image folder {root}",
                paths=np.asarray([os.fsencode(p) for p in folder.paths]),
                decoder=DECODE_IMAGE if tf_decodable else DECODE_PIL)


def load_encrypted_split(root: str, split: str,
                         manifest: Dict) -> Source:
  """A split of an encrypted dataset, checked against its manifest.

  Args:
    root: the encrypted dataset's folder.
    split: a split of the manifest (must be complete).
    manifest: the dataset's manifest (`manifest.read_manifest(root)`).

  Returns:
    A `Source` with `paths` and `image_shape` = the manifest's
    encrypted_shape.

  Raises:
    ValueError: the split is missing or incomplete, or its files do not
      match the manifest (`encrypted_dataset.IncompleteSplitError`); it
      records no file hashes (`UnverifiableDatasetError`).
  """
  paths, labels, indices = encrypted_dataset.list_images(root, manifest, split)
  hashes = encrypted_dataset.split_hashes(root, manifest, split, indices)
  shape = tuple(manifest["encrypted_shape"])
  return Source(labels=labels, label_names=list(manifest["label_names"]),
                description=f"split {split!r} of encrypted dataset {root}",
                paths=np.asarray([os.fsencode(p) for p in paths]),
                decoder=DECODE_JPEG if manifest["codec"] == "jpeg" else DECODE_PNG,
                channels=shape[-1], image_shape=shape,
                hashes=None if hashes is None else np.asarray(
                    [bytes.fromhex(h) for h in hashes], object))


def find_unreadable(paths) -> Optional[str]:
  """The first of some image files that PIL cannot decode, for error messages.

  Args:
    paths: file paths (str or bytes).

  Returns:
    The error message naming the file, or None when all are readable.
  """
  for path in paths:
    path = os.fsdecode(path)
    try:
      image_folder.read_image(path)
    except errors.DataError as e:
      return str(e)
  return None
