r"""Key-adapted models: a plain-trained model that classifies encrypted images.

    # The data owner adapts a plain-trained export with the secret key
    # (no training): the adapted model classifies images encrypted with the
    # key exactly as the plain model classifies the plain images.
    python -m etcjax.adapt export --export=PLAIN/export --key_file=owner.key \
        --scheme=block_common --steps=pixel_shuffle,negpos,channel \
        --out=ADAPTED
    # Check it on the test set: plain model on plain images vs adapted model
    # on encrypted images (accuracies and differing predictions).
    python -m etcjax.evaluate adapted_accuracy --plain=PLAIN/export \
        --adapted=ADAPTED --key_file=owner.key --dataset=cifar10 --out=RUN
    # The risk: an adapted model plus the weights it came from reveal the key.
    python -m etcjax.evaluate adapted_key_recovery --public=PLAIN/export \
        --adapted=ADAPTED --key_file=owner.key --out=RUN

(`adapt compare` and `adapt key_recovery` still run those two tasks.)

What can be absorbed (see `etcjax.models.key_adaptation`): with block size
= patch size, a ViT absorbs all of 'block_common' (and 'etc' restricted to
block scrambling); a ConvMixer absorbs the in-block steps only (use
`--steps=pixel_shuffle,negpos,channel`). With `--per_position` the model
gets one patch-embedding kernel per block position, which also absorbs the
paper's EtC (a different in-block transform per block; for a ConvMixer
without 'scramble').

SECURITY: the adapted export and the export it came from together reveal
the key (`adapted_key_recovery`). Publish neither next to the other; never adapt
public weights if the key must stay secret. The adapted export records its
key fingerprint, never the key. Paths may be relative or start with `~`.
Errors exit with status 1 (one line), usage errors 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Dict, List, Optional, Sequence

import jax
import numpy as np

from etcjax import command_line
from etcjax import encryption
from etcjax import evaluate as evaluate_cli
from etcjax import inference
from etcjax import models
from etcjax.models import key_adaptation
from etcjax.training import export as export_lib


def compare(*args, **kwargs) -> Dict[str, Any]:
  """`etcjax.evaluation.adapted_accuracy.run` (its old name here)."""
  from etcjax.evaluation import adapted_accuracy  # pylint: disable=g-import-not-at-top
  return adapted_accuracy.run(*args, **kwargs)


def key_recovery(*args, **kwargs) -> Dict[str, Any]:
  """`etcjax.evaluation.adapted_key_recovery.run` (its old name here)."""
  from etcjax.evaluation import adapted_key_recovery  # pylint: disable=g-import-not-at-top
  return adapted_key_recovery.run(*args, **kwargs)

SOURCE_WARNING = (
    "SECURITY: the adapted export and the export it was made from together "
    "reveal the key's block order and in-block transform (python -m "
    "etcjax.evaluate adapted_key_recovery). Keep the source export as private as the "
    "key.")


def _names(text: str) -> List[str]:
  return [t.strip() for t in text.split(",") if t.strip()]


def adapt_export(export_dir: str, key: bytes, out_dir: str, *,
                 scheme: str = "block_common",
                 steps: Optional[Sequence[str]] = None,
                 block_size: Optional[int] = None,
                 per_position: bool = False,
                 from_public_weights: bool = False,
                 check_images: int = 8) -> Dict[str, Any]:
  """Writes a key-adapted copy of a plain-image export.

  Args:
    export_dir: an export of a model trained on plain images.
    key: the data owner's secret key (only its fingerprint is written).
    out_dir: the new export's folder; must not exist (or be empty).
    scheme: 'block_common', or 'etc' (with `per_position`, or with
      steps=('scramble',) for a ViT).
    steps: the scheme's steps (None: all).
    block_size: block size; None = the model's patch size.
    per_position: give the model one patch-embedding kernel per block
      position (absorbs per-block transforms such as the paper's EtC).
    from_public_weights: the source weights are public (marks the export
      and warns: together they reveal the key).
    check_images: random images on which the adapted model on encrypted
      inputs is checked against the source model on plain ones (0 = none).

  Returns:
    The new export's `export.json` fields.

  Raises:
    FileExistsError: `out_dir` holds something.
    key_adaptation.AdaptationError: the source model is not a plain-image
      model, or cannot absorb the plan.
    ValueError: the check failed (a bug of the adaptation, so the CLI
      shows its traceback).
  """
  if os.path.exists(out_dir) and (not os.path.isdir(out_dir)
                                  or os.listdir(out_dir)):
    raise FileExistsError(
        f"{out_dir} already exists; adapted exports are never overwritten, "
        "choose another --out")
  module, variables, info = export_lib.load(export_dir)
  if info["scheme"] is not None:
    raise key_adaptation.AdaptationError(
        f"{export_dir} is a model of {info['scheme']!r}-encrypted images; "
        "adapt a model trained on plain images")
  kwargs = dict(info["model_kwargs"])
  if kwargs.get("per_position_embedding"):
    raise key_adaptation.AdaptationError(
        f"{export_dir} already has a per-position embedding")
  patch = getattr(module, "patch_size", None)
  if patch is None:
    raise key_adaptation.AdaptationError(
        f"model {info['model']} has no patch embedding to adapt (ViT and "
        "ConvMixer have)")
  block_size = block_size or patch
  image_shape = tuple(info["image_shape"])
  plan = encryption.make_plan(key, scheme, image_shape, block_size,
                              steps=steps)
  params = jax.device_get(variables["params"])
  if per_position:
    params = key_adaptation.to_per_position(
        params, (image_shape[0] // patch) * (image_shape[1] // patch))
    kwargs["per_position_embedding"] = True
  adapted = dict(variables, params=key_adaptation.adapt(params, plan))
  adapted_module = models.build(info["model"], info["num_classes"], **kwargs)

  max_diff = None
  if check_images:
    images = np.random.default_rng(0).integers(
        0, 256, (check_images,) + image_shape, np.uint8)
    expected = inference.Model(module, variables).logits(images)
    got = inference.Model(adapted_module, adapted).logits(
        encryption.apply_numpy(plan, images))
    max_diff = float(np.abs(got - expected).max())
    scale = float(np.abs(expected).max()) + 1.0
    if max_diff > 1e-3 * scale:
      raise ValueError(
          f"the adapted model's logits on encrypted images differ from the "
          f"source model's on plain images by up to {max_diff:.3g}; "
          "adaptation is broken for this model")

  new_info = {k: info[k] for k in export_lib.FIELDS if k != "format"}
  new_info.update(
      config_name=f"{info['config_name']}+adapted",
      model_kwargs=kwargs, input_shape=list(plan.encrypted_shape),
      scheme=plan.scheme, block_size=plan.block_size,
      key_fingerprint=plan.fingerprint, jpeg_quality=None,
      # Not measured on encrypted images here; see `compare`.
      eval_accuracy=None,
      encryption_steps=None if steps is None else list(steps),
      adaptation={
          "method": "key_adaptation.adapt, no further training",
          "source": os.path.abspath(export_dir),
          "source_eval_accuracy": info["eval_accuracy"],
          "from_public_weights": bool(from_public_weights),
          "per_position": bool(per_position),
          "check_max_logit_difference": max_diff,
      })
  print(f"warning: {SOURCE_WARNING}", file=sys.stderr)
  export_lib.save(out_dir, adapted, new_info)
  return export_lib.read_info(out_dir)


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m etcjax.adapt", description=__doc__.split("\n\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
  sub = parser.add_subparsers(dest="command", required=True,
                              metavar="COMMAND",
                              help="export | compare | key_recovery")
  path = command_line.path_arg

  p = sub.add_parser("export", help="write a key-adapted copy of an export")
  p.add_argument("--export", required=True, type=path,
                 help="plain-image model export")
  p.add_argument("--key_file", required=True, type=path,
                 help="the secret key")
  command_line.add_alias(p, "--key", "--key_file", type=path)
  p.add_argument("--scheme", default="block_common",
                 help="block_common (default) or etc")
  p.add_argument("--steps", type=_names, default=None,
                 help="comma-separated steps of the scheme (default: all)")
  p.add_argument("--block_size", type=int, default=None,
                 help="default: the model's patch size")
  p.add_argument("--per_position", action="store_true",
                 help="one patch-embedding kernel per block position")
  p.add_argument("--from_public_weights", action="store_true",
                 help="the source weights are public: mark and warn")
  p.add_argument("--out", required=True, type=path, help="new export folder")

  # The two checks are evaluation tasks now; kept here as aliases.
  p = sub.add_parser("compare", help="plain vs adapted on the test set "
                     "(= python -m etcjax.evaluate adapted_accuracy)")
  evaluate_cli.adapted_accuracy_flags(p)
  p = sub.add_parser("key_recovery",
                     help="recover the key from an adapted model + origin "
                     "(= python -m etcjax.evaluate adapted_key_recovery)")
  evaluate_cli.adapted_key_recovery_flags(p)
  return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Runs the CLI; returns the exit status."""
  return command_line.run(_main, argv)


def _main(argv: Optional[Sequence[str]]) -> int:
  args = _parser().parse_args(argv)
  if args.command == "export":
    key = encryption.load_key(args.key_file)
    info = adapt_export(args.export, key, args.out, scheme=args.scheme,
                        steps=args.steps, block_size=args.block_size,
                        per_position=args.per_position,
                        from_public_weights=args.from_public_weights)
    del key
    model = models.describe(info["model"], info["model_kwargs"])
    print(f"wrote {args.out}: {model} for {info['scheme']} "
          f"(steps {info['encryption_steps'] or 'all'}, block size "
          f"{info['block_size']}), key fingerprint {info['key_fingerprint']}; "
          "max abs logit difference on random images "
          f"{info['adaptation']['check_max_logit_difference']:.2e}")
  elif args.command == "compare":
    print("note: `adapt compare` is `python -m etcjax.evaluate "
          "adapted_accuracy` now", file=sys.stderr)
    evaluate_cli.run_adapted_accuracy(args)
  else:
    print("note: `adapt key_recovery` is `python -m etcjax.evaluate "
          "adapted_key_recovery` now", file=sys.stderr)
    evaluate_cli.run_adapted_key_recovery(args)
  return 0


if __name__ == "__main__":
  sys.exit(main())
