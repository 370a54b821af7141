r"""CLI of the evaluation suite: everything measured besides accuracy.

    python -m etcjax.evaluate compressibility --datasets=cifar10,imagenette \
        --size=full --imagenette_dir=DATA/imagenette_224 --out=RUN
    python -m etcjax.evaluate visual --datasets=cifar10 --size=full --out=RUN
    python -m etcjax.evaluate attacks --datasets=cifar10 --size=full \
        --attacks=brute_force,fr,fr_advanced,jigsaw --out=RUN
    python -m etcjax.evaluate brute_force --image_sizes=32,224 --out=RUN
    python -m etcjax.evaluate accuracy --export=WORKDIR/export \
        --key_file=owner.key --dataset=cifar10 --out=RUN
    python -m etcjax.evaluate adapted_accuracy --plain=PLAIN/export \
        --adapted=ADAPTED --key_file=owner.key --out=RUN
    python -m etcjax.evaluate adapted_key_recovery --public=PLAIN/export \
        --adapted=ADAPTED --key_file=owner.key --out=RUN
    python -m etcjax.evaluate key_recovery --datasets=cifar10 --size=full \
        --ciphertexts=1,2,5,10,100,all --pairs=1,2,5 --out=RUN
    python -m etcjax.evaluate report --out=RUN
    python -m etcjax.evaluate all --size=smoke --out=RUN   # CI: every task

Each task writes `RUN/<task>/<dataset>/` (tables as CSV and Markdown,
figures as PNG, meta.json) and refuses to replace existing results without
--overwrite; a task that fails leaves nothing that looks complete. `--size`
is 'smoke' (a few hundred images, seconds to minutes; what CI runs) or
'full' (the study: whole datasets; the learned GAN/ITN attacks at full size
are GPU/TPU work). Data: `--data_dir` is the tfds data_dir of CIFAR-10
(default: tfds' own, $TFDS_DATA_DIR or ~/tensorflow_datasets; nothing is
downloaded), `--imagenette_dir` a folder with train/ and val/ class folders.

The secret key: `--key_file` (made with `python -m etcjax.encrypt keygen`),
or a fresh random key per run; only its fingerprint is recorded. Paths may
be relative or start with `~`. Errors exit with status 1 and a one-line
message, usage errors with status 2; `python -m etcjax.evaluate TASK --help`
documents every flag of a task.
"""

from __future__ import annotations

if __name__ == "__main__":
  # First, before imports start threads and take seconds: glibc reads its
  # tunables at process start (see etcjax/host_memory.py).
  from etcjax import host_memory  # pylint: disable=g-import-not-at-top
  host_memory.restart_with_huge_pages()

import argparse
import dataclasses
import sys
from typing import Dict, List, Optional, Sequence, Union

from etcjax import command_line
from etcjax import encryption
from etcjax.evaluation import attack_suite
from etcjax.evaluation import compressibility
from etcjax.evaluation import key_recovery
from etcjax.evaluation import report
from etcjax.evaluation import requests
from etcjax.evaluation import sources
from etcjax.evaluation import visual_information
from etcjax.evaluation.attacks import brute_force
from etcjax.evaluation.attacks import threat_model

TASKS = ("compressibility", "visual", "attacks", "brute_force", "accuracy",
         "adapted_accuracy", "adapted_key_recovery", "key_recovery",
         "report", "all")


def _names(text: str) -> List[str]:
  return [t.strip() for t in text.split(",") if t.strip()]


def _ints(text: str) -> List[int]:
  try:
    return [int(t) for t in _names(text)]
  except ValueError:
    raise argparse.ArgumentTypeError(
        f"expected comma-separated integers, got {text!r}") from None


def _limits(text: str) -> Union[int, Dict[str, int]]:
  """'N' (every scheme) or 'scheme:N,scheme:N'."""
  try:
    if ":" not in text:
      return int(text)
    return {k.strip(): int(v) for k, v in
            (item.split(":", 1) for item in _names(text))}
  except ValueError:
    raise argparse.ArgumentTypeError(
        f"expected N or scheme:N,scheme:N with integers N, got {text!r}") from None


