r"""Client-side CLI of the data owner: make a key, encrypt a dataset, decrypt it.

    python -m etcjax.encrypt keygen --key=owner.key
    python -m etcjax.encrypt encrypt --key=owner.key --scheme=etc \
        --block_size=16 --source=tfds:cifar10 --split=train,test \
        --out=cifar10_etc --format=jpeg --quality=85 --subsampling=4:2:0
    python -m etcjax.encrypt encrypt --key=owner.key \
        --source=folder:imagenette_224 --split=train,val --resize=224,224 \
        --out=imagenette_etc --format=png
    python -m etcjax.encrypt decrypt --key=owner.key --in=cifar10_etc \
        --out=cifar10_plain

`encrypt` writes the encrypted-dataset layout of `etcjax.encryption.manifest`
(`OUT/manifest.json`, `OUT/<split>/<class>/<source_index:06d>.jpg|.png`),
which the cloud trains on without the key. Behaviour, decided once:

- Resumable: every file is written atomically (temporary file + rename), so
  a file that exists is complete; re-running the same command skips them and
  writes the rest. A split is marked complete in the manifest only when all
  its files exist. Folder sources are indexed by position in the sorted file
  list, so a changed list (files added, removed, renamed) is refused on
  resume unless --overwrite re-encrypts the split.
- Nothing is overwritten without --overwrite: not existing image files, not
  a dataset made with another key, scheme or codec, and not a non-empty
  folder that is not an encrypted dataset (always refused).
- Image size: all images of a dataset must share one size that is a
  multiple of the block size. Without --resize, the first image fixes the
  size, a size that does not fit the block size is refused up front, and an
  image of another size is a per-image failure. --resize=H,W resizes every
  image (bicubic, in the plain domain, before encryption).
- Unreadable or wrongly sized images are skipped, listed by name at the end,
  and the command exits with status 1 leaving the split incomplete (fix or
  remove them, then re-run to finish). Other errors stop the command with
  status 1 and a message; usage errors exit with status 2.
- JPEG output needs a JPEG-compliant scheme and block size (see
  `etcjax.encryption.jpeg.check_jpeg_compatible`); the baselines (le, ele,
  pe, pe_per_image) can only be written as PNG.
- The key is never printed or written anywhere but its key file; outputs
  record its fingerprint.

`decrypt` checks the key against the manifest's fingerprint (KeyMismatchError
otherwise) and writes a plain image folder `OUT/<split>/<class>/*.png`;
each split appears under its name only once fully decrypted.

Arguments use argparse sub-commands; run `python -m etcjax.encrypt
<command> --help` for each command's flags.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import fcntl
import hashlib
import os
import shutil
import socket
import sys
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import jax
import numpy as np
from PIL import Image
import tqdm

from etcjax import encryption
from etcjax.data import image_folder
from etcjax.encryption import jpeg
from etcjax.encryption import manifest as manifest_lib

# Plain pixels per encryption chunk: large enough to amortise the jitted
# gather's dispatch, small enough to keep several chunks in flight.
_CHUNK_VALUES = 2**23
_MAX_CHUNK = 1024


# --------------------------------------------------------------------------
# Sources of plain images.


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
  """

  name: str
  labels: np.ndarray
  read: Callable[[int], np.ndarray]
  digest: Optional[str] = None

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
    opened.append(SourceSplit(split, labels,
                              lambda i, images=images: images[i]))
  version = str(tfds_source.version(name, data_dir))
  return {"kind": "tfds", "name": name, "version": version}, names, opened


