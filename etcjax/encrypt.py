r"""Client-side CLI of the data owner: make a key, encrypt a dataset, decrypt it.

    python -m etcjax.encrypt keygen --key_file=owner.key
    python -m etcjax.encrypt encrypt --key_file=owner.key --scheme=etc \
        --block_size=16 --source=tfds:cifar10 --split=train,test \
        --out=cifar10_etc --format=jpeg --quality=85 --subsampling=4:2:0
    python -m etcjax.encrypt encrypt --key_file=owner.key \
        --source=folder:imagenette_224 --split=train,val --resize=224,224 \
        --out=imagenette_etc --format=png
    python -m etcjax.encrypt decrypt --key_file=owner.key --in=cifar10_etc \
        --out=cifar10_plain
    python -m etcjax.encrypt verify --out=cifar10_etc

`encrypt` writes the encrypted-dataset layout of `etcjax.data.encrypted_dataset`
(`OUT/manifest.json`, `OUT/<split>/<class>/<source_index:06d>.jpg|.png`),
which the cloud trains on without the key; the writer is
`etcjax.data.encrypted_writer`. Behaviour, decided once:

- Resumable: every file is written atomically (temporary file + rename) and
  its SHA-256 recorded in the manifest; re-running the same command keeps
  the files that match their hash and writes the rest (missing, truncated
  or damaged ones). `verify` checks every file against its hash without
  the key. A split is marked complete in the manifest only when all
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
import os
import sys
from typing import List, Optional, Sequence, Tuple

import jax
import numpy as np

from etcjax import command_line
from etcjax import encryption
from etcjax import files
from etcjax.data import encrypted_dataset
from etcjax.data import encrypted_writer
from etcjax.data import plain_sources
from etcjax.encryption import jpeg

def plan_encrypt_fn(key: bytes, scheme: str, image_shape, block_size: int,
                    steps: Optional[Sequence[str]]) -> encrypted_writer.EncryptFn:
  """Returns a batch encryption function for `write_split`.

  Args:
    key, scheme, image_shape, block_size, steps: as for
      `encryption.make_plan`.

  Returns:
    `(uint8 [n, H, W, 3], int64 ids [n]) -> uint8 numpy
    [n] + encrypted_shape`; the ids (`encrypted_dataset.image_key_ids`) are the
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


def _source_spec(spec: str) -> str:
  """`folder:ROOT` with ROOT resolved (relative and `~` paths)."""
  kind, sep, root = spec.partition(":")
  if sep and kind == "folder":
    return f"folder:{command_line.resolve_path(root)}"
  return spec


def _csv(text: str) -> List[str]:
  return [v.strip() for v in text.split(",") if v.strip()]


def cmd_keygen(args) -> int:
  """Writes a new key file (mode 0600) and prints its fingerprint."""
  fp = encryption.save_key(args.key_file, encryption.generate_key(),
                           overwrite=args.overwrite)
  print(f"wrote key file {args.key_file} (mode 0600); key fingerprint {fp}")
  return 0


