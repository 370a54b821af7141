"""Accuracy under JPEG compression (the paper's Table III).

The data owner encrypts the test set with the model's key, JPEG-compresses
it (4:2:0, as `python -m etcjax.encrypt` writes encrypted datasets; decoded
without chroma fancy upsampling) at each quality factor, and the exported
model classifies it. Test images of another size than the model's plain
image size are resized first, as the evaluation pipeline does.
"""

from __future__ import annotations

import os
from typing import Dict, Optional, Sequence

import numpy as np
import tqdm

from etcjax import encryption
from etcjax import inference
from etcjax import models
from etcjax.encryption import jpeg
from etcjax.evaluation import outputs
from etcjax.evaluation import sources
from etcjax.evaluation import tables
from etcjax.evaluation import requests

UNCOMPRESSED = None
QUALITIES = (UNCOMPRESSED, 85, 80)
SIZES = {"smoke": {"cifar10": 256, "imagenette": 32},
         "full": {"cifar10": None, "imagenette": None}}


def _quality_name(quality: Optional[int]) -> str:
  return "uncompressed" if quality is None else f"JPEG QF{quality}"


# Kept under its old name: the library's one inference path.
model_inputs = inference.model_inputs


def evaluate(module, variables, images: np.ndarray, labels: np.ndarray,
             plan: Optional[encryption.Plan],
             qualities: Sequence[Optional[int]] = QUALITIES,
             batch_size: int = 256, progress: bool = True
             ) -> Dict[Optional[int], float]:
  """Top-1 accuracy of a model on (encrypted, compressed) test images.

  Args:
    module: a flax module; `module.apply(variables, x, train=False)` maps
      float32 `[n] + input_shape` in [-1, 1] to logits `[n, classes]`.
    variables: its variables.
    images: uint8 `[N, H, W, 3]` plain test images of the model's size.
    labels: int `[N]`.
    plan: the model's encryption plan (None: plain-image model).
    qualities: JPEG quality factors (None: uncompressed).
    batch_size: images per forward pass.
    progress: show a progress bar.

  Returns:
    {quality: accuracy in [0, 1]}.
  """
  model = inference.Model(module, variables, batch_size)
  correct = {q: 0 for q in qualities}
  for start in tqdm.trange(0, len(images), batch_size, desc="accuracy",
                           leave=False, disable=not progress):
    batch = images[start:start + batch_size]
    for q in qualities:
      pred = model.predict(inference.model_inputs(batch, plan, q))
      correct[q] += int(np.sum(pred == labels[start:start + batch_size]))
  return {q: correct[q] / len(images) for q in qualities}


def resize(images: np.ndarray, size) -> np.ndarray:
  """Resizes plain images as the evaluation pipeline does.

  Args:
    images: uint8 `[N, H, W, 3]`.
    size: `(H', W')`, square.

  Returns:
    uint8 `[N, H', W', 3]` (the input when already of that size).
  """
  if tuple(images.shape[1:3]) == tuple(size):
    return images
  if size[0] != size[1]:
    raise requests.RequestError(f"models take square images, got size {size}")
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from etcjax.data import augment  # pylint: disable=g-import-not-at-top
  out = tf.map_fn(lambda image: augment.resize(image, int(size[0])),
                  tf.constant(images), fn_output_signature=tf.uint8)
  return out.numpy()


def run(export_dir: str, out_dir: str, *, dataset: str,
        key: Optional[bytes] = None, size: str = "smoke",
        qualities: Sequence[Optional[int]] = QUALITIES,
        data_dir: Optional[str] = None, imagenette_dir: Optional[str] = None,
        overwrite: bool = False, limit: Optional[int] = None,
        progress: bool = True) -> str:
  """Evaluates an exported model on the encrypted, compressed test set.

  Args:
    export_dir: an export written by the training job
      (`etcjax.training.export`).
    out_dir: the run folder; results go to `out_dir/accuracy/<dataset>/`.
    dataset: 'cifar10' or 'imagenette' (its test/val split).
    key: the model's key; required for models of encrypted images (checked
      against the export's fingerprint).
    size: 'smoke' or 'full' (test images in `SIZES`).
    qualities: JPEG quality factors (None: uncompressed).
    data_dir: tfds data_dir (cifar10).
    imagenette_dir: Imagenette folder (imagenette).
    overwrite: replace existing results.
    limit: override the size's image count.
    progress: show progress bars.

  Returns:
    The result folder.
  """
  export = inference.export
  sources.check_dataset(dataset)
  sources.check_size(size, SIZES)
  info = export.read_info(export_dir)
  scheme = info["scheme"]
  plan = None
  if scheme:
    if key is None:
      raise requests.RequestError(
          f"the model in {export_dir} was trained on {scheme!r}-encrypted "
          "images: pass --key_file with its key to encrypt the test set")
    # With the export's steps (e.g. a key-adapted ConvMixer's
    # 'block_common' without scrambling).
    plan = inference.encryption_plan(info, key, f"the model in {export_dir}")
  for q in qualities:
    if q is not None:
      if plan is not None:
        jpeg.check_jpeg_compatible(scheme, info["block_size"], "4:2:0")
      if not 1 <= q <= 100:
        raise requests.RequestError(f"JPEG quality must be in [1, 100], got {q}")
  output = outputs.TaskOutput(out_dir, "accuracy", dataset, overwrite, meta=dict(
      export=os.path.abspath(export_dir), model=info["model"], scheme=scheme,
      block_size=info["block_size"], key_fingerprint=info["key_fingerprint"],
      size=size, qualities=list(qualities)))
  split = sources.DATASETS[dataset][0]
  test = sources.load(dataset, split, data_dir=data_dir,
                      imagenette_dir=imagenette_dir,
                      limit=limit or SIZES[size][dataset],
                      progress=progress)
  if list(test.label_names) != list(info["label_names"]):
    raise requests.RequestError(
        f"the model's classes {info['label_names']} differ from {dataset}'s "
        f"{test.label_names}")
  module, variables, _ = export.load(export_dir)
  images = resize(test.images, info["image_shape"][:2])
  output.meta.update(images=len(test), split=split)
  with output as folder:
    accuracy = evaluate(module, variables, images, test.labels, plan,
                        qualities, progress=progress)
    table = tables.Table(
        f"{dataset}: accuracy of the model ({scheme or 'plain images'}) "
        f"under JPEG compression, {len(test):,} {split} images",
        ["model", "scheme", "block size", "images"]
        + [_quality_name(q) for q in qualities] + ["accuracy at export"],
        formats={c: ".4f" for c in [_quality_name(q) for q in qualities]
                 + ["accuracy at export"]},
        notes=["Test images encrypted with the model's key, then JPEG "
               "(4:2:0, libjpeg-turbo via PIL; decoded without chroma fancy "
               "upsampling). 'accuracy at export' is the training job's own "
               "final evaluation. Compare with the paper's Table III."])
    table.add(models.describe(info["model"], info["model_kwargs"]),
              scheme or "plain", info["block_size"], len(test),
              *[accuracy[q] for q in qualities], info["eval_accuracy"])
    table.write(folder, "accuracy")
    print(table.to_markdown())
  return output.path