def _open_folder(root: str, splits: Sequence[str], limit: Optional[int]
                 ) -> Tuple[Dict, List[str], List[SourceSplit]]:
  opened, names = [], None
  for split in splits:
    folder = image_folder.scan(os.path.join(root, split))
    if names is not None and folder.class_names != names:
      raise ValueError(
          f"split folders of {root} have different classes: "
          f"{splits[0]!r} has {names}, {split!r} has {folder.class_names}; "
          "every split needs the same class sub-folders")
    names = folder.class_names
    paths = folder.paths[:limit] if limit else folder.paths
    listing = "\n".join(os.path.relpath(p, root) for p in paths)
    opened.append(SourceSplit(
        split, folder.labels[:len(paths)],
        lambda i, paths=paths: image_folder.read_image(paths[i]),
        hashlib.sha256(listing.encode("utf-8")).hexdigest()[:16]))
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
    raise ValueError(
        f"--source must be 'tfds:NAME' or 'folder:ROOT', got {spec!r}")
  if not splits:
    raise ValueError("--split needs at least one split name")
  for split in splits:
    if not split or any(c in split for c in "[]:/\\%") or split.startswith("."):
      raise ValueError(
          f"split name {split!r} is not a plain split name (no tfds slicing; "
          "use --limit to take the first images of a split)")
  if len(set(splits)) != len(splits):
    raise ValueError(f"--split lists a split twice: {list(splits)}")
  if limit is not None and limit < 1:
    raise ValueError(f"--limit must be a positive number of images, got {limit}")
  if kind == "tfds":
    info, names, opened = _open_tfds(name, splits, tfds_data_dir, limit)
  else:
    info, names, opened = _open_folder(name, splits, limit)
  return Source(spec, info, names, opened)