def _qualities(text: str) -> List[Optional[int]]:
  out = []
  for t in _names(text):
    if t in ("none", "uncompressed"):
      out.append(None)
    else:
      try:
        out.append(int(t))
      except ValueError:
        raise argparse.ArgumentTypeError(
            f"qualities are integers in [1, 100] or 'none', got {t!r}") from None
  return out


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m etcjax.evaluate",
      description="Evaluation suite of etcjax (see the module docstring).")
  sub = parser.add_subparsers(dest="task", required=True, metavar="TASK",
                              help=" | ".join(TASKS))
  path = command_line.path_arg

  def common(p, datasets=True):
    p.add_argument("--out", required=True, type=path,
                   help="run folder for the results")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing results of this task")
    if datasets:
      p.add_argument("--size", default="smoke", choices=("smoke", "full"),
                     help="smoke: a few hundred images (CI); full: the study")
      p.add_argument("--datasets", type=_names, default=["cifar10"],
                     help=f"comma-separated, from {sorted(sources.DATASETS)}")
      data_flags(p)
      p.add_argument("--key_file", default=None, type=path,
                     help="key file (default: a fresh random key)")
      command_line.add_alias(p, "--key", "--key_file", type=path)
      p.add_argument("--no_progress", action="store_true",
                     help="hide progress bars")

  p = sub.add_parser("compressibility", help="file sizes (Table IV), RD curves")
  common(p)
  p.add_argument("--schemes", type=_names,
                 default=list(compressibility.DEFAULT_SCHEMES),
                 help="comma-separated scheme names")
  p.add_argument("--codecs", type=_names, default=list(compressibility.CODECS),
                 help="comma-separated, from " + ", ".join(compressibility.CODECS))
  p.add_argument("--workers", type=int, default=2,
                 help="coding processes (default 2)")
  p.add_argument("--limit", type=int, default=None,
                 help="images per split (default: the size's; full: all)")

  p = sub.add_parser("visual", help="LPIPS and SSIM of encrypted images (Fig. 7)")
  common(p)
  p.add_argument("--schemes", type=_names,
                 default=list(visual_information.DEFAULT_SCHEMES),
                 help="comma-separated scheme names")
  p.add_argument("--limit", type=int, default=None,
                 help="test images (default: the size's)")

  p = sub.add_parser("attacks", help="attacks and their SSIM/PSNR (Figs. 6, 8)")
  common(p)
  _attack_flags(p)

  p = sub.add_parser("brute_force", help="key-space sizes")
  common(p, datasets=False)
  p.add_argument("--image_sizes", type=_ints, default=[32, 224],
                 help="square image sides (default 32,224)")
  p.add_argument("--schemes", type=_names, default=None,
                 help="comma-separated (default: every scheme)")

  p = sub.add_parser("accuracy", help="accuracy under JPEG (Table III)")
  common(p, datasets=False)
  p.add_argument("--export", required=True, type=path,
                 help="export folder of a model")
  p.add_argument("--dataset", default="cifar10",
                 help="whose test split to use: cifar10 or imagenette")
  p.add_argument("--size", default="smoke", choices=("smoke", "full"),
                 help="smoke: a few hundred test images; full: all")
  p.add_argument("--limit", type=int, default=None,
                 help="test images (default: the size's)")
  p.add_argument("--qualities", type=_qualities, default=[None, 85, 80],
                 help="comma-separated JPEG QFs; 'none' = uncompressed")
  p.add_argument("--key_file", default=None, type=path,
                 help="the model's key (models of encrypted images)")
  command_line.add_alias(p, "--key", "--key_file", type=path)
  data_flags(p)
  p.add_argument("--no_progress", action="store_true",
                 help="hide progress bars")

  p = sub.add_parser("adapted_accuracy",
                     help="a key-adapted model vs its plain origin")
  adapted_accuracy_flags(p)

  p = sub.add_parser("adapted_key_recovery",
                     help="the key recovered from an adapted model and the "
                     "weights it came from")
  adapted_key_recovery_flags(p)

  p = sub.add_parser("key_recovery",
                     help="same-key attacks: what N ciphertexts of one key give")
  common(p)
  _key_recovery_flags(p)

  p = sub.add_parser("report", help="gather a run folder into report.md")
  common(p, datasets=False)

  p = sub.add_parser("all", help="every task but accuracy, then the report")
  common(p)
  _attack_flags(p, schemes=False)
  p.add_argument("--workers", type=int, default=2,
                 help="compressibility: coding processes (default 2)")
  _key_recovery_flags(p, schemes=False)
  return parser


def data_flags(p: argparse.ArgumentParser) -> None:
  """Where the datasets are: --data_dir (alias --tfds_data_dir) and
  --imagenette_dir."""
  path = command_line.path_arg
  p.add_argument("--data_dir", default=None, type=path,
                 help="tfds data_dir holding cifar10 (default: tfds' own, "
                 "$TFDS_DATA_DIR or ~/tensorflow_datasets; nothing is "
                 "downloaded)")
  command_line.add_alias(p, "--tfds_data_dir", "--data_dir", type=path)
  p.add_argument("--imagenette_dir", default=None, type=path,
                 help="Imagenette folder with train/ and val/ class folders")


