"""The encrypted-dataset format: its manifest, file layout and listing.

An encrypted dataset, as written by `python -m etcjax.encrypt encrypt` and
read (without the key) by the training pipeline:

    ROOT/manifest.json
    ROOT/<split>/<class_name>/<source_index:06d>.jpg   (.png when lossless)

The file stem is the image's index in its source split, so images encrypted
with per-image keys can be decrypted and the order is reproducible.

`manifest.json` holds:

    format            "etcjax.encrypted_dataset.v2" (v1: written before
                      per-file hashes; read, never written)
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
                      source file list (indices are positions in it);
                      v2 adds "sha256": [count] hex SHA-256 of each file's
                      bytes as written, by source index (null: not
                      written yet)

A split is `complete` only once every one of its `count` files is written
and its hash recorded; readers must refuse incomplete splits
(`check_manifest` does).

Per-file hashes: a file is written atomically first, and its hash recorded
in the manifest after it (the manifest is rewritten at most every few
seconds while a split is written). A file without a recorded hash or with
another hash is not trusted: `encrypt` redoes it on resume, `verify_files`
reports it, and the training pipeline stops on it, naming the file. The
hash covers the bytes on disk (the encoded JPEG/PNG), so it detects any
change to a file, not whether the encoding was right; it is not a MAC (who
can change the files can change the manifest too). Datasets written before
hashes existed (format v1) can still be decrypted, but the pipeline refuses
them (`UnverifiableDatasetError`): re-run the same `encrypt` command (it
re-writes every file and records its hash), or record the hashes of the
files as they are with `python -m etcjax.encrypt verify --add_hashes`.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from etcjax import errors
from etcjax import files
from etcjax.encryption import jpeg
from etcjax.encryption import keys
from etcjax.encryption import schemes

FORMAT = "etcjax.encrypted_dataset.v2"
# Formats read but never written: v1 has no per-file hashes.
LEGACY_FORMATS = ("etcjax.encrypted_dataset.v1",)
MANIFEST_FILE = "manifest.json"
HASH_FIELD = "sha256"


class DatasetError(errors.UserError, ValueError):
  """An encrypted dataset cannot be used as asked; the message says why."""


class ManifestError(DatasetError):
  """A manifest is missing fields, malformed, or not valid JSON."""


class DatasetMismatchError(DatasetError):
  """The dataset differs from what the consumer expects (scheme, block size)."""


class IncompleteSplitError(DatasetError):
  """A split is missing, not completely written, or its files do not match."""


class DamagedFileError(DatasetError):
  """A file's bytes differ from the hash the manifest recorded for it."""


class UnverifiableDatasetError(DatasetError):
  """The dataset records no per-file hashes (written before they existed)."""


def file_hash(data: bytes) -> str:
  """The manifest's hash of a file: hex SHA-256 of its bytes (64 chars)."""
  return hashlib.sha256(data).hexdigest()


