"""A key-adapted model against the plain model it was made from.

The plain model classifies the plain test images, the adapted model the
same images encrypted with the key; adaptation is exact when both predict
the same (see `etcjax.models.key_adaptation`). Also reported: the plain
model on the encrypted images, the gap adaptation closes.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional

import numpy as np

from etcjax import encryption
from etcjax import inference
from etcjax import models
from etcjax.evaluation import accuracy
from etcjax.evaluation import outputs
from etcjax.evaluation import sources
from etcjax.evaluation import tables
from etcjax.evaluation import requests

_BATCH = 500


def run(plain_dir: str, adapted_dir: str, key: bytes, out_dir: str, *,
            dataset: str = "cifar10", data_dir: Optional[str] = None,
            imagenette_dir: Optional[str] = None,
            limit: Optional[int] = None, overwrite: bool = False,
            progress: bool = True) -> Dict[str, Any]:
  """Plain model on plain test images vs adapted model on encrypted ones.

  Writes `out_dir/adapted_accuracy/<dataset>/comparison.{csv,md}` and
  `meta.json` (`python -m etcjax.evaluate adapted_accuracy`).

  Args:
    plain_dir: the plain-image export.
    adapted_dir: its adapted export (`python -m etcjax.adapt export`).
    key: the adapted export's key.
    out_dir: the run folder.
    dataset: 'cifar10' (its test split) or 'imagenette' (val).
    data_dir: tfds data_dir (cifar10).
    imagenette_dir: the Imagenette folder (required for 'imagenette').
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
  plain_info = inference.export.read_info(plain_dir)
  info = inference.export.read_info(adapted_dir)
  if plain_info["scheme"] is not None:
    raise requests.RequestError(f"{plain_dir} is not a plain-image model")
  plan = inference.export.encryption_plan(info, key, f"the model in {adapted_dir}")
  if plan is None:
    raise requests.RequestError(f"{adapted_dir} is not a model of encrypted images")
  output = outputs.TaskOutput(out_dir, "adapted_accuracy", dataset, overwrite,
                              meta=dict(plain=os.path.abspath(plain_dir),
                                        adapted=os.path.abspath(adapted_dir),
                                        scheme=info["scheme"],
                                        steps=info["encryption_steps"],
                                        block_size=info["block_size"],
                                        key_fingerprint=info["key_fingerprint"]))
  split = sources.DATASETS[dataset][0]
  test = sources.load(dataset, split, data_dir=data_dir,
                      imagenette_dir=imagenette_dir, limit=limit,
                      progress=progress)
  images = accuracy.resize(test.images, plain_info["image_shape"][:2])
  plain_module, plain_vars, _ = inference.export.load(plain_dir)
  module, variables, _ = inference.export.load(adapted_dir)
  encrypted = encryption.apply_numpy(plan, images)
  # One jitted apply for both sets: same-shaped, the model compiles once.
  plain_model = inference.Model(plain_module, plain_vars, _BATCH)
  plain_logits = plain_model.logits(images)
  unadapted_logits = plain_model.logits(encrypted)
  adapted_logits = inference.Model(module, variables, _BATCH).logits(encrypted)
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