def cmd_encrypt(args) -> int:
  """Encrypts the splits of a source into an encrypted dataset."""
  key = encryption.load_key(args.key_file)
  spec = encryption.get_scheme(args.scheme)
  block_size = spec.default_block_size if args.block_size is None else args.block_size
  steps = _csv(args.steps) if args.steps else None
  if args.format == "jpeg":
    jpeg.check_jpeg_compatible(args.scheme, block_size, args.subsampling)
    quality = 85 if args.quality is None else args.quality
    if not 1 <= quality <= 100:
      raise command_line.UsageError(
          f"--quality must be in [1, 100], got {quality}")
  elif args.quality is not None:
    raise command_line.UsageError("--quality applies to --format=jpeg only")
  else:
    quality = None

  source = plain_sources.open_source(_source_spec(args.source),
                                     _csv(args.split), args.data_dir,
                                     args.limit)
  if args.resize:
    image_shape = tuple(args.resize) + (3,)
  else:
    image_shape = plain_sources.first_image_shape(source)
  try:
    plan = encryption.make_plan(
        key, args.scheme, image_shape, block_size, steps,
        image_ids=[0] if args.scheme == "pe_per_image" else None)
  except encryption.SchemeParameterError as e:  # The images' shape.
    if args.resize:
      raise
    raise encryption.SchemeParameterError(
        f"{e} (or pass --resize=H,W)") from None
  gray = plan.encrypted_shape[-1] == 1
  new = encrypted_dataset.make_manifest(
      scheme=args.scheme, block_size=block_size, steps=steps,
      image_shape=image_shape, encrypted_shape=plan.encrypted_shape,
      key_fingerprint=encryption.fingerprint(key), codec=args.format,
      jpeg_quality=quality,
      # Single-channel JPEGs have no chroma to subsample.
      chroma_subsampling=(args.subsampling
                          if args.format == "jpeg" and not gray else None),
      label_names=source.label_names, source=source.info)
  encrypt_fn = plan_encrypt_fn(key, args.scheme, image_shape, block_size, steps)

  def report(split, result):
    complete = not result.failures
    print(f"{split}: {result.written} written, {result.skipped} already "
          f"done, {len(result.failures)} failed"
          f"{'' if complete else ' (split left incomplete)'}")
    for message in result.redone:
      print(f"  redone: {message}", file=sys.stderr)
    for _, message in result.failures:
      print(f"  failed: {message}", file=sys.stderr)

  results = encrypted_writer.encrypt_dataset(
      source, args.out, new, encrypt_fn, resize=bool(args.resize),
      overwrite=args.overwrite, workers=args.workers,
      progress=not args.no_progress, on_split=report)
  failed = sum(len(r.failures) for r in results.values())
  print(f"encrypted dataset {args.out} (scheme {args.scheme}, block size "
        f"{block_size}, key fingerprint {new['key_fingerprint']})")
  if failed:
    print(f"error: {failed} images could not be encrypted (listed above); "
          "fix or remove them and re-run to complete the dataset",
          file=sys.stderr)
    return 1
  return 0


def cmd_decrypt(args) -> int:
  """Decrypts an encrypted dataset into a plain PNG image folder."""
  key = encryption.load_key(args.key_file)
  manifest = encrypted_dataset.read_manifest(args.in_dir)
  encryption.check_fingerprint(key, manifest["key_fingerprint"],
                               f"the encrypted dataset {args.in_dir}")
  scheme, block_size = manifest["scheme"], manifest["block_size"]
  image_shape = tuple(manifest["image_shape"])
  if scheme == "pe_per_image":
    def decrypt_fn(split, indices, encrypted):
      plan = encryption.make_plan(
          key, scheme, image_shape, block_size, manifest["steps"],
          image_ids=encrypted_dataset.image_key_ids(split, indices))
      return encryption.invert_numpy(plan, encrypted)
  else:
    plan = jax.device_put(encryption.make_plan(
        key, scheme, image_shape, block_size, manifest["steps"]))
    def decrypt_fn(split, indices, encrypted):  # pylint: disable=unused-argument
      return encryption.invert_numpy(plan, encrypted)

  encrypted_writer.decrypt_dataset(
      args.in_dir, manifest, args.out, decrypt_fn,
      _csv(args.split) if args.split else None, overwrite=args.overwrite,
      workers=args.workers, progress=not args.no_progress,
      on_split=lambda split, final, n: print(
          f"{split}: {n} images decrypted to {final}"))
  return 0


