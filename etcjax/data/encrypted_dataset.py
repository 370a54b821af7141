"""The encrypted-dataset format: its manifest, file layout and listing.

An encrypted dataset, as written by `python -m etcjax.encrypt encrypt` and
read (without the key) by the training pipeline:

    ROOT/manifest.json
    ROOT/<split>/<class_name>/<source_index:06d>.jpg   (.png when lossless)

The file stem is the image's index in its source split, so images encrypted
with per-image keys can be decrypted and the order is reproducible.

`manifest.json` holds:

    format            "etcjax.encrypted_dataset.v1"
    scheme            scheme name (`etcjax.encryption.SCHEMES`)
    block_size        int
    steps             list of the scheme's steps applied, or null for all
    image_shape       [H, W, 3] of the plain images
    encrypted_shape   [H', W', C'] of the encrypted images
    key_fingerprint   `keys.fingerprint(key)`; never the key
    codec             "jpeg" or "png"
    jpeg_quality      int, or null for PNG
    chroma_subsampling "4:2:0" / "4:4:4", or null for PNG and for
                      single-channel JPEGs (no chroma)
    label_names       class names; a label indexes this list
    source            {"kind": "tfds" | "folder", "name": str, ...}
    splits            {split: {"count": int, "complete": bool}}; image-folder
                      sources add "source_digest", a hash of the split's
                      source file list (indices are positions in it)

A split is `complete` only once every one of its `count` files is written;
readers must refuse incomplete splits (`check_manifest` does).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from etcjax import files
from etcjax.encryption import jpeg
from etcjax.encryption import keys
from etcjax.encryption import schemes

FORMAT = "etcjax.encrypted_dataset.v1"
MANIFEST_FILE = "manifest.json"

# field -> accepted Python types (None allowed where listed).
_FIELDS = {
    "format": (str,),
    "scheme": (str,),
    "block_size": (int,),
    "steps": (list, type(None)),
    "image_shape": (list,),
    "encrypted_shape": (list,),
    "key_fingerprint": (str,),
    "codec": (str,),
    "jpeg_quality": (int, type(None)),
    "chroma_subsampling": (str, type(None)),
    "label_names": (list,),
    "source": (dict,),
    "splits": (dict,),
}
# Names that must never appear in a manifest: it is shipped with the data.
_SECRET_FIELDS = ("key", "secret", "key_file", "key_hex")


def validate_manifest(manifest: Dict[str, Any], where: str = "manifest") -> None:
  """Checks that a manifest has every field with the right type and values.

  Args:
    manifest: a parsed manifest.
    where: how messages refer to it (e.g. its path).

  Raises:
    ValueError: a field is missing, of the wrong type or inconsistent (the
      message names it and what was expected).
  """
  if not isinstance(manifest, dict):
    raise ValueError(f"{where} must be a JSON object, got {type(manifest).__name__}")
  if manifest.get("format") != FORMAT:
    raise ValueError(
        f"{where} has format {manifest.get('format')!r}; expected {FORMAT!r} "
        "(an etcjax encrypted dataset)")
  for name, types in _FIELDS.items():
    if name not in manifest:
      raise ValueError(f"{where} lacks the field {name!r}")
    value = manifest[name]
    if not isinstance(value, types) or isinstance(value, bool):
      raise ValueError(
          f"{where}: field {name!r} must be "
          f"{' or '.join('null' if t is type(None) else t.__name__ for t in types)}"
          f", got {value!r}")
  for name in _SECRET_FIELDS:
    if name in manifest:
      raise ValueError(f"{where} must not hold secret material (field {name!r})")
  if manifest["scheme"] not in schemes.SCHEMES:
    raise ValueError(
        f"{where}: unknown scheme {manifest['scheme']!r}; known schemes: "
        f"{sorted(schemes.SCHEMES)}")
  for name in ("image_shape", "encrypted_shape"):
    shape = manifest[name]
    if len(shape) != 3 or not all(
        isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
      raise ValueError(f"{where}: {name} must be [H, W, C] positive ints, got {shape}")
  if manifest["codec"] not in jpeg.CODECS:
    raise ValueError(
        f"{where}: codec must be one of {sorted(jpeg.CODECS)}, got "
        f"{manifest['codec']!r}")
  if manifest["codec"] == "jpeg" and manifest["jpeg_quality"] is None:
    raise ValueError(f"{where}: codec 'jpeg' needs a jpeg_quality")
  if manifest["codec"] == "png" and (manifest["jpeg_quality"] is not None or
                                     manifest["chroma_subsampling"] is not None):
    raise ValueError(
        f"{where}: codec 'png' is lossless; jpeg_quality and "
        "chroma_subsampling must be null")
  if manifest["chroma_subsampling"] not in (None, *jpeg.SUBSAMPLINGS):
    raise ValueError(
        f"{where}: chroma_subsampling must be null or one of "
        f"{sorted(jpeg.SUBSAMPLINGS)}, got {manifest['chroma_subsampling']!r}")
  names = manifest["label_names"]
  for name in names:
    # Label names are folder names of the layout.
    if (not isinstance(name, str) or name in ("", ".", "..") or "/" in name
        or "\\" in name or name.startswith(".")):
      raise ValueError(
          f"{where}: label_names must be usable as folder names (non-empty, "
          f"no path separators, not starting with '.'), got {name!r}")
  if len(set(names)) != len(names):
    raise ValueError(f"{where}: label_names has duplicates: {names}")
  if manifest["source"].get("kind") not in ("tfds", "folder"):
    raise ValueError(
        f"{where}: source.kind must be 'tfds' or 'folder', got "
        f"{manifest['source'].get('kind')!r}")
  for split, entry in manifest["splits"].items():
    if (not isinstance(entry, dict)
        or not isinstance(entry.get("count"), int)
        or isinstance(entry.get("count"), bool) or entry["count"] < 0
        or not isinstance(entry.get("complete"), bool)):
      raise ValueError(
          f"{where}: splits[{split!r}] must be {{'count': int >= 0, "
          f"'complete': bool}}, got {entry!r}")


def read_manifest(root: str | os.PathLike) -> Dict[str, Any]:
  """Reads and validates `root/manifest.json`.

  Args:
    root: an encrypted dataset's folder.

  Returns:
    The manifest as a dict.

  Raises:
    FileNotFoundError: there is no manifest (not an encrypted dataset).
    ValueError: the manifest is not valid JSON or not a valid manifest.
  """
  path = os.path.join(os.fspath(root), MANIFEST_FILE)
  try:
    with open(path, encoding="utf-8") as f:
      text = f.read()
  except FileNotFoundError:
    raise FileNotFoundError(
        f"{os.fspath(root)} is not an etcjax encrypted dataset: it has no "
        f"{MANIFEST_FILE} (create one with `python -m etcjax.encrypt "
        "encrypt`)") from None
  try:
    manifest = json.loads(text)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path} is not valid JSON: {e}") from None
  validate_manifest(manifest, where=path)
  return manifest


def write_manifest(root: str | os.PathLike, manifest: Dict[str, Any]) -> str:
  """Validates and writes `root/manifest.json` atomically.

  Readers see either the old or the new manifest, never a partial one: the
  JSON goes to a temporary file in `root` that then replaces the manifest.

  Args:
    root: the dataset folder (must exist).
    manifest: a manifest dict (see the module docstring).

  Returns:
    The manifest's path.

  Raises:
    ValueError: the manifest is invalid.
  """
  root = os.fspath(root)
  path = os.path.join(root, MANIFEST_FILE)
  validate_manifest(manifest, where=f"manifest for {path}")
  text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
  files.atomic_write(path, text.encode("utf-8"))
  return path


def make_manifest(*, scheme: str, block_size: int, steps, image_shape,
                  encrypted_shape, key_fingerprint: str, codec: str,
                  jpeg_quality: Optional[int], chroma_subsampling: Optional[str],
                  label_names, source: Dict[str, Any],
                  splits: Optional[Dict[str, Dict[str, Any]]] = None
                  ) -> Dict[str, Any]:
  """Builds a validated manifest dict from its fields (see module docstring).

  Returns:
    The manifest, with `format` set and shapes as lists of ints.
  """
  manifest = {
      "format": FORMAT,
      "scheme": scheme,
      "block_size": int(block_size),
      "steps": None if steps is None else list(steps),
      "image_shape": [int(d) for d in image_shape],
      "encrypted_shape": [int(d) for d in encrypted_shape],
      "key_fingerprint": key_fingerprint,
      "codec": codec,
      "jpeg_quality": None if jpeg_quality is None else int(jpeg_quality),
      "chroma_subsampling": chroma_subsampling,
      "label_names": list(label_names),
      "source": dict(source),
      "splits": dict(splits or {}),
  }
  validate_manifest(manifest)
  return manifest


def check_manifest(manifest: Dict[str, Any], *, scheme: Optional[str] = None,
                   block_size: Optional[int] = None,
                   fingerprint: Optional[str] = None,
                   split: Optional[str] = None) -> None:
  """Checks that an encrypted dataset is what a consumer expects.

  Args:
    manifest: as returned by `read_manifest`.
    scheme: expected scheme name (None or '' = don't check).
    block_size: expected block size (None = don't check).
    fingerprint: expected key fingerprint (None or '' = don't check).
    split: a split that must be present and complete (None = don't check).

  Raises:
    KeyMismatchError: the key fingerprints differ.
    ValueError: the scheme or block size differ, or the split is missing or
      not completely written.
  """
  if fingerprint and manifest["key_fingerprint"] != fingerprint:
    raise keys.KeyMismatchError(
        f"wrong key: the encrypted dataset was made with key fingerprint "
        f"{manifest['key_fingerprint']}, but fingerprint {fingerprint} was "
        "expected")
  if scheme and manifest["scheme"] != scheme:
    raise ValueError(
        f"the encrypted dataset uses scheme {manifest['scheme']!r}, expected "
        f"{scheme!r}")
  if block_size is not None and manifest["block_size"] != block_size:
    raise ValueError(
        f"the encrypted dataset uses block size {manifest['block_size']}, "
        f"expected {block_size}")
  if split is not None:
    if split not in manifest["splits"]:
      raise ValueError(
          f"the encrypted dataset has no split {split!r}; it has "
          f"{sorted(manifest['splits'])}")
    if not manifest["splits"][split]["complete"]:
      raise ValueError(
          f"split {split!r} of the encrypted dataset is incomplete (its "
          "encryption was interrupted or some source images failed); re-run "
          "`python -m etcjax.encrypt encrypt` with the same arguments to "
          "finish it")


def image_path(root: str | os.PathLike, split: str, class_name: str,
               index: int, codec: str) -> str:
  """Path of one encrypted image in the dataset layout.

  Args:
    root: dataset folder.
    split: split name.
    class_name: the image's label name.
    index: the image's index in its source split (>= 0).
    codec: 'jpeg' or 'png'.

  Returns:
    `root/<split>/<class_name>/<index:06d>.<ext>`.
  """
  return os.path.join(os.fspath(root), split, class_name,
                      f"{int(index):06d}{jpeg.CODECS[codec]}")


def image_key_ids(split: str, indices) -> np.ndarray:
  """Per-image key ids of 'pe_per_image' images of a dataset split.

  Ids must differ across splits as well as within one: with bare indices,
  image 5 of 'train' and image 5 of 'test' would share a key, and a key
  reused on two images leaks their XOR. The split name's SHA-256 fills the
  high 31 bits, the index the low 32.

  Args:
    split: split name, e.g. 'train'.
    indices: int `[n]`, indices in [0, 2**32) of images in their source split.

  Returns:
    int64 `[n]` ids, unique over (split, index) pairs up to hash collisions
    of the split names (probability ~2**-31 per pair of splits).
  """
  indices = np.asarray(indices, np.int64)
  if indices.size and (indices.min() < 0 or indices.max() >= 2**32):
    raise ValueError(
        f"image indices must be in [0, 2**32), got range "
        f"[{indices.min()}, {indices.max()}] in split {split!r}")
  tag = int.from_bytes(hashlib.sha256(
      b"etcjax/pe_per_image/split/" + split.encode()).digest()[:4], "big")
  return ((tag >> 1) << 32) | indices


def list_images(root: str | os.PathLike, manifest: Dict[str, Any],
                split: str) -> Tuple[List[str], np.ndarray, np.ndarray]:
  """Lists the files of one complete split of an encrypted dataset.

  Args:
    root: dataset folder.
    manifest: its manifest.
    split: a complete split.

  Returns:
    `(paths, labels, indices)`: file paths sorted by source index, int32
    labels `[count]` indexing `manifest['label_names']`, int64 source
    indices `[count]`.

  Raises:
    ValueError: the split is missing or incomplete, or the files on disk do
      not match the manifest's count.
  """
  check_manifest(manifest, split=split)
  ext = jpeg.CODECS[manifest["codec"]]
  entries = []
  for label, name in enumerate(manifest["label_names"]):
    folder = os.path.join(os.fspath(root), split, name)
    if not os.path.isdir(folder):
      continue
    for file in os.listdir(folder):
      stem, file_ext = os.path.splitext(file)
      if file_ext == ext and stem.isdigit() and not file.startswith("."):
        entries.append((int(stem), label, os.path.join(folder, file)))
  entries.sort()
  expected = manifest["splits"][split]["count"]
  if len(entries) != expected:
    raise ValueError(
        f"split {split!r} of {os.fspath(root)} should hold {expected} "
        f"{ext} files (manifest) but {len(entries)} were found")
  indices = np.asarray([e[0] for e in entries], np.int64)
  if len(np.unique(indices)) != len(indices):
    raise ValueError(
        f"split {split!r} of {os.fspath(root)} has several files with the "
        "same source index in different class folders")
  return ([e[2] for e in entries], np.asarray([e[1] for e in entries], np.int32),
          indices)