def hash_file(path: str | os.PathLike) -> str:
  """`file_hash` of the file at `path` (read whole)."""
  with open(path, "rb") as f:
    return file_hash(f.read())

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
    ManifestError (a ValueError): a field is missing, of the wrong type or
      inconsistent (the message names it and what was expected).
  """
  if not isinstance(manifest, dict):
    raise ManifestError(f"{where} must be a JSON object, got {type(manifest).__name__}")
  if manifest.get("format") not in (FORMAT, *LEGACY_FORMATS):
    raise ManifestError(
        f"{where} has format {manifest.get('format')!r}; expected {FORMAT!r} "
        "(an etcjax encrypted dataset)")
  for name, types in _FIELDS.items():
    if name not in manifest:
      raise ManifestError(f"{where} lacks the field {name!r}")
    value = manifest[name]
    if not isinstance(value, types) or isinstance(value, bool):
      raise ManifestError(
          f"{where}: field {name!r} must be "
          f"{' or '.join('null' if t is type(None) else t.__name__ for t in types)}"
          f", got {value!r}")
  for name in _SECRET_FIELDS:
    if name in manifest:
      raise ManifestError(f"{where} must not hold secret material (field {name!r})")
  if manifest["scheme"] not in schemes.SCHEMES:
    raise ManifestError(
        f"{where}: unknown scheme {manifest['scheme']!r}; known schemes: "
        f"{sorted(schemes.SCHEMES)}")
  for name in ("image_shape", "encrypted_shape"):
    shape = manifest[name]
    if len(shape) != 3 or not all(
        isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
      raise ManifestError(f"{where}: {name} must be [H, W, C] positive ints, got {shape}")
  if manifest["codec"] not in jpeg.CODECS:
    raise ManifestError(
        f"{where}: codec must be one of {sorted(jpeg.CODECS)}, got "
        f"{manifest['codec']!r}")
  if manifest["codec"] == "jpeg" and manifest["jpeg_quality"] is None:
    raise ManifestError(f"{where}: codec 'jpeg' needs a jpeg_quality")
  if manifest["codec"] == "png" and (manifest["jpeg_quality"] is not None or
                                     manifest["chroma_subsampling"] is not None):
    raise ManifestError(
        f"{where}: codec 'png' is lossless; jpeg_quality and "
        "chroma_subsampling must be null")
  if manifest["chroma_subsampling"] not in (None, *jpeg.SUBSAMPLINGS):
    raise ManifestError(
        f"{where}: chroma_subsampling must be null or one of "
        f"{sorted(jpeg.SUBSAMPLINGS)}, got {manifest['chroma_subsampling']!r}")
  names = manifest["label_names"]
  for name in names:
    # Label names are folder names of the layout.
    if (not isinstance(name, str) or name in ("", ".", "..") or "/" in name
        or "\\" in name or name.startswith(".")):
      raise ManifestError(
          f"{where}: label_names must be usable as folder names (non-empty, "
          f"no path separators, not starting with '.'), got {name!r}")
  if len(set(names)) != len(names):
    raise ManifestError(f"{where}: label_names has duplicates: {names}")
  if manifest["source"].get("kind") not in ("tfds", "folder"):
    raise ManifestError(
        f"{where}: source.kind must be 'tfds' or 'folder', got "
        f"{manifest['source'].get('kind')!r}")
  for split, entry in manifest["splits"].items():
    if (not isinstance(entry, dict)
        or not isinstance(entry.get("count"), int)
        or isinstance(entry.get("count"), bool) or entry["count"] < 0
        or not isinstance(entry.get("complete"), bool)):
      raise ManifestError(
          f"{where}: splits[{split!r}] must be {{'count': int >= 0, "
          f"'complete': bool}}, got {entry!r}")
    hashes = entry.get(HASH_FIELD)
    if hashes is None:
      continue
    if (not isinstance(hashes, list) or len(hashes) != entry["count"]
        or not all(h is None or (isinstance(h, str) and len(h) == 64)
                   for h in hashes)):
      raise ManifestError(
          f"{where}: splits[{split!r}][{HASH_FIELD!r}] must list "
          f"{entry['count']} hex SHA-256 hashes (or null), one per file")
    if entry["complete"] and None in hashes:
      raise ManifestError(
          f"{where}: split {split!r} is marked complete but "
          f"{hashes.count(None)} of its files have no recorded hash")


def read_manifest(root: str | os.PathLike) -> Dict[str, Any]:
  """Reads and validates `root/manifest.json`.

  Args:
    root: an encrypted dataset's folder.

  Returns:
    The manifest as a dict.

  Raises:
    FileNotFoundError: there is no manifest (not an encrypted dataset).
    ManifestError (a ValueError): the manifest is not valid JSON or not a
      valid manifest; the message names its path.
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
    raise ManifestError(
        f"{path} is not valid JSON ({e}): the encrypted dataset's manifest "
        "is damaged; re-run the `python -m etcjax.encrypt encrypt` command "
        "that made it") from None
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
                   split: Optional[str] = None,
                   root: Optional[str | os.PathLike] = None) -> None:
  """Checks that an encrypted dataset is what a consumer expects.

  Args:
    manifest: as returned by `read_manifest`.
    scheme: expected scheme name (None or '' = don't check).
    block_size: expected block size (None = don't check).
    fingerprint: expected key fingerprint (None or '' = don't check).
    split: a split that must be present and complete (None = don't check).
    root: the dataset's folder, named in messages (None: "the encrypted
      dataset").

  Raises:
    KeyMismatchError: the key fingerprints differ.
    DatasetMismatchError (a ValueError): the scheme or block size differ.
    IncompleteSplitError (a ValueError): the split is missing or not
      completely written.
  """
  what = ("the encrypted dataset" if root is None
          else f"the encrypted dataset {os.fspath(root)}")
  if fingerprint and manifest["key_fingerprint"] != fingerprint:
    raise keys.KeyMismatchError(
        f"wrong key: {what} was made with key fingerprint "
        f"{manifest['key_fingerprint']}, but fingerprint {fingerprint} was "
        "expected")
  if scheme and manifest["scheme"] != scheme:
    raise DatasetMismatchError(
        f"{what} uses scheme {manifest['scheme']!r}, expected {scheme!r}")
  if block_size is not None and manifest["block_size"] != block_size:
    raise DatasetMismatchError(
        f"{what} uses block size {manifest['block_size']}, expected "
        f"{block_size}")
  if split is not None:
    if split not in manifest["splits"]:
      raise IncompleteSplitError(
          f"{what} has no split {split!r}; it has "
          f"{sorted(manifest['splits'])}")
    if not manifest["splits"][split]["complete"]:
      raise IncompleteSplitError(
          f"split {split!r} of {what} is incomplete (its encryption was "
          "interrupted or some source images failed); re-run "
          "`python -m etcjax.encrypt encrypt` with the same arguments to "
          "finish it")