def adapted_accuracy_flags(p: argparse.ArgumentParser) -> None:
  """Flags of the adapted_accuracy task (shared with `evaluate`)."""
  path = command_line.path_arg
  p.add_argument("--plain", required=True, type=path,
                 help="plain-image model export")
  p.add_argument("--adapted", required=True, type=path,
                 help="its adapted export")
  p.add_argument("--key_file", required=True, type=path,
                 help="the adapted model's key")
  command_line.add_alias(p, "--key", "--key_file", type=path)
  p.add_argument("--dataset", default="cifar10",
                 help="whose test split: cifar10 (default) or imagenette")
  data_flags(p)
  p.add_argument("--limit", type=int, default=None,
                 help="first N test images (default: all)")
  p.add_argument("--out", required=True, type=path,
                 help="run folder for the results")
  p.add_argument("--overwrite", action="store_true",
                 help="replace existing results of this task")
  p.add_argument("--no_progress", action="store_true",
                 help="hide progress bars")


def adapted_key_recovery_flags(p: argparse.ArgumentParser) -> None:
  """Flags of the adapted_key_recovery task (shared with `evaluate`)."""
  path = command_line.path_arg
  p.add_argument("--public", required=True, type=path,
                 help="the weights it was adapted from: export, orbax "
                 "checkpoint or vit_jax .npz")
  p.add_argument("--adapted", required=True, type=path,
                 help="the adapted export")
  p.add_argument("--key_file", default=None, type=path,
                 help="the true key, only to score the recovery")
  command_line.add_alias(p, "--key", "--key_file", type=path)
  p.add_argument("--out", required=True, type=path,
                 help="run folder for the results")
  p.add_argument("--overwrite", action="store_true",
                 help="replace existing results of this task")


def run_adapted_accuracy(args) -> None:
  """Runs the adapted_accuracy task from parsed `adapted_accuracy_flags`."""
  from etcjax.evaluation import adapted_accuracy  # pylint: disable=g-import-not-at-top
  adapted_accuracy.run(args.plain, args.adapted, encryption.load_key(args.key_file),
          args.out, dataset=args.dataset, data_dir=args.data_dir,
          imagenette_dir=args.imagenette_dir,
          limit=args.limit, overwrite=args.overwrite,
          progress=not args.no_progress)


def run_adapted_key_recovery(args) -> None:
  """Runs the adapted_key_recovery task from parsed
  `adapted_key_recovery_flags`."""
  from etcjax.evaluation import adapted_key_recovery  # pylint: disable=g-import-not-at-top
  adapted_key_recovery.run(args.public, args.adapted, args.out,
               key=(encryption.load_key(args.key_file)
                    if args.key_file else None),
               overwrite=args.overwrite)


def _key_recovery_flags(p, schemes=True):
  if schemes:
    p.add_argument("--schemes", type=_names,
                   default=list(key_recovery.DEFAULT_SCHEMES),
                   help="comma-separated scheme names")
    p.add_argument("--limit", type=int, default=None,
                   help="evaluated test images (default: the size's)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the attack's sampling (default 0)")
  p.add_argument("--ciphertexts", default=",".join(
      str(c) for c in key_recovery.DEFAULT_CIPHERTEXTS),
                 help="N values of the ciphertext-only attack: integers or "
                 "'all' (key_recovery)")
  p.add_argument("--pairs", default=",".join(
      str(c) for c in key_recovery.DEFAULT_PAIRS),
                 help="k values of the known-plaintext attack (key_recovery)")
  p.add_argument("--key_attacks", type=_names,
                 default=list(key_recovery.ATTACKS),
                 help="comma-separated, from " + ", ".join(key_recovery.ATTACKS))
  p.add_argument("--settings", action="store_true",
                 help="attack the user-selectable settings (block sizes, "
                 "steps) instead of --schemes (key_recovery)")


def _attack_flags(p, schemes=True):
  if schemes:
    p.add_argument("--schemes", type=_names,
                   default=list(attack_suite.DEFAULT_SCHEMES),
                   help="comma-separated scheme names")
  p.add_argument("--attacks", type=_names,
                 default=list(attack_suite.DEFAULT_ATTACKS),
                 help="comma-separated, from " + ", ".join(
                     attack_suite.attacks_lib.ATTACKS))
  p.add_argument("--limit", type=int, default=None,
                 help="attacked test images (default: the size's)")
  p.add_argument("--jigsaw_limit", type=_limits, default=None,
                 help="images the jigsaw solver attacks: N for every scheme "
                 "or scheme:N,... (default: the size's)")
  p.add_argument("--train_steps", type=int, default=None,
                 help="GAN/ITN training steps (default: the size's)")
  p.add_argument("--train_batch", type=int, default=None,
                 help="GAN/ITN batch size (default: the size's)")
  p.add_argument("--train_width", type=int, default=None,
                 help="GAN/ITN network width (default: the size's)")
  p.add_argument("--train_lr", type=float, default=None,
                 help="GAN/ITN Adam learning rate (default: the size's; "
                 "short CPU runs learn more with ~1e-3)")
  p.add_argument("--train_keys", type=int, default=None,
                 help="ITN: attacker keys of its training pairs "
                 "(default: the size's)")
  p.add_argument("--seed", type=int, default=0,
                 help="seed of the attacks' random choices")
  p.add_argument("--tag", default=None,
                 help="write to attacks/<dataset>-<tag>/ (e.g. a separate "
                 "run of the learned attacks)")


