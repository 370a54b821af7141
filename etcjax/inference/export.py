"""Reading the exported model: inference variables plus what is needed to use them.

    EXPORT/variables/      params-only orbax checkpoint: {'params', ['batch_stats']}
    EXPORT/export.json     model name, classes, input geometry, encryption
                           scheme and key fingerprint (never the key)

`export.json` is written last (by `etcjax.training.export.save`), so an
export without it is incomplete and `load` refuses it.

Key-adapted exports (`python -m etcjax.adapt`, or training with
`config.adapt_pretrained`) record how they were adapted under
`adaptation`; one derived from public weights reveals the key to anyone who
compares the two (see `etcjax.models.key_adaptation`).
"""

from __future__ import annotations

import functools
import json
from typing import Any, Dict, Optional, Tuple

from etils import epath
import flax.linen as nn
import jax
import orbax.checkpoint as ocp

from etcjax import encryption
from etcjax import errors
from etcjax import models


class ExportError(errors.UserError, ValueError):
  """A folder that is not a usable etcjax export (not JSON, wrong format,
  missing fields, unsupported geometry)."""

FORMAT = "etcjax.export.v1"
EXPORT_FILE = "export.json"
VARIABLES_DIR = "variables"

# Fields every export.json has (values may be null where noted).
FIELDS = (
    "format",
    "config_name",
    "model",             # name in etcjax.models
    "model_kwargs",      # module attribute overrides ({} = as named)
    "num_classes",
    "label_names",
    "image_shape",       # [H, W, 3] plain images the data owner encrypts
    "input_shape",       # [H', W', C'] what the model sees
    "scheme",            # encryption scheme, null for a plain-image model
    "block_size",        # null for a plain-image model
    "key_fingerprint",   # null for a plain-image model
    "jpeg_quality",      # JPEG QF the model was trained on, or null
    "train_steps",
    "eval_accuracy",     # final eval accuracy, or null
)

# Fields added later: optional in `save`, and read as these defaults from
# exports that predate them.
OPTIONAL_FIELDS = {
    # The scheme's steps applied, e.g. ["pixel_shuffle", "negpos"]; null =
    # all of them. Needed to encrypt as the model expects.
    "encryption_steps": None,
    # null, or how the model was key-adapted: {"method", "source",
    # "from_public_weights", "per_position", "warning"} (never the key).
    "adaptation": None,
}

PUBLIC_WEIGHTS_WARNING = (
    "SECURITY: this model was key-adapted from public weights. Anyone holding "
    "both recovers the in-block transform and the block order, i.e. the "
    "effective key, by comparing the patch-embedding kernels and position "
    "embeddings (python -m etcjax.evaluate adapted_key_recovery shows it). Do not "
    "publish it where the key must stay secret.")


def read_info(directory: epath.PathLike) -> Dict[str, Any]:
  """Reads and checks `export.json`.

  Args:
    directory: an export folder.

  Returns:
    The export's fields (see `FIELDS`).

  Raises:
    FileNotFoundError: no complete export there.
    ExportError: not an etcjax export, or fields missing.
  """
  path = epath.Path(directory) / EXPORT_FILE
  if not path.exists():
    raise FileNotFoundError(
        f"{directory} is not a complete etcjax export: {EXPORT_FILE} is "
        "missing (exports are written at the end of `python -m etcjax.main`; "
        "an interrupted export has no export.json)")
  try:
    info = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise ExportError(f"{path} is not valid JSON: {e}") from None
  if not isinstance(info, dict) or info.get("format") != FORMAT:
    raise ExportError(
        f"{path} is not an etcjax export (format "
        f"{info.get('format') if isinstance(info, dict) else None!r}, "
        f"expected {FORMAT!r})")
  missing = set(FIELDS) - set(info)
  if missing:
    raise ExportError(f"{path} misses fields {sorted(missing)}")
  return dict(OPTIONAL_FIELDS, **info)


def encryption_plan(info: Dict[str, Any], key: bytes,
                    what: str = "the model") -> Optional[encryption.Plan]:
  """The plan that encrypts plain images as the exported model expects.

  Args:
    info: an export's fields (`read_info`).
    key: the data owner's key.
    what: how to name the model in errors.

  Returns:
    A plan for plain images of `info['image_shape']` with the export's
    scheme, block size and steps; None for a plain-image model.

  Raises:
    KeyMismatchError: the key's fingerprint is not the export's.
  """
  if info["scheme"] is None:
    return None
  encryption.check_fingerprint(key, info["key_fingerprint"], what)
  return encryption.make_plan(key, info["scheme"], tuple(info["image_shape"]),
                              info["block_size"],
                              steps=info.get("encryption_steps"))


def load(directory: epath.PathLike
         ) -> Tuple[nn.Module, Dict[str, Any], Dict[str, Any]]:
  """Loads an export for inference on the default device.

  Args:
    directory: an export folder written by `save`.

  Returns:
    `(module, variables, info)`: the flax module, its inference variables
    and the export's fields. `module.apply(variables, x, train=False)` maps
    float32 `[N] + input_shape` images in [-1, 1] to float32 logits
    `[N, num_classes]`.
  """
  info = read_info(directory)
  module = models.build(info["model"], info["num_classes"],
                        **info["model_kwargs"])
  height, width, channels = info["input_shape"]
  if height != width or channels != 3:
    raise ExportError(f"{directory}: unsupported input_shape {info['input_shape']}")
  # Restore onto this machine's first device, whatever topology (TPU pod,
  # several CPU processes) saved the export.
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
      jax.eval_shape(functools.partial(models.init_variables, module, height),
                     jax.random.key(0)))
  checkpointer = ocp.StandardCheckpointer()
  variables = checkpointer.restore(
      epath.Path(directory) / VARIABLES_DIR, abstract)
  checkpointer.close()
  return module, variables, info