def split_hashes(root: str | os.PathLike, manifest: Dict[str, Any],
                 split: str, indices, required: bool = True
                 ) -> Optional[List[str]]:
  """The recorded hashes of some files of a split.

  Args:
    root: the dataset folder (for messages).
    manifest: its manifest.
    split: a split of the manifest.
    indices: int `[n]` source indices.
    required: raise when the split records no hashes; else return None.

  Returns:
    `[n]` hex SHA-256 strings (None for files without one), or None when
    the split has no hashes and `required` is False.

  Raises:
    UnverifiableDatasetError (a ValueError): `required` and the split was
      written before per-file hashes existed.
  """
  hashes = manifest["splits"][split].get(HASH_FIELD)
  if hashes is None:
    if not required:
      return None
    root = os.fspath(root)
    raise UnverifiableDatasetError(
        f"split {split!r} of the encrypted dataset {root} has no per-file "
        f"hashes (format {manifest['format']}, written before etcjax "
        "recorded them), so damaged files cannot be detected; re-run the "
        "`python -m etcjax.encrypt encrypt` command that made it (it "
        "re-writes the files and records their hashes), or record the "
        "hashes of the files as they are with `python -m etcjax.encrypt "
        f"verify --out={root} --add_hashes`")
  return [hashes[int(i)] for i in indices]


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
    IncompleteSplitError (a ValueError): the split is missing or
      incomplete, or the files on disk do not match the manifest's count.
  """
  check_manifest(manifest, split=split, root=root)
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
    raise IncompleteSplitError(
        f"split {split!r} of {os.fspath(root)} should hold {expected} "
        f"{ext} files (manifest) but {len(entries)} were found")
  indices = np.asarray([e[0] for e in entries], np.int64)
  if len(np.unique(indices)) != len(indices):
    raise IncompleteSplitError(
        f"split {split!r} of {os.fspath(root)} has several files with the "
        "same source index in different class folders")
  return ([e[2] for e in entries], np.asarray([e[1] for e in entries], np.int32),
          indices)


def damaged_message(path: str, expected: Optional[str],
                    actual: Optional[str]) -> str:
  """One line naming a file whose bytes do not match the manifest."""
  if actual is None:
    return f"{path} is missing"
  if expected is None:
    return f"{path} has no recorded hash (it may be incomplete)"
  return (f"{path} is damaged: its SHA-256 is {actual[:16]}..., the manifest "
          f"recorded {expected[:16]}... (the file changed after it was "
          "written; re-run `python -m etcjax.encrypt encrypt` with the same "
          "arguments to redo it)")


@dataclasses.dataclass
class SplitCheck:
  """What `verify_files` found in one split.

  Attributes:
    checked: number of files read and hashed.
    problems: one line per missing, damaged or unhashed file.
    hashes: hex SHA-256 of every file by source index, as found on disk
      (None for missing files).
    legacy: the split records no hashes (format v1).
  """

  checked: int = 0
  problems: List[str] = dataclasses.field(default_factory=list)
  hashes: List[Optional[str]] = dataclasses.field(default_factory=list)
  legacy: bool = False


def verify_files(root: str | os.PathLike, manifest: Dict[str, Any],
                 splits: Optional[Sequence[str]] = None, workers: int = 2
                 ) -> Dict[str, SplitCheck]:
  """Re-hashes every file of some splits and compares with the manifest.

  Args:
    root: the dataset folder.
    manifest: its manifest (`read_manifest(root)`).
    splits: splits to check (None: all of the manifest's).
    workers: threads (hashlib releases the GIL on large files).

  Returns:
    `{split: SplitCheck}`. Incomplete splits are checked too (files written
    so far); a legacy split's files are hashed but cannot be compared.

  Raises:
    IncompleteSplitError: a named split is not in the manifest.
  """
  root = os.fspath(root)
  splits = sorted(manifest["splits"]) if splits is None else list(splits)
  results = {}
  for split in splits:
    if split not in manifest["splits"]:
      raise IncompleteSplitError(
          f"the encrypted dataset {root} has no split {split!r}; it has "
          f"{sorted(manifest['splits'])}")
    count = manifest["splits"][split]["count"]
    recorded = manifest["splits"][split].get(HASH_FIELD)
    paths = _split_paths(root, manifest, split)
    check = SplitCheck(legacy=recorded is None)

    def one(i):
      path = paths.get(i)
      if path is None:
        return None
      try:
        return hash_file(path)
      except FileNotFoundError:
        return None

    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
      check.hashes = list(pool.map(one, range(count)))
    ext = jpeg.CODECS[manifest["codec"]]
    for i, actual in enumerate(check.hashes):
      path = paths.get(i) or os.path.join(root, split, "*", f"{i:06d}{ext}")
      expected = None if recorded is None else recorded[i]
      if actual is not None:
        check.checked += 1
        if expected is not None and actual != expected:
          check.problems.append(damaged_message(path, expected, actual))
      elif expected is not None or manifest["splits"][split]["complete"]:
        # Files not yet written are only missing once they were recorded
        # (or the split claims to be complete).
        check.problems.append(damaged_message(path, expected, None))
    results[split] = check
  return results


def _split_paths(root: str, manifest: Dict[str, Any], split: str
                 ) -> Dict[int, str]:
  """`{source index: path}` of the files of a split found on disk."""
  ext = jpeg.CODECS[manifest["codec"]]
  found = {}
  for name in manifest["label_names"]:
    folder = os.path.join(root, split, name)
    if not os.path.isdir(folder):
      continue
    for file in os.listdir(folder):
      stem, file_ext = os.path.splitext(file)
      if file_ext == ext and stem.isdigit() and not file.startswith("."):
        found[int(stem)] = os.path.join(folder, file)
  return found


def record_hashes(root: str | os.PathLike, manifest: Dict[str, Any],
                  checks: Dict[str, SplitCheck]) -> List[str]:
  """Upgrades a dataset without hashes: records the hashes of its files.

  Trust on first use: the files are taken as they are now, after each
  decodes to the manifest's `encrypted_shape` (which catches truncated and
  most damaged files, not every changed JPEG byte). Splits that already
  record hashes are left alone.

  Args:
    root: the dataset folder.
    manifest: its manifest; updated and written (format v2) when any split
      was upgraded.
    checks: `verify_files(root, manifest)` of the splits to upgrade.

  Returns:
    One line per problem that prevented an upgrade (missing or undecodable
    files); empty when every legacy split was upgraded.
  """
  root = os.fspath(root)
  problems, upgraded = [], False
  shape = tuple(manifest["encrypted_shape"])
  for split, check in checks.items():
    entry = manifest["splits"][split]
    if not check.legacy or not entry["complete"]:
      continue
    paths = _split_paths(root, manifest, split)
    bad = list(check.problems)
    for i, path in sorted(paths.items()):
      with open(path, "rb") as f:
        data = f.read()
      try:
        image = jpeg.decode_image(data, shape[-1], name=path)
      except jpeg.UndecodableImageError as e:
        bad.append(str(e))
        continue
      if image.shape != shape:
        bad.append(f"{path} decodes to shape {image.shape}, the manifest "
                   f"says {shape}")
    if bad:
      problems.extend(bad)
      continue
    entry[HASH_FIELD] = list(check.hashes)
    upgraded = True
  if upgraded:
    manifest["format"] = FORMAT
    write_manifest(root, manifest)
  return problems