def _resize(image: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
  if image.shape[:2] == tuple(size):
    return image
  pil = Image.fromarray(image).resize((size[1], size[0]),
                                      Image.Resampling.BICUBIC)
  return np.asarray(pil)


def _first_image_shape(source: Source) -> Tuple[int, int, int]:
  errors = []
  for split in source.splits:
    for i in range(len(split)):
      try:
        return tuple(split.read(i).shape)
      except ValueError as e:
        errors.append(str(e))
        if len(errors) >= 10:
          break
  raise ValueError(f"no readable image found in {source.spec}: {errors}")


# --------------------------------------------------------------------------
# Writing one split.


@dataclasses.dataclass
class SplitResult:
  """What `write_split` did.

  Attributes:
    written: number of files written.
    skipped: number of files that already existed.
    failures: `(index, message)` of every image that could not be written.
  """

  written: int = 0
  skipped: int = 0
  failures: List[Tuple[int, str]] = dataclasses.field(default_factory=list)


def _chunk_size(image_shape, todo: int, workers: int) -> int:
  by_size = max(1, min(_MAX_CHUNK, _CHUNK_VALUES // int(np.prod(image_shape))))
  # Small jobs: split evenly so every worker gets a chunk.
  return max(1, min(by_size, -(-todo // (2 * workers))))


def _run_chunks(fn, chunks, workers: int, progress, total: int, desc: str):
  """Runs `fn(chunk) -> (count, failures)` over chunks on a thread pool.

  At most 2 * workers chunks are in flight, bounding memory; PIL coding and
  the jitted gather release the GIL, so threads use all cores.
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
        count, chunk_failures = future.result()
        failures.extend(chunk_failures)
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


def write_split(split: SourceSplit, out: str, label_names: Sequence[str],
                image_shape: Tuple[int, int, int], encrypt_fn: Optional[EncryptFn],
                codec: str, quality: Optional[int], subsampling: Optional[str],
                resize: bool = False, overwrite: bool = False, workers: int = 2,
                progress: bool = True) -> SplitResult:
  """Reads, encrypts, encodes and writes the images of one split.

  Args:
    split: the plain source split.
    out: dataset folder; files go to `out/<split>/<class>/<index:06d>.<ext>`.
    label_names: class names (folder names).
    image_shape: `(H, W, 3)` every plain image must have (after resizing).
    encrypt_fn: `(uint8 [n, H, W, 3], int64 per-image key ids [n]) -> uint8
      [n, H', W', C']` (ids from `manifest.image_key_ids`); None writes the
      plain images (benchmarks only).
    codec: 'jpeg' or 'png'.
    quality, subsampling: JPEG settings.
    resize: resize images of another size to `image_shape` instead of
      failing them.
    overwrite: rewrite existing files and delete stray ones.
    workers: threads.
    progress: show a progress bar on stderr.

  Returns:
    A `SplitResult`; the split is complete iff `failures` is empty.
  """
  paths = [manifest_lib.image_path(out, split.name, label_names[label], i, codec)
           for i, label in enumerate(split.labels)]
  _prepare_split_dir(out, split.name, label_names, set(paths), overwrite)
  todo = np.asarray([i for i, p in enumerate(paths)
                     if overwrite or not os.path.exists(p)], np.int64)
  result = SplitResult(skipped=len(paths) - len(todo))
  if not len(todo):
    return result
  chunk = _chunk_size(image_shape, len(todo), workers)

  def process(indices):
    images, kept, failures = [], [], []
    for i in indices:
      try:
        image = split.read(int(i))
        if resize:
          image = _resize(image, image_shape[:2])
        if image.shape != tuple(image_shape):
          raise ValueError(
              f"image {split.name}[{i}] ({paths[i]} when encrypted) has shape "
              f"{image.shape}; this dataset's images are {tuple(image_shape)} "
              "(pass --resize=H,W to resize every image)")
      except ValueError as e:
        failures.append((int(i), str(e)))
        continue
      images.append(image)
      kept.append(i)
    if not images:
      return len(indices), failures
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
          batch, manifest_lib.image_key_ids(split.name, kept_ids))[:len(kept)]
    files = jpeg.encode(batch, codec, quality, subsampling)
    for i, data in zip(kept, files):
      manifest_lib.atomic_write(paths[i], data)
    return len(indices), failures

  chunks = (todo[s:s + chunk] for s in range(0, len(todo), chunk))
  result.failures = sorted(_run_chunks(process, chunks, workers, progress,
                                       len(todo), f"encrypt {split.name}"))
  result.written = len(todo) - len(result.failures)
  return result


def plan_encrypt_fn(key: bytes, scheme: str, image_shape, block_size: int,
                    steps: Optional[Sequence[str]]) -> EncryptFn:
  """Returns a batch encryption function for `write_split`.

  Args:
    key, scheme, image_shape, block_size, steps: as for
      `encryption.make_plan`.

  Returns:
    `(uint8 [n, H, W, 3], int64 ids [n]) -> uint8 numpy
    [n] + encrypted_shape`; the ids (`manifest.image_key_ids`) are the
    per-image key ids of 'pe_per_image' and unused otherwise.
  """
  if scheme == "pe_per_image":
    def encrypt_fn(images, ids):
      plan = encryption.make_plan(key, scheme, image_shape, block_size, steps,
                                  image_ids=ids)
      return np.asarray(encryption.apply(plan, images))
    return encrypt_fn
  # On device once: every chunk reuses the plan's index arrays.
  plan = jax.device_put(encryption.make_plan(key, scheme, image_shape,
                                             block_size, steps))
  return lambda images, ids: encryption.apply_numpy(plan, images)


# --------------------------------------------------------------------------
# Commands.


def _parse_size(text: str) -> Tuple[int, int]:
  try:
    h, w = (int(v) for v in text.split(","))
  except ValueError:
    raise argparse.ArgumentTypeError(
        f"--resize must be H,W (two positive integers), got {text!r}") from None
  if h < 1 or w < 1:
    raise argparse.ArgumentTypeError(f"--resize must be positive, got {text!r}")
  return h, w


def _csv(text: str) -> List[str]:
  return [v.strip() for v in text.split(",") if v.strip()]


def cmd_keygen(args) -> int:
  """Writes a new key file (mode 0600) and prints its fingerprint."""
  fp = encryption.save_key(args.key, encryption.generate_key(),
                           overwrite=args.overwrite)
  print(f"wrote key file {args.key} (mode 0600); key fingerprint {fp}")
  return 0


def _compatible(old: Dict, new: Dict) -> List[str]:
  """Names of manifest fields (other than splits) that differ."""
  return [k for k in new if k != "splits" and old.get(k) != new[k]]


LOCK_FILE = ".etcjax.lock"


class FolderLockedError(RuntimeError):
  """Another run is writing to the same output folder."""


@contextlib.contextmanager
def _locked(out: str):
  """Holds an exclusive lock on the output folder `out` (created if needed).

  Two runs writing one folder would interleave manifests and files. The
  lock is an flock on a hidden file in `out`: the kernel drops it when the
  process dies, so a killed run never leaves a stale lock behind. The file
  is removed (while still locked) when the run ends; a run that opened it
  just before then sees that its inode is gone and opens the new one.

  Raises:
    FileExistsError: `out` exists and is not a folder.
    FolderLockedError: another run holds the lock.
  """
  if os.path.exists(out) and not os.path.isdir(out):
    raise FileExistsError(f"--out {out} exists and is not a folder")
  os.makedirs(out, exist_ok=True)
  path = os.path.join(out, LOCK_FILE)
  while True:
    f = open(path, "a+")
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      f.seek(0)
      holder = f.read().strip() or "another process"
      f.close()
      raise FolderLockedError(
          f"another etcjax.encrypt run ({holder}) is writing to {out}; wait "
          "for it to finish or choose another --out") from None
    except OSError as e:
      # Some network and FUSE file systems have no flock; lose only the
      # protection, not the run.
      print(f"warning: cannot lock {path} ({e}); concurrent runs into "
            f"{out} will not be detected", file=sys.stderr)
    try:
      current = os.stat(path).st_ino
    except FileNotFoundError:
      current = None
    if current == os.fstat(f.fileno()).st_ino:
      break
    f.close()  # locked a file its holder had already removed: retry
  try:
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()}")
    f.flush()
    yield
  finally:
    os.remove(path)
    f.close()  # releases the flock


def _check_out_dir(out: str, new: Dict, overwrite: bool) -> Dict:
  """Reconciles `out` with the manifest of this run; returns the splits kept.

  Raises when `out` holds something this run must not touch.
  """
  if not os.path.exists(os.path.join(out, manifest_lib.MANIFEST_FILE)):
    if set(os.listdir(out)) - {LOCK_FILE}:
      raise FileExistsError(
          f"--out {out} is a non-empty folder without {manifest_lib.MANIFEST_FILE}"
          " (not an etcjax encrypted dataset); choose a new or empty folder")
    return {}
  old = manifest_lib.read_manifest(out)
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
  os.remove(os.path.join(out, manifest_lib.MANIFEST_FILE))
  for split in old["splits"]:
    path = os.path.join(out, split)
    if os.path.isdir(path):
      shutil.rmtree(path)
  return {}


def cmd_encrypt(args) -> int:
  """Encrypts the splits of a source into an encrypted dataset."""
  key = encryption.load_key(args.key)
  spec = encryption.get_scheme(args.scheme)
  block_size = spec.default_block_size if args.block_size is None else args.block_size
  steps = _csv(args.steps) if args.steps else None
  if args.format == "jpeg":
    jpeg.check_jpeg_compatible(args.scheme, block_size, args.subsampling)
    quality = 85 if args.quality is None else args.quality
    if not 1 <= quality <= 100:
      raise ValueError(f"--quality must be in [1, 100], got {quality}")
  elif args.quality is not None:
    raise ValueError("--quality applies to --format=jpeg only")
  else:
    quality = None

  source = open_source(args.source, _csv(args.split), args.tfds_data_dir,
                       args.limit)
  if args.resize:
    image_shape = tuple(args.resize) + (3,)
  else:
    image_shape = _first_image_shape(source)
  try:
    plan = encryption.make_plan(
        key, args.scheme, image_shape, block_size, steps,
        image_ids=[0] if args.scheme == "pe_per_image" else None)
  except ValueError as e:
    raise ValueError(
        f"{e}{'' if args.resize else ' (or pass --resize=H,W)'}") from None
  gray = plan.encrypted_shape[-1] == 1
  new = manifest_lib.make_manifest(
      scheme=args.scheme, block_size=block_size, steps=steps,
      image_shape=image_shape, encrypted_shape=plan.encrypted_shape,
      key_fingerprint=encryption.fingerprint(key), codec=args.format,
      jpeg_quality=quality,
      # Single-channel JPEGs have no chroma to subsample.
      chroma_subsampling=(args.subsampling
                          if args.format == "jpeg" and not gray else None),
      label_names=source.label_names, source=source.info)
  with _locked(args.out):
    splits = _check_out_dir(args.out, new, args.overwrite)
    for split in source.splits:
      old = splits.get(split.name)
      if (old is not None and old.get("source_digest") != split.digest
          and not args.overwrite):
        raise FileExistsError(
            f"split {split.name!r} in {args.out} was encrypted from another "
            f"list of source files than {args.source}/{split.name} now holds "
            "(files were added, removed or renamed), so image indices differ; "
            "pass --overwrite to re-encrypt the split, or choose another --out")
      splits[split.name] = {"count": len(split), "complete": False}
      if split.digest:
        splits[split.name]["source_digest"] = split.digest
    new["splits"] = splits
    manifest_lib.write_manifest(args.out, new)

    encrypt_fn = plan_encrypt_fn(key, args.scheme, image_shape, block_size, steps)
    failed = []
    for split in source.splits:
      result = write_split(
          split, args.out, source.label_names, image_shape, encrypt_fn,
          args.format, quality, args.subsampling, resize=bool(args.resize),
          overwrite=args.overwrite, workers=args.workers,
          progress=not args.no_progress)
      complete = not result.failures
      if complete:
        new["splits"][split.name]["complete"] = True
        manifest_lib.write_manifest(args.out, new)
      print(f"{split.name}: {result.written} written, {result.skipped} already "
            f"done, {len(result.failures)} failed"
            f"{'' if complete else ' (split left incomplete)'}")
      failed.extend(result.failures)
      for _, message in result.failures:
        print(f"  failed: {message}", file=sys.stderr)
    print(f"encrypted dataset {args.out} (scheme {args.scheme}, block size "
          f"{block_size}, key fingerprint {new['key_fingerprint']})")
    if failed:
      print(f"error: {len(failed)} images could not be encrypted (listed above); "
            "fix or remove them and re-run to complete the dataset",
            file=sys.stderr)
      return 1
    return 0


def cmd_decrypt(args) -> int:
  """Decrypts an encrypted dataset into a plain PNG image folder."""
  key = encryption.load_key(args.key)
  manifest = manifest_lib.read_manifest(args.in_dir)
  encryption.check_fingerprint(key, manifest["key_fingerprint"],
                               f"the encrypted dataset {args.in_dir}")
  splits = _csv(args.split) if args.split else sorted(manifest["splits"])
  listings = {s: manifest_lib.list_images(args.in_dir, manifest, s)
              for s in splits}
  if os.path.exists(args.out) and not os.path.isdir(args.out):
    raise FileExistsError(f"--out {args.out} exists and is not a folder")
  for split in splits:
    if os.path.exists(os.path.join(args.out, split)) and not args.overwrite:
      raise FileExistsError(
          f"{os.path.join(args.out, split)} already exists; pass --overwrite "
          "to replace it, or choose another --out")
  scheme, block_size = manifest["scheme"], manifest["block_size"]
  image_shape = tuple(manifest["image_shape"])
  encrypted_shape = tuple(manifest["encrypted_shape"])
  plan = None
  if scheme != "pe_per_image":
    plan = jax.device_put(encryption.make_plan(
        key, scheme, image_shape, block_size, manifest["steps"]))

  with _locked(args.out):
    for split in splits:
      paths, labels, indices = listings[split]
      # Written under a hidden name, renamed when complete: a split folder
      # that exists is always fully decrypted.
      partial = os.path.join(args.out, f".{split}.partial")
      if os.path.exists(partial):
        shutil.rmtree(partial)
      for name in manifest["label_names"]:
        os.makedirs(os.path.join(partial, name))
      chunk = _chunk_size(image_shape, len(paths), args.workers)

      def process(positions, partial=partial, paths=paths, labels=labels,
                  indices=indices):
        files = []
        for p in positions:
          with open(paths[p], "rb") as f:
            files.append(f.read())
        encrypted = np.stack([
            jpeg.decode_image(data, encrypted_shape[-1], name=paths[p])
            for p, data in zip(positions, files)])
        if encrypted.shape[1:] != encrypted_shape:
          raise ValueError(
              f"encrypted images such as {paths[positions[0]]} have shape "
              f"{encrypted.shape[1:]}, the manifest says {encrypted_shape}")
        chunk_plan = plan if plan is not None else encryption.make_plan(
            key, scheme, image_shape, block_size, manifest["steps"],
            image_ids=manifest_lib.image_key_ids(split, indices[positions]))
        plain = encryption.invert_numpy(chunk_plan, encrypted)
        for p, image in zip(positions, plain):
          name = manifest["label_names"][labels[p]]
          manifest_lib.atomic_write(
              os.path.join(partial, name, f"{indices[p]:06d}.png"),
              jpeg.encode_png_image(image))
        return len(positions), []

      positions = np.arange(len(paths))
      _run_chunks(process, (positions[s:s + chunk]
                            for s in range(0, len(paths), chunk)),
                  args.workers, not args.no_progress, len(paths),
                  f"decrypt {split}")
      final = os.path.join(args.out, split)
      if os.path.exists(final):
        shutil.rmtree(final)
      os.rename(partial, final)
      print(f"{split}: {len(paths)} images decrypted to {final}")
    return 0


def _add_run_flags(parser, overwrite_help: str) -> None:
  parser.add_argument("--overwrite", action="store_true", help=overwrite_help)
  parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                      help="threads (default: number of CPUs)")
  parser.add_argument("--no_progress", action="store_true",
                      help="no progress bar")


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m etcjax.encrypt",
      description=__doc__.split("\n\n", 1)[0].split("\n", 1)[0],
      epilog=__doc__.split("\n\n", 1)[1],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  commands = parser.add_subparsers(dest="command", required=True)

  keygen = commands.add_parser(
      "keygen", help="write a new secret key file (mode 0600)",
      description="Writes a new 32-byte key from the OS CSPRNG to --key "
      "(mode 0600) and prints only its fingerprint.")
  keygen.add_argument("--key", required=True, help="key file to create")
  keygen.add_argument("--overwrite", action="store_true",
                      help="replace an existing key file (images encrypted "
                      "with the old key can then no longer be decrypted)")
  keygen.set_defaults(fn=cmd_keygen)

  enc = commands.add_parser(
      "encrypt", help="encrypt a dataset into OUT/<split>/<class>/*.jpg|png",
      description="Encrypts the images of a tfds dataset or image folder "
      "with a key; resumable. See `python -m etcjax.encrypt --help`.")
  enc.add_argument("--key", required=True, help="key file (from keygen)")
  enc.add_argument("--scheme", default="etc",
                   choices=sorted(encryption.SCHEMES),
                   help="encryption scheme (default: etc)")
  enc.add_argument("--block_size", type=int, default=None,
                   help="block side in pixels (default: the scheme's, 16 "
                   "for etc)")
  enc.add_argument("--steps", default=None,
                   help="comma-separated subset of the scheme's steps, for "
                   "ablations (default: all)")
  enc.add_argument("--source", required=True,
                   help="tfds:NAME (prepared tfds dataset) or folder:ROOT "
                   "(ROOT/<split>/<class>/<image>)")
  enc.add_argument("--split", required=True,
                   help="comma-separated split names, e.g. train,test")
  enc.add_argument("--tfds_data_dir", default=None,
                   help="tfds data_dir (default: tfds' own default)")
  enc.add_argument("--out", required=True, help="output dataset folder")
  enc.add_argument("--format", choices=sorted(jpeg.CODECS), default="jpeg",
                   help="jpeg (lossy, default) or png (lossless)")
  enc.add_argument("--quality", type=int, default=None,
                   help="JPEG quality factor 1-100 (default 85)")
  enc.add_argument("--subsampling", choices=sorted(jpeg.SUBSAMPLINGS),
                   default="4:2:0", help="JPEG chroma subsampling "
                   "(default 4:2:0, needs a block size multiple of 16)")
  enc.add_argument("--resize", type=_parse_size, default=None,
                   help="H,W: resize every image (bicubic) before encryption")
  enc.add_argument("--limit", type=int, default=None,
                   help="encrypt only the first N images of every split")
  _add_run_flags(enc, "rewrite existing files / replace a dataset made with "
                 "other settings")
  enc.set_defaults(fn=cmd_encrypt)

  dec = commands.add_parser(
      "decrypt", help="decrypt an encrypted dataset into PNG image folders",
      description="Decrypts OUT/<split>/<class>/*.png from an encrypted "
      "dataset; the key must match the manifest's fingerprint.")
  dec.add_argument("--key", required=True, help="key file")
  dec.add_argument("--in", dest="in_dir", required=True,
                   help="encrypted dataset folder")
  dec.add_argument("--out", required=True, help="output image folder")
  dec.add_argument("--split", default=None,
                   help="comma-separated splits (default: all)")
  _add_run_flags(dec, "replace existing output splits")
  dec.set_defaults(fn=cmd_decrypt)
  return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Runs the CLI.

  Args:
    argv: arguments after the program name (None: `sys.argv[1:]`).

  Returns:
    Exit status: 0 success, 1 error or failed images (argparse exits with 2
    on usage errors).
  """
  args = _parser().parse_args(argv)
  if getattr(args, "workers", 1) < 1:
    print(f"error: --workers must be >= 1, got {args.workers}", file=sys.stderr)
    return 2
  try:
    return args.fn(args)
  except (ValueError, OSError, FolderLockedError) as e:
    # Messages of etcjax never contain the key; they name files and values.
    print(f"error: {e}", file=sys.stderr)
    return 1


if __name__ == "__main__":
  sys.exit(main())
