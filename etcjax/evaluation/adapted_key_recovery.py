"""Recovering the key from a key-adapted model and the weights it came from.

An adapted model together with its source weights reveals the in-block
transform and the block order, i.e. the effective key: the rows of the two
patch-embedding kernels and position embeddings are matched
(`etcjax.evaluation.attacks.adapted_model_key_recovery`). This task runs
that attack and writes how much it recovered, never the recovered
permutations.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional

import jax
import numpy as np

from etcjax import encryption
from etcjax import inference
from etcjax import models
from etcjax.evaluation import outputs
from etcjax.evaluation import tables
from etcjax.evaluation.attacks import adapted_model_key_recovery
from etcjax.models import checkpoint as checkpoint_lib
from etcjax.evaluation import requests

# The task's output folder (`RUN/adapted_key_recovery/`); the name
# 'key_recovery' belongs to the key-recovery attacks on encrypted images.
TASK = "adapted_key_recovery"


def _read_params(path: str) -> Dict[str, Any]:
  """Params of an export folder, an orbax checkpoint or a vit_jax `.npz`."""
  if os.path.isfile(os.path.join(path, inference.export.EXPORT_FILE)):
    _, variables, _ = inference.export.load(path)
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
    raise requests.RequestError(
        "key recovery compares ViT ('embedding') or ConvMixer "
        f"('patch_embed') patch embeddings; got {sorted(params)}")
  kernel = np.asarray(params["patch_embed"]["kernel"])
  nb = (image_shape[0] // kernel.shape[0]) * (image_shape[1] // kernel.shape[1])
  return {"embedding": {"kernel": kernel},
          "Transformer": {"posembed_input": {
              "pos_embedding": np.eye(nb + 1, dtype=np.float32)[None]}}}


def run(public_path: str, adapted_dir: str, out_dir: str, *,
                 key: Optional[bytes] = None,
                 overwrite: bool = False) -> Dict[str, Any]:
  """Recovers the effective key from an adapted export and its origin.

  Writes `out_dir/adapted_key_recovery/recovery.{csv,md}` and `meta.json`
  (`python -m etcjax.evaluate adapted_key_recovery`): the
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
  info = inference.export.read_info(adapted_dir)
  if info["scheme"] is None:
    raise requests.RequestError(f"{adapted_dir} is a plain-image model: nothing to recover")
  image_shape = tuple(info["image_shape"])
  output = outputs.TaskOutput(out_dir, TASK, None, overwrite, meta=dict(
      public=os.path.abspath(public_path), adapted=os.path.abspath(adapted_dir),
      scheme=info["scheme"], block_size=info["block_size"],
      key_fingerprint=info["key_fingerprint"]))
  public = _as_vit_view(_read_params(public_path), image_shape)
  adapted = _as_vit_view(_read_params(adapted_dir), image_shape)
  if np.ndim(adapted["embedding"]["kernel"]) != 4:
    raise requests.RequestError(
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
  true_plan = (inference.export.encryption_plan(info, key, f"the model in {adapted_dir}")
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
