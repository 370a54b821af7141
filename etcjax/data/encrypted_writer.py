"""Writing encrypted datasets, and decrypting them back to image folders.

The data owner's side of the encrypted-dataset format
(`etcjax.data.encrypted_dataset`); `python -m etcjax.encrypt` is a thin
command line over it. The key never reaches this module: callers pass an
encryption (or decryption) function built from a plan, and the manifest
records only the key's fingerprint. Behaviour, decided once:

- Resumable: every file is written atomically (temporary file + rename), so
  a file that exists is complete; re-running the same command skips them and
  writes the rest. A split is marked complete in the manifest only when all
  its files exist. Folder sources are indexed by position in the sorted file
  list, so a changed list (files added, removed, renamed) is refused on
  resume unless `overwrite` re-encrypts the split.
- Nothing is overwritten without `overwrite`: not existing image files, not
  a dataset made with another key, scheme or codec, and not a non-empty
  folder that is not an encrypted dataset (always refused).
- One writer per folder: the output folder is locked (`etcjax.files`).
- Unreadable or wrongly sized images are per-image failures: the split is
  left incomplete and the failures are returned.
- Decryption writes each split under a hidden name and renames it when
  complete, so a split folder that exists is fully decrypted.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import shutil
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import tqdm

from etcjax import files
from etcjax.data import encrypted_dataset
from etcjax.data import errors
from etcjax.data import plain_sources
from etcjax.encryption import jpeg

# Plain pixels per encryption chunk: large enough to amortise the jitted
# gather's dispatch, small enough to keep several chunks in flight.
_CHUNK_VALUES = 2**23
_MAX_CHUNK = 1024
# How often the manifest (with the hashes of the files written so far) is
# rewritten while a split is written: a crash loses at most this much work.
_SAVE_SECONDS = 5.0

LOCK_OWNER = "etcjax.encrypt run"
LOCK_ADVICE = "wait for it to finish or choose another --out"


def locked(out: str):
  """Locks the dataset (or decryption output) folder `out` for one writer.

  Returns:
    A context manager (`etcjax.files.locked_folder`); raises
    `files.FolderLockedError` naming the other run when `out` is in use.
  """
  return files.locked_folder(out, LOCK_OWNER, LOCK_ADVICE)


@dataclasses.dataclass
class SplitResult:
  """What `write_split` did.

  Attributes:
    written: number of files written.
    skipped: number of files that already existed (and matched their
      recorded hash).
    failures: `(index, message)` of every image that could not be written.
    redone: one line per existing file that was damaged, truncated or had
      no recorded hash, and was written again.
  """

  written: int = 0
  skipped: int = 0
  failures: List[Tuple[int, str]] = dataclasses.field(default_factory=list)
  redone: List[str] = dataclasses.field(default_factory=list)


def _chunk_size(image_shape, todo: int, workers: int) -> int:
  by_size = max(1, min(_MAX_CHUNK, _CHUNK_VALUES // int(np.prod(image_shape))))
  # Small jobs: split evenly so every worker gets a chunk.
  return max(1, min(by_size, -(-todo // (2 * workers))))


def _run_chunks(fn, chunks, workers: int, progress, total: int, desc: str,
                on_done: Optional[Callable[[object], None]] = None):
  """Runs `fn(chunk) -> (count, failures, extra)` over chunks on a thread pool.

  At most 2 * workers chunks are in flight, bounding memory; PIL coding and
  the jitted gather release the GIL, so threads use all cores. `on_done`
  gets each chunk's `extra` in the calling thread.
  """
  failures = []
  with tqdm.tqdm(total=total, desc=desc, unit="img", disable=not progress,
                 file=sys.stderr) as bar, \
      concurrent.futures.ThreadPoolExecutor(workers) as pool:
    pending = set()
    chunks = iter(chunks)
    while True:
      while len(pending) < 2 * workers:
        chunk = next(chunks, None)
        if chunk is None:
          break
        pending.add(pool.submit(fn, chunk))
      if not pending:
        break
      done, pending = concurrent.futures.wait(
          pending, return_when=concurrent.futures.FIRST_COMPLETED)
      for future in done:
        count, chunk_failures, extra = future.result()
        failures.extend(chunk_failures)
        if on_done is not None:
          on_done(extra)
        bar.update(count)
  return failures


def _prepare_split_dir(out: str, split: str, label_names: Sequence[str],
                       expected: set, overwrite: bool) -> None:
  """Creates class folders; removes stale temporaries; refuses stray files.

  Stray files (other names than this run's, e.g. from a run with a larger
  --limit or a changed source folder) would be read as part of the split.
  """
  split_dir = os.path.join(out, split)
  for name in label_names:
    os.makedirs(os.path.join(split_dir, name), exist_ok=True)
  stray = [os.path.join(split_dir, entry) for entry in os.listdir(split_dir)
           if entry not in label_names]
  for name in label_names:
    folder = os.path.join(split_dir, name)
    for entry in os.listdir(folder):
      path = os.path.join(folder, entry)
      if entry.startswith(".") and entry.endswith(".tmp") and os.path.isfile(path):
        os.remove(path)  # Left by an interrupted run; never a complete file.
      elif path not in expected:
        stray.append(path)
  if stray and not overwrite:
    raise FileExistsError(
        f"{split_dir} holds {len(stray)} files or folders that are not part "
        f"of this encryption run (e.g. {stray[0]}); pass --overwrite to delete "
        "them, or choose another --out")
  for path in stray:
    if os.path.isdir(path):
      shutil.rmtree(path)
    else:
      os.remove(path)


EncryptFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _files_to_write(paths: Sequence[str], hashes, overwrite: bool,
                    workers: int, redone: List[str]) -> List[int]:
  """Indices of the files a run must (re)write; notes redone ones.

  A file is kept only if it exists and (with `hashes`) its bytes match its
  recorded hash: a truncated or damaged file, or one whose hash was never
  recorded (a crash right after writing it, or a dataset written before
  hashes existed), is written again.
  """
  if overwrite:
    return list(range(len(paths)))
  existing = [i for i, p in enumerate(paths) if os.path.exists(p)]
  todo = sorted(set(range(len(paths))) - set(existing))
  if hashes is None:
    return todo
  unrecorded = [i for i in existing if hashes[i] is None]
  recorded = [i for i in existing if hashes[i] is not None]
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    actual = list(pool.map(lambda i: encrypted_dataset.hash_file(paths[i]),
                           recorded))
  for i, digest in zip(recorded, actual):
    if digest != hashes[i]:
        redone.append(
          f"{paths[i]} was damaged or truncated (its bytes do not match the "
          "hash recorded when it was written); written again")
  damaged = [i for i, d in zip(recorded, actual) if d != hashes[i]]
  if unrecorded:
    redone.append(
        f"{len(unrecorded)} existing files without a recorded hash (e.g. "
        f"{paths[unrecorded[0]]}) written again")
  return sorted(todo + damaged + unrecorded)


def write_split(split: plain_sources.SourceSplit, out: str,
                label_names: Sequence[str],
                image_shape: Tuple[int, int, int],
                encrypt_fn: Optional[EncryptFn],
                codec: str, quality: Optional[int], subsampling: Optional[str],
                resize: bool = False, overwrite: bool = False, workers: int = 2,
                progress: bool = True,
                hashes: Optional[List[Optional[str]]] = None,
                save: Optional[Callable[[], None]] = None) -> SplitResult:
  """Reads, encrypts, encodes and writes the images of one split.

  Args:
    split: the plain source split.
    out: dataset folder; files go to `out/<split>/<class>/<index:06d>.<ext>`.
    label_names: class names (folder names).
    image_shape: `(H, W, 3)` every plain image must have (after resizing).
    encrypt_fn: `(uint8 [n, H, W, 3], int64 per-image key ids [n]) -> uint8
      [n, H', W', C']` (ids from `encrypted_dataset.image_key_ids`); None writes the
      plain images (benchmarks only).
    codec: 'jpeg' or 'png'.
    quality, subsampling: JPEG settings.
    resize: resize images of another size to `image_shape` instead of
      failing them.
    overwrite: rewrite existing files and delete stray ones.
    workers: threads.
    progress: show a progress bar on stderr.
    hashes: the split's recorded file hashes by source index (the manifest
      entry's list, updated in place as files are written), or None to
      trust any existing file (benchmarks). An existing file is kept only
      if its bytes match its recorded hash.
    save: persists `hashes` (writes the manifest); called every few seconds
      while writing, in the calling thread. The caller saves at the end.

  Returns:
    A `SplitResult`; the split is complete iff `failures` is empty.
  """
  paths = [encrypted_dataset.image_path(out, split.name, label_names[label],
                                        i, codec)
           for i, label in enumerate(split.labels)]
  _prepare_split_dir(out, split.name, label_names, set(paths), overwrite)
  result = SplitResult()
  todo = np.asarray(_files_to_write(paths, hashes, overwrite, workers,
                                    result.redone), np.int64)
  result.skipped = len(paths) - len(todo)
  if not len(todo):
    return result
  chunk = _chunk_size(image_shape, len(todo), workers)

  def process(indices):
    images, kept, failures = [], [], []
    for i in indices:
      try:
        image = split.read(int(i))
        if resize:
          image = plain_sources.resize(image, image_shape[:2])
        if image.shape != tuple(image_shape):
          raise errors.DataError(
              f"{split.source_name(int(i))} has shape {image.shape}; this "
              f"dataset's images are {tuple(image_shape)} (pass --resize=H,W "
              "to resize every image)")
      except (errors.DataError, jpeg.UndecodableImageError) as e:
        # This image is unreadable or unlike the others; the rest go on
        # (a bug still stops the run with its traceback).
        failures.append((int(i), str(e)))
        continue
      images.append(image)
      kept.append(i)
    if not images:
      return len(indices), failures, []
    batch = np.stack(images)
    kept = np.asarray(kept, np.int64)
    if encrypt_fn is not None:
      pad = chunk - len(batch)
      if pad:
        # A full chunk's shape: one compilation per split.
        batch = np.concatenate(
            [batch, np.zeros((pad,) + batch.shape[1:], np.uint8)])
        kept_ids = np.concatenate([kept, kept[-1] + 1 + np.arange(pad)])
      else:
        kept_ids = kept
      batch = encrypt_fn(
          batch, encrypted_dataset.image_key_ids(split.name, kept_ids))[:len(kept)]
    encoded = jpeg.encode(batch, codec, quality, subsampling)
    written = []
    for i, data in zip(kept, encoded):
      files.atomic_write(paths[i], data)
      # Hashes are recorded after their file exists: a crash in between
      # leaves a file without a hash, which a resumed run redoes.
      written.append((int(i), encrypted_dataset.file_hash(data)))
    return len(indices), failures, written

  last_save = [time.monotonic()]

  def record(written):
    if hashes is None:
      return
    for i, digest in written:
      hashes[i] = digest
    if save is not None and time.monotonic() - last_save[0] > _SAVE_SECONDS:
      save()
      last_save[0] = time.monotonic()

  chunks = (todo[s:s + chunk] for s in range(0, len(todo), chunk))
  result.failures = sorted(_run_chunks(process, chunks, workers, progress,
                                       len(todo), f"encrypt {split.name}",
                                       on_done=record))
  result.written = len(todo) - len(result.failures)
  return result



def _compatible(old: Dict, new: Dict) -> List[str]:
  """Names of manifest fields (other than splits) that differ."""
  # "format": a legacy dataset is upgraded in place (its files have no
  # recorded hashes, so they are all written again).
  return [k for k in new if k not in ("splits", "format")
          and old.get(k) != new[k]]


def reconcile_out_dir(out: str, new: Dict, overwrite: bool) -> Dict:
  """Reconciles the folder `out` with the manifest of a new encryption run.

  Args:
    out: the output folder (exists; locked by the caller).
    new: the new run's manifest (its `splits` are ignored).
    overwrite: replace a dataset made with other settings.

  Returns:
    The splits entries of the existing dataset that this run keeps ({} for
    a new or replaced dataset).

  Raises:
    FileExistsError: `out` holds something this run must not touch: a
      non-empty folder that is not an encrypted dataset, or (without
      `overwrite`) a dataset made with another key or other settings.
  """
  if not os.path.exists(os.path.join(out, encrypted_dataset.MANIFEST_FILE)):
    if set(os.listdir(out)) - {files.LOCK_FILE}:
      raise FileExistsError(
          f"--out {out} is a non-empty folder without "
          f"{encrypted_dataset.MANIFEST_FILE} (not an etcjax encrypted "
          "dataset); choose a new or empty folder")
    return {}
  old = encrypted_dataset.read_manifest(out)
  differ = _compatible(old, new)
  if not differ:
    return old["splits"]
  if "key_fingerprint" in differ:
    why = (f"was made with another key (fingerprint {old['key_fingerprint']}, "
           f"this key: {new['key_fingerprint']})")
  else:
    why = "was made with other settings: " + ", ".join(
        f"{k} {old.get(k)!r} (now {new[k]!r})" for k in differ)
  if not overwrite:
    raise FileExistsError(
        f"the encrypted dataset in {out} {why}; refusing to mix them. Pass "
        "--overwrite to replace it, or choose another --out")
  # Replacing: the old splits must go before the new manifest claims `out`.
  os.remove(os.path.join(out, encrypted_dataset.MANIFEST_FILE))
  for split in old["splits"]:
    path = os.path.join(out, split)
    if os.path.isdir(path):
      shutil.rmtree(path)
  return {}


def encrypt_dataset(source: plain_sources.Source, out: str,
                    manifest: Dict, encrypt_fn: Optional[EncryptFn], *,
                    resize: bool = False, overwrite: bool = False,
                    workers: int = 2, progress: bool = True,
                    on_split: Optional[Callable[[str, SplitResult], None]] = None
                    ) -> Dict[str, SplitResult]:
  """Encrypts every split of `source` into the encrypted dataset `out`.

  Locks `out`, reconciles it with `manifest` (resuming a run with the same
  settings), writes the manifest with every split marked incomplete, then
  writes each split and marks it complete once all its files exist.

  Args:
    source: the plain splits (`plain_sources.open_source`).
    out: the dataset folder (created if needed).
    manifest: the dataset's manifest (`encrypted_dataset.make_manifest`;
      its `splits` are filled in here). Its `image_shape`, `codec`,
      `jpeg_quality` and `chroma_subsampling` drive the writer.
    encrypt_fn: as for `write_split`.
    resize, overwrite, workers, progress: as for `write_split`.
    on_split: called with `(split name, SplitResult)` after each split.

  Returns:
    `{split name: SplitResult}`; the dataset is complete iff no result has
    failures.

  Raises:
    FileExistsError: `out` is not a folder, or holds data this run must not
      touch (see `reconcile_out_dir`; a changed source file list of a split
      without `overwrite`).
    files.FolderLockedError: another run is writing to `out`.
  """
  if os.path.exists(out) and not os.path.isdir(out):
    raise FileExistsError(f"--out {out} exists and is not a folder")
  new = dict(manifest)
  image_shape = tuple(new["image_shape"])
  results, notes = {}, {}
  with locked(out):
    splits = reconcile_out_dir(out, new, overwrite)
    for split in source.splits:
      old = splits.get(split.name)
      if (old is not None and old.get("source_digest") != split.digest
          and not overwrite and not old["complete"]):
        # An unfinished split whose source list changed (e.g. a bad image
        # was removed, as the failure message advises): its files have the
        # old indices, and nothing complete is lost by starting it over.
        shutil.rmtree(os.path.join(out, split.name), ignore_errors=True)
        old = None
        notes[split.name] = (
            f"the source file list of split {split.name!r} changed since the "
            "unfinished run, so image indices moved: the split was started "
            "over")
      elif (old is not None and old.get("source_digest") != split.digest
            and not overwrite):
        raise FileExistsError(
            f"split {split.name!r} in {out} was encrypted from another "
            f"list of source files than {source.spec}/{split.name} now holds "
            "(files were added, removed or renamed), so image indices differ; "
            "pass --overwrite to re-encrypt the split, or choose another --out")
      hashes = [None] * len(split)
      if old is not None and old.get(encrypted_dataset.HASH_FIELD):
        kept = old[encrypted_dataset.HASH_FIELD][:len(split)]
        hashes[:len(kept)] = kept
      splits[split.name] = {"count": len(split), "complete": False,
                            encrypted_dataset.HASH_FIELD: hashes}
      if split.digest:
        splits[split.name]["source_digest"] = split.digest
    new["splits"] = splits
    encrypted_dataset.write_manifest(out, new)

    for split in source.splits:
      result = write_split(
          split, out, new["label_names"], image_shape, encrypt_fn,
          new["codec"], new["jpeg_quality"],
          # None for single-channel JPEGs, where subsampling is unused.
          new["chroma_subsampling"] or "4:2:0",
          resize=resize, overwrite=overwrite, workers=workers,
          progress=progress,
          hashes=new["splits"][split.name][encrypted_dataset.HASH_FIELD],
          save=lambda: encrypted_dataset.write_manifest(out, new))
      if not result.failures:
        new["splits"][split.name]["complete"] = True
      encrypted_dataset.write_manifest(out, new)
      if split.name in notes:
        result.redone.insert(0, notes[split.name])
      results[split.name] = result
      if on_split is not None:
        on_split(split.name, result)
  return results


DecryptFn = Callable[[str, np.ndarray, np.ndarray], np.ndarray]


def decrypt_dataset(in_dir: str, manifest: Dict, out: str,
                    decrypt_fn: DecryptFn, splits: Optional[Sequence[str]] = None,
                    *, overwrite: bool = False, workers: int = 2,
                    progress: bool = True,
                    on_split: Optional[Callable[[str, str, int], None]] = None
                    ) -> None:
  """Decrypts splits of an encrypted dataset into a plain PNG image folder.

  Writes `out/<split>/<class>/<source_index:06d>.png`; each split is written
  under a hidden name and renamed when complete.

  Args:
    in_dir: the encrypted dataset's folder.
    manifest: its manifest (`encrypted_dataset.read_manifest(in_dir)`); the
      caller has checked its key fingerprint.
    out: the output folder.
    decrypt_fn: `(split name, int64 source indices [n], uint8 encrypted
      images [n] + encrypted_shape) -> uint8 plain images [n, H, W, 3]`.
    splits: splits to decrypt (None: all of the manifest's).
    overwrite: replace existing output splits.
    workers, progress: threads; a progress bar on stderr.
    on_split: called with `(split name, output folder, image count)` after
      each split.

  Raises:
    ValueError: a split is missing, incomplete, or its files do not match
      the manifest (`encrypted_dataset.IncompleteSplitError`); a file's
      bytes differ from its recorded hash (`DamagedFileError`); an image
      does not decode to the manifest's shape.
    FileExistsError: `out` is not a folder, or an output split exists and
      `overwrite` is False.
    files.FolderLockedError: another run is writing to `out`.
  """
  splits = list(splits) if splits else sorted(manifest["splits"])
  listings = {s: encrypted_dataset.list_images(in_dir, manifest, s)
              for s in splits}
  # Datasets written before hashes existed are decrypted unchecked.
  hashes = {s: encrypted_dataset.split_hashes(in_dir, manifest, s,
                                              listings[s][2], required=False)
            for s in splits}
  if os.path.exists(out) and not os.path.isdir(out):
    raise FileExistsError(f"--out {out} exists and is not a folder")
  for split in splits:
    if os.path.exists(os.path.join(out, split)) and not overwrite:
      raise FileExistsError(
          f"{os.path.join(out, split)} already exists; pass --overwrite "
          "to replace it, or choose another --out")
  image_shape = tuple(manifest["image_shape"])
  encrypted_shape = tuple(manifest["encrypted_shape"])

  with locked(out):
    for split in splits:
      paths, labels, indices = listings[split]
      # Written under a hidden name, renamed when complete: a split folder
      # that exists is always fully decrypted.
      partial = os.path.join(out, f".{split}.partial")
      if os.path.exists(partial):
        shutil.rmtree(partial)
      for name in manifest["label_names"]:
        os.makedirs(os.path.join(partial, name))
      chunk = _chunk_size(image_shape, len(paths), workers)

      def process(positions, split=split, partial=partial, paths=paths,
                  labels=labels, indices=indices):
        data = []
        for p in positions:
          with open(paths[p], "rb") as f:
            data.append(f.read())
          if hashes[split] is not None:
            actual = encrypted_dataset.file_hash(data[-1])
            if actual != hashes[split][p]:
              raise encrypted_dataset.DamagedFileError(
                  encrypted_dataset.damaged_message(
                      paths[p], hashes[split][p], actual))
        encrypted = np.stack([
            jpeg.decode_image(d, encrypted_shape[-1], name=paths[p])
            for p, d in zip(positions, data)])
        if encrypted.shape[1:] != encrypted_shape:
          raise encrypted_dataset.DatasetMismatchError(
              f"encrypted images such as {paths[positions[0]]} have shape "
              f"{encrypted.shape[1:]}, the manifest says {encrypted_shape}")
        plain = decrypt_fn(split, indices[positions], encrypted)
        for p, image in zip(positions, plain):
          name = manifest["label_names"][labels[p]]
          files.atomic_write(
              os.path.join(partial, name, f"{indices[p]:06d}.png"),
              jpeg.encode_png_image(image))
        return len(positions), [], None

      positions = np.arange(len(paths))
      _run_chunks(process, (positions[s:s + chunk]
                            for s in range(0, len(paths), chunk)),
                  workers, progress, len(paths), f"decrypt {split}")
      final = os.path.join(out, split)
      if os.path.exists(final):
        shutil.rmtree(final)
      os.rename(partial, final)
      if on_split is not None:
        on_split(split, final, len(paths))