def cmd_verify(args) -> int:
  """Checks every file of an encrypted dataset against its recorded hash."""
  manifest = encrypted_dataset.read_manifest(args.out)
  checks = encrypted_dataset.verify_files(
      args.out, manifest, _csv(args.split) if args.split else None,
      workers=args.workers)
  if args.add_hashes:
    problems = encrypted_dataset.record_hashes(args.out, manifest, checks)
    for line in problems:
      print(f"  {line}", file=sys.stderr)
    if problems:
      print(f"error: {len(problems)} files kept the hashes from being "
            "recorded (listed above); re-run `encrypt` to redo them",
            file=sys.stderr)
      return 1
    checks = encrypted_dataset.verify_files(
        args.out, manifest, list(checks), workers=args.workers)
  status = 0
  for split, check in checks.items():
    entry = manifest["splits"][split]
    state = "complete" if entry["complete"] else "incomplete"
    if check.legacy:
      print(f"{split}: {check.checked} of {entry['count']} files, no "
            "recorded hashes (written before etcjax recorded them): cannot "
            "verify; pass --add_hashes to record them, or re-run `encrypt`")
      status = 1
      continue
    print(f"{split}: {check.checked} of {entry['count']} files checked "
          f"({state}), {len(check.problems)} problems")
    for line in check.problems:
      print(f"  {line}", file=sys.stderr)
    if check.problems or not entry["complete"]:
      status = 1
  if status:
    print(f"error: {args.out} is damaged, incomplete or unverifiable (see "
          "above); re-run the `python -m etcjax.encrypt encrypt` command "
          "that made it to redo what is missing or damaged", file=sys.stderr)
  else:
    print(f"{args.out}: every file matches its recorded hash")
  return status


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
  path = command_line.path_arg
  keygen.add_argument("--key_file", required=True, type=path,
                      help="key file to create")
  command_line.add_alias(keygen, "--key", "--key_file", type=path)
  keygen.add_argument("--overwrite", action="store_true",
                      help="replace an existing key file (images encrypted "
                      "with the old key can then no longer be decrypted)")
  keygen.set_defaults(fn=cmd_keygen)

  enc = commands.add_parser(
      "encrypt", help="encrypt a dataset into OUT/<split>/<class>/*.jpg|png",
      description="Encrypts the images of a tfds dataset or image folder "
      "with a key; resumable. See `python -m etcjax.encrypt --help`.")
  enc.add_argument("--key_file", required=True, type=path,
                   help="key file (from keygen)")
  command_line.add_alias(enc, "--key", "--key_file", type=path)
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
  enc.add_argument("--data_dir", default=None, type=path,
                   help="tfds data_dir of a tfds:NAME source (default: "
                   "tfds' own, $TFDS_DATA_DIR or ~/tensorflow_datasets; "
                   "nothing is downloaded)")
  command_line.add_alias(enc, "--tfds_data_dir", "--data_dir", type=path)
  enc.add_argument("--out", required=True, type=path,
                   help="output dataset folder")
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
  dec.add_argument("--key_file", required=True, type=path, help="key file")
  command_line.add_alias(dec, "--key", "--key_file", type=path)
  dec.add_argument("--in", dest="in_dir", required=True, type=path,
                   help="encrypted dataset folder")
  dec.add_argument("--out", required=True, type=path,
                   help="output image folder")
  dec.add_argument("--split", default=None,
                   help="comma-separated splits (default: all)")
  _add_run_flags(dec, "replace existing output splits")
  dec.set_defaults(fn=cmd_decrypt)

  ver = commands.add_parser(
      "verify", help="check every file of an encrypted dataset against the "
      "hash recorded when it was written",
      description="Re-hashes every file of an encrypted dataset (no key "
      "needed) and reports missing, damaged or truncated files; exit status "
      "1 when any is found or a split is incomplete.")
  ver.add_argument("--out", required=True, type=path,
                   help="the encrypted dataset folder (as given to encrypt)")
  ver.add_argument("--split", default=None,
                   help="comma-separated splits (default: all)")
  ver.add_argument("--add_hashes", action="store_true",
                   help="for a dataset written before etcjax recorded "
                   "hashes: record the hashes of its files as they are now "
                   "(each must decode to the manifest's shape)")
  ver.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="threads (default: number of CPUs)")
  ver.set_defaults(fn=cmd_verify)
  return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Runs the CLI.

  Args:
    argv: arguments after the program name (None: `sys.argv[1:]`).

  Returns:
    Exit status: 0 success, 1 error or failed images (one line on stderr),
    2 usage errors.
  """
  return command_line.run(_main, argv)


def _main(argv: Optional[Sequence[str]]) -> int:
  args = _parser().parse_args(argv)
  if getattr(args, "workers", 1) < 1:
    raise command_line.UsageError(
        f"--workers must be >= 1, got {args.workers}")
  return args.fn(args)


if __name__ == "__main__":
  sys.exit(main())