def _key(args) -> bytes:
  if getattr(args, "key_file", None):
    return encryption.load_key(args.key_file)
  key = encryption.generate_key()
  print(f"using a fresh random key, fingerprint {encryption.fingerprint(key)}")
  return key


def _training(args) -> Optional[threat_model.TrainingSize]:
  preset = attack_suite.SIZES[args.size].training
  changes = {k: v for k, v in (("steps", args.train_steps),
                               ("batch_size", args.train_batch),
                               ("width", args.train_width),
                               ("learning_rate", args.train_lr),
                               ("num_keys", args.train_keys)) if v is not None}
  if not changes:
    return None
  return dataclasses.replace(preset, **changes)


def _check_datasets(args) -> None:
  for dataset in args.datasets:
    sources.check_dataset(dataset)
  if "imagenette" in args.datasets and not args.imagenette_dir:
    raise requests.RequestError(
        "dataset 'imagenette' needs --imagenette_dir: a folder with train/ "
        "and val/ sub-folders of class folders")


def _run(args) -> None:
  progress = not getattr(args, "no_progress", False)
  if args.task == "report":
    print(report.write(args.out, args.overwrite))
    return
  if args.task == "brute_force":
    print(brute_force.run(args.out, args.image_sizes, args.schemes,
                          args.overwrite))
    return
  if args.task == "adapted_accuracy":
    run_adapted_accuracy(args)
    return
  if args.task == "adapted_key_recovery":
    run_adapted_key_recovery(args)
    return
  if args.task == "accuracy":
    from etcjax.evaluation import accuracy  # pylint: disable=g-import-not-at-top
    key = encryption.load_key(args.key_file) if args.key_file else None
    print(accuracy.run(args.export, args.out, dataset=args.dataset, key=key,
                       size=args.size, qualities=args.qualities,
                       data_dir=args.data_dir,
                       imagenette_dir=args.imagenette_dir,
                       overwrite=args.overwrite, limit=args.limit,
                       progress=progress))
    return
  _check_datasets(args)
  data = dict(data_dir=args.data_dir, imagenette_dir=args.imagenette_dir,
              overwrite=args.overwrite, progress=progress)
  key = _key(args)
  if args.task in ("compressibility", "all"):
    for dataset in args.datasets:
      print(compressibility.run(
          dataset, key, args.out, size=args.size,
          schemes=getattr(args, "schemes", None) or compressibility.DEFAULT_SCHEMES,
          codec_names=getattr(args, "codecs", None) or list(compressibility.CODECS),
          workers=args.workers,
          limit=args.limit if args.task == "compressibility" else None,
          **data))
  if args.task in ("visual", "all"):
    for dataset in args.datasets:
      print(visual_information.run(
          dataset, key, args.out, size=args.size,
          schemes=getattr(args, "schemes", None) or visual_information.DEFAULT_SCHEMES,
          limit=args.limit if args.task == "visual" else None, **data))
  if args.task in ("attacks", "all"):
    for dataset in args.datasets:
      print(attack_suite.run(
          dataset, key, args.out, size=args.size,
          schemes=getattr(args, "schemes", None) or attack_suite.DEFAULT_SCHEMES,
          attack_names=args.attacks, seed=args.seed, test_limit=args.limit,
          jigsaw_limit=args.jigsaw_limit, training=_training(args),
          tag=args.tag, **data))
  if args.task in ("key_recovery", "all"):
    for dataset in args.datasets:
      print(key_recovery.run(
          dataset, key, args.out, size=args.size,
          schemes=(args.schemes if args.task == "key_recovery"
                   else key_recovery.DEFAULT_SCHEMES),
          ciphertexts=args.ciphertexts, pairs=args.pairs,
          attacks=args.key_attacks, settings=args.settings,
          test_limit=args.limit if args.task == "key_recovery" else None,
          seed=args.seed, **data))
  if args.task == "all":
    print(brute_force.run(args.out, overwrite=args.overwrite))
    print(report.write(args.out, overwrite=args.overwrite))


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Runs the CLI; returns the exit status."""
  return command_line.run(_main, argv)


def _main(argv: Optional[Sequence[str]]) -> int:
  _run(_parser().parse_args(argv))
  return 0


if __name__ == "__main__":
  sys.exit(main())
