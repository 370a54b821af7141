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
      the pipeline then checks each batch's files (`check_fingerprints`,
      `verify`).
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
  # What this Source has verified; a fresh Source (each run, each
  # `select`) starts over, so each run checks every file's SHA-256 once.
  _verified: Optional["_Verified"] = dataclasses.field(
      default=None, init=False, repr=False, compare=False)

  def __post_init__(self):
    if self.hashes is not None:
      object.__setattr__(self, "_verified", _Verified(len(self.hashes)))

  def __len__(self) -> int:
    return len(self.labels)

  def check_fingerprints(self, index: np.ndarray, fingerprints: np.ndarray
                         ) -> Tuple[np.bool_, np.ndarray]:
    """Compares a batch's files with the fingerprints their check recorded.

    Hashing every file with SHA-256 on every epoch costs several percent of
    the input pipeline; a file is therefore checked against the manifest's
    SHA-256 once (`verify`), which records a 64-bit fingerprint of the
    bytes it verified, and later reads compare only that fingerprint
    (computed in the tf.data graph). This guards against files damaged or
    truncated on disk during a run; it is not meant to stop a party that
    can write the dataset and forge fingerprint collisions.

    Args:
      index: int64 `[n]` positions of the batch's files in this split.
      fingerprints: int64 `[n]`, `tf.fingerprint` (farmhash64) of the
        files' bytes as read now.

    Returns:
      (ok, unverified): ok is False if a verified file's bytes changed
      since; unverified bool `[n]` marks files still to `verify`.
    """
    with self._verified.lock:
      done = self._verified.done[index]
      recorded = self._verified.fingerprints[index]
    return np.bool_(np.all(~done | (recorded == fingerprints))), ~done

  def verify(self, index: np.ndarray, data: np.ndarray,
             fingerprints: np.ndarray) -> np.bool_:
    """Checks files against their SHA-256 digests and records them.

    Args:
      index: int64 `[n]` positions of the batch's files in this split.
      data: object `[n]`, the files' bytes; empty for files already
        verified (their fingerprints were compared instead).
      fingerprints: int64 `[n]`, `tf.fingerprint` of the same bytes.

    Returns:
      bool: every given file matches its recorded digest (the pipeline
      names a damaged one with `read_verified`).
    """
    ok = True
    with self._verified.lock:
      todo = [k for k, i in enumerate(index) if not self._verified.done[i]]
    for k in todo:
      i = index[k]
      if hashlib.sha256(data[k]).digest() != self.hashes[i]:
        ok = False
        continue
      with self._verified.lock:
        if not self._verified.done[i]:  # another batch may have raced us
          self._verified.fingerprints[i] = fingerprints[k]
          self._verified.done[i] = True
          self._verified.sha256_files += 1
    return np.bool_(ok)

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
      data: scalar tf.string, the file's bytes when already read (by
        `read_verified`), else None.

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


class _Verified:
  """Which files of a Source have been SHA-256-checked, and their fingerprints.

  tf.data may run the per-batch checks in parallel threads; the lock keeps
  a file's record and its `done` flag consistent.
  """

  def __init__(self, count: int):
    self.done = np.zeros(count, bool)
    self.fingerprints = np.zeros(count, np.int64)
    self.sha256_files = 0  # how many SHA-256 checks passed (tests, benchmark)
    self.lock = threading.Lock()


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
