r"""Key-adapted models: a plain-trained model that classifies encrypted images.

    # The data owner adapts a plain-trained export with the secret key
    # (no training): the adapted model classifies images encrypted with the
    # key exactly as the plain model classifies the plain images.
    python -m etcjax.adapt export --export=PLAIN/export --key_file=owner.key \
        --scheme=block_common --steps=pixel_shuffle,negpos,channel \
        --out=ADAPTED
    # Check it on the test set: plain model on plain images vs adapted model
    # on encrypted images (accuracies and differing predictions).
    python -m etcjax.adapt compare --plain=PLAIN/export --adapted=ADAPTED \
        --key_file=owner.key --dataset=cifar10 --out=RUN
    # The risk: an adapted model plus the weights it came from reveal the key.
    python -m etcjax.adapt key_recovery --public=PLAIN/export \
        --adapted=ADAPTED --key_file=owner.key --out=RUN

What can be absorbed (see `etcjax.models.key_adaptation`): with block size
= patch size, a ViT absorbs all of 'block_common' (and 'etc' restricted to
block scrambling); a ConvMixer absorbs the in-block steps only (use
`--steps=pixel_shuffle,negpos,channel`). With `--per_position` the model
gets one patch-embedding kernel per block position, which also absorbs the
paper's EtC (a different in-block transform per block; for a ConvMixer
without 'scramble').

SECURITY: the adapted export and the export it came from together reveal
the key (`key_recovery`). Publish neither next to the other; never adapt
public weights if the key must stay secret. The adapted export records its
key fingerprint, never the key. Errors exit with status 1, usage errors 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Dict, List, Optional, Sequence

import jax
import numpy as np

from etcjax import encryption
from etcjax import models
from etcjax.models import checkpoint as checkpoint_lib
from etcjax.models import key_adaptation
from etcjax.training import export as export_lib

SOURCE_WARNING = (
    "SECURITY: the adapted export and the export it was made from together "
    "reveal the key's block order and in-block transform (python -m "
    "etcjax.adapt key_recovery). Keep the source export as private as the "
    "key.")


def _names(text: str) -> List[str]:
  return [t.strip() for t in text.split(",") if t.strip()]


def _normalise(images: np.ndarray) -> np.ndarray:
  return images.astype(np.float32) / 127.5 - 1.0


def _logits(module, variables, *image_sets: np.ndarray,
            batch_size: int = 500) -> List[np.ndarray]:
  """float32 `[N, classes]` logits of each uint8 `[N, H, W, 3]` image set.

  One jitted apply serves every set, so same-shaped sets (plain and
  encrypted images) compile the model once.
  """
  apply = jax.jit(lambda v, x: module.apply(v, x, train=False))
  return [np.concatenate([
      np.asarray(apply(variables, _normalise(images[i:i + batch_size])))
      for i in range(0, len(images), batch_size)]) for images in image_sets]


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
    key_adaptation.AdaptationError: the model cannot absorb the plan.
    ValueError: the source model is not a plain-image model, or the check
      failed.
  """
  if os.path.exists(out_dir) and (not os.path.isdir(out_dir)
                                  or os.listdir(out_dir)):
    raise FileExistsError(
        f"{out_dir} already exists; adapted exports are never overwritten, "
        "choose another --out")
  module, variables, info = export_lib.load(export_dir)
  if info["scheme"] is not None:
    raise ValueError(
        f"{export_dir} is a model of {info['scheme']!r}-encrypted images; "
        "adapt a model trained on plain images")
  kwargs = dict(info["model_kwargs"])
  if kwargs.get("per_position_embedding"):
    raise ValueError(f"{export_dir} already has a per-position embedding")
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
    [expected] = _logits(module, variables, images)
    [got] = _logits(adapted_module, adapted,
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


def compare(plain_dir: str, adapted_dir: str, key: bytes, out_dir: str, *,
            dataset: str = "cifar10", data_dir: Optional[str] = None,
            limit: Optional[int] = None, overwrite: bool = False,
            progress: bool = True) -> Dict[str, Any]:
  """Plain model on plain test images vs adapted model on encrypted ones.

  Writes `out_dir/adapted_accuracy/<dataset>/comparison.{csv,md}` and
  `meta.json`.

  Args:
    plain_dir: the plain-image export.
    adapted_dir: its adapted export (`adapt_export`).
    key: the adapted export's key.
    out_dir: the run folder.
    dataset: 'cifar10' (its test split) or 'imagenette' (val) -- only
      cifar10 needs no further flags.
    data_dir: tfds data_dir.
    limit: first N test images (None: all).
    overwrite: replace existing results.
    progress: show progress bars.

  Returns:
    {'images', 'plain_accuracy', 'adapted_accuracy', 'unadapted_accuracy',
     'differing_predictions', 'max_logit_difference'}: accuracies in [0, 1]
    of the plain model on plain images, of the adapted model on encrypted
    images, and of the plain model on the same encrypted images (the gap
    adaptation closes).
  """
  # Evaluation helpers are imported here: they pull in TensorFlow.
  from etcjax.evaluation import accuracy as accuracy_lib  # pylint: disable=g-import-not-at-top
  from etcjax.evaluation import outputs  # pylint: disable=g-import-not-at-top
  from etcjax.evaluation import sources  # pylint: disable=g-import-not-at-top
  from etcjax.evaluation import tables  # pylint: disable=g-import-not-at-top
  plain_info = export_lib.read_info(plain_dir)
  info = export_lib.read_info(adapted_dir)
  if plain_info["scheme"] is not None:
    raise ValueError(f"{plain_dir} is not a plain-image model")
  plan = export_lib.encryption_plan(info, key, f"the model in {adapted_dir}")
  if plan is None:
    raise ValueError(f"{adapted_dir} is not a model of encrypted images")
  output = outputs.TaskOutput(out_dir, "adapted_accuracy", dataset, overwrite,
                              meta=dict(plain=os.path.abspath(plain_dir),
                                        adapted=os.path.abspath(adapted_dir),
                                        scheme=info["scheme"],
                                        steps=info["encryption_steps"],
                                        block_size=info["block_size"],
                                        key_fingerprint=info["key_fingerprint"]))
  split = sources.DATASETS[dataset][0]
  test = sources.load(dataset, split, data_dir=data_dir, limit=limit,
                      progress=progress)
  images = accuracy_lib.resize(test.images, plain_info["image_shape"][:2])
  plain_module, plain_vars, _ = export_lib.load(plain_dir)
  module, variables, _ = export_lib.load(adapted_dir)
  encrypted = encryption.apply_numpy(plan, images)
  plain_logits, unadapted_logits = _logits(plain_module, plain_vars, images,
                                           encrypted)
  [adapted_logits] = _logits(module, variables, encrypted)
  unadapted_pred = unadapted_logits.argmax(-1)
  plain_pred, adapted_pred = plain_logits.argmax(-1), adapted_logits.argmax(-1)
  result = {
      "images": int(len(images)),
      "plain_accuracy": float(np.mean(plain_pred == test.labels)),
      "adapted_accuracy": float(np.mean(adapted_pred == test.labels)),
      "unadapted_accuracy": float(np.mean(unadapted_pred == test.labels)),
      "differing_predictions": int(np.sum(plain_pred != adapted_pred)),
      "max_logit_difference": float(np.abs(plain_logits - adapted_logits).max()),
  }
  output.meta.update(result, split=split)
  with output as folder:
    table = tables.Table(
        f"{dataset}: plain model on plain images vs key-adapted model on "
        f"{info['scheme']}-encrypted images, {len(images):,} {split} images",
        ["model", "scheme", "steps", "block size", "images",
         "plain accuracy", "adapted accuracy (encrypted)",
         "plain model on encrypted", "differing predictions",
         "max abs logit difference"],
        formats={"plain accuracy": ".4f",
                 "adapted accuracy (encrypted)": ".4f",
                 "plain model on encrypted": ".4f",
                 "max abs logit difference": ".2e"},
        notes=["The adapted model is the plain one with its patch embedding "
               "(and ViT position embedding) permuted and sign-flipped by "
               "the key; no further training. Equal accuracy and no "
               "differing predictions are expected (float rounding aside). "
               "'Plain model on encrypted': the unadapted plain model on "
               "the same encrypted images, the gap adaptation closes."])
    table.add(models.describe(info["model"], info["model_kwargs"]),
              info["scheme"],
              ",".join(info["encryption_steps"] or ["all"]),
              info["block_size"], len(images), result["plain_accuracy"],
              result["adapted_accuracy"], result["unadapted_accuracy"],
              result["differing_predictions"],
              result["max_logit_difference"])
    table.write(folder, "comparison")
    print(table.to_markdown())
  return result


def _read_params(path: str) -> Dict[str, Any]:
  """Params of an export folder, an orbax checkpoint or a vit_jax `.npz`."""
  if os.path.isfile(os.path.join(path, export_lib.EXPORT_FILE)):
    _, variables, _ = export_lib.load(path)
    return jax.device_get(variables["params"])
  flat, _ = checkpoint_lib.read_checkpoint(path)
  return checkpoint_lib.unflatten(flat)


def _as_vit_view(params: Dict[str, Any], image_shape) -> Dict[str, Any]:
  """The (kernel, position embedding) pair the attack compares.

  A convolutional model has no position embedding (it cannot absorb block
  scrambling); an identity embedding makes the attack report the identity
  block order for it.
  """
  if "embedding" in params and "Transformer" in params:
    return params
  if "patch_embed" not in params:
    raise ValueError(
        "key recovery compares ViT ('embedding') or ConvMixer "
        f"('patch_embed') patch embeddings; got {sorted(params)}")
  kernel = np.asarray(params["patch_embed"]["kernel"])
  nb = (image_shape[0] // kernel.shape[0]) * (image_shape[1] // kernel.shape[1])
  return {"embedding": {"kernel": kernel},
          "Transformer": {"posembed_input": {
              "pos_embedding": np.eye(nb + 1, dtype=np.float32)[None]}}}


def key_recovery(public_path: str, adapted_dir: str, out_dir: str, *,
                 key: Optional[bytes] = None,
                 overwrite: bool = False) -> Dict[str, Any]:
  """Recovers the effective key from an adapted export and its origin.

  Writes `out_dir/key_recovery/recovery.{csv,md}` and `meta.json`: the
  share of block positions and in-block values (with signs) recovered,
  scored against the true plan when `key` is given. The recovered
  permutations themselves are key material and are never written.

  Args:
    public_path: the weights the model was adapted from: an export, an
      orbax checkpoint or a vit_jax `.npz` (e.g. ImageNet-21k ViT-B/16).
    adapted_dir: the adapted (possibly fine-tuned) export.
    out_dir: the run folder.
    key: the true key, only to score the recovery.
    overwrite: replace existing results.

  Returns:
    {'block_order_accuracy', 'in_block_accuracy', 'decrypts_exactly'}
    (None where no key was given).
  """
  from etcjax.evaluation import outputs  # pylint: disable=g-import-not-at-top
  from etcjax.evaluation import tables  # pylint: disable=g-import-not-at-top
  from etcjax.evaluation.attacks import adapted_model_key_recovery  # pylint: disable=g-import-not-at-top
  info = export_lib.read_info(adapted_dir)
  if info["scheme"] is None:
    raise ValueError(f"{adapted_dir} is a plain-image model: nothing to recover")
  image_shape = tuple(info["image_shape"])
  output = outputs.TaskOutput(out_dir, "key_recovery", None, overwrite, meta=dict(
      public=os.path.abspath(public_path), adapted=os.path.abspath(adapted_dir),
      scheme=info["scheme"], block_size=info["block_size"],
      key_fingerprint=info["key_fingerprint"]))
  public = _as_vit_view(_read_params(public_path), image_shape)
  adapted = _as_vit_view(_read_params(adapted_dir), image_shape)
  if np.ndim(adapted["embedding"]["kernel"]) != 4:
    raise ValueError(
        "key recovery matches a shared [P, P, C, D] patch-embedding kernel; "
        f"{adapted_dir} has a per-position embedding")
  pos_pub = np.asarray(public["Transformer"]["posembed_input"]["pos_embedding"])
  pos_adp = np.asarray(adapted["Transformer"]["posembed_input"]["pos_embedding"])
  if pos_pub.shape[1] != pos_adp.shape[1]:
    # Public checkpoints are made at another resolution (224 for in21k);
    # fine-tuning resamples the grid the same way.
    p = np.shape(adapted["embedding"]["kernel"])[0]
    public = dict(public, Transformer={"posembed_input": {
        "pos_embedding": models.resample_posemb(
            pos_pub, (image_shape[0] // p, image_shape[1] // p))}})
  true_plan = (export_lib.encryption_plan(info, key, f"the model in {adapted_dir}")
               if key is not None else None)
  recovery = adapted_model_key_recovery.recover(public, adapted, image_shape,
                                                true_plan)
  decrypts = None
  if true_plan is not None:
    probe = np.random.default_rng(0).integers(0, 256, (4,) + image_shape,
                                              np.uint8)
    decrypts = bool(np.array_equal(
        encryption.invert(recovery.plan, encryption.apply(true_plan, probe)),
        probe))
  result = {"block_order_accuracy": recovery.block_order_accuracy,
            "in_block_accuracy": recovery.in_block_accuracy,
            "decrypts_exactly": decrypts}
  output.meta.update(result)
  with output as folder:
    table = tables.Table(
        "Key recovery from a key-adapted model and the weights it "
        f"came from ({info['scheme']}, block size {info['block_size']})",
        ["model", "scheme", "block positions recovered",
         "in-block values (and signs) recovered", "decrypts exactly"],
        formats={"block positions recovered": ".4f",
                 "in-block values (and signs) recovered": ".4f"},
        notes=["Rows of the adapted patch-embedding kernel and position "
               "embedding are matched to the source's by correlation "
               "(etcjax.evaluation.attacks.adapted_model_key_recovery). "
               "Shares are against the true key (not given: empty). A "
               "convolutional model has no position embedding; its block "
               "order is reported as recovered when the scheme does not "
               "scramble."])
    table.add(models.describe(info["model"], info["model_kwargs"]),
              info["scheme"], result["block_order_accuracy"],
              result["in_block_accuracy"], decrypts)
    table.write(folder, "recovery")
    print(table.to_markdown())
  return result


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m etcjax.adapt", description=__doc__.split("\n\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
  sub = parser.add_subparsers(dest="command", required=True,
                              metavar="COMMAND",
                              help="export | compare | key_recovery")

  p = sub.add_parser("export", help="write a key-adapted copy of an export")
  p.add_argument("--export", required=True, help="plain-image model export")
  p.add_argument("--key_file", required=True, help="the secret key")
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
  p.add_argument("--out", required=True, help="new export folder")

  p = sub.add_parser("compare", help="plain vs adapted on the test set")
  p.add_argument("--plain", required=True, help="plain-image model export")
  p.add_argument("--adapted", required=True, help="its adapted export")
  p.add_argument("--key_file", required=True, help="the adapted model's key")
  p.add_argument("--dataset", default="cifar10")
  p.add_argument("--data_dir", default=None, help="tfds data_dir")
  p.add_argument("--limit", type=int, default=None,
                 help="first N test images (default: all)")
  p.add_argument("--out", required=True, help="run folder for the results")
  p.add_argument("--overwrite", action="store_true")
  p.add_argument("--no_progress", action="store_true")

  p = sub.add_parser("key_recovery",
                     help="recover the key from an adapted model + origin")
  p.add_argument("--public", required=True,
                 help="the weights it was adapted from: export, orbax "
                 "checkpoint or vit_jax .npz")
  p.add_argument("--adapted", required=True, help="the adapted export")
  p.add_argument("--key_file", default=None,
                 help="the true key, only to score the recovery")
  p.add_argument("--out", required=True, help="run folder for the results")
  p.add_argument("--overwrite", action="store_true")
  return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Runs the CLI; returns the exit status."""
  args = _parser().parse_args(argv)
  try:
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
      compare(args.plain, args.adapted, encryption.load_key(args.key_file),
              args.out, dataset=args.dataset, data_dir=args.data_dir,
              limit=args.limit, overwrite=args.overwrite,
              progress=not args.no_progress)
    else:
      key_recovery(args.public, args.adapted, args.out,
                   key=(encryption.load_key(args.key_file)
                        if args.key_file else None),
                   overwrite=args.overwrite)
  except (ValueError, OSError) as e:
    # AdaptationError, KeyMismatchError and InvalidKeyError are ValueErrors.
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
