"""The exported model: inference variables plus what is needed to use them.

    EXPORT/variables/      params-only orbax checkpoint: {'params', ['batch_stats']}
    EXPORT/export.json     model name, classes, input geometry, encryption
                           scheme and key fingerprint (never the key)

`export.json` is written last, so an export without it is incomplete and
`load` refuses it.
"""

from __future__ import annotations

import functools
import json
from typing import Any, Dict, Tuple

from etils import epath
import flax.linen as nn
import jax
import orbax.checkpoint as ocp

from etcjax import models
from etcjax.training import metrics

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


def save(directory: epath.PathLike, variables: Dict[str, Any],
         info: Dict[str, Any]) -> epath.Path:
  """Writes an export; collective: every process must call it.

  An existing export in `directory` is replaced (its `export.json` is
  removed first, so a crash mid-way never leaves it looking complete).

  Args:
    directory: the export folder (usually `workdir/export`).
    variables: inference variables {'params': ..., ['batch_stats': ...]},
      jax arrays (replicated or host-local).
    info: the fields of `FIELDS` except 'format'.

  Returns:
    The export folder.

  Raises:
    ValueError: `info` misses fields or has unknown ones.
  """
  info = dict(info, format=FORMAT)
  if set(info) != set(FIELDS):
    raise ValueError(
        f"export info fields differ from {FIELDS}: missing "
        f"{sorted(set(FIELDS) - set(info))}, unknown {sorted(set(info) - set(FIELDS))}")
  directory = epath.Path(directory)
  if jax.process_index() == 0:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / EXPORT_FILE).unlink(missing_ok=True)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(directory / VARIABLES_DIR, variables, force=True)
  checkpointer.wait_until_finished()
  checkpointer.close()
  if jax.process_index() == 0:
    metrics.write_json(directory / EXPORT_FILE, info)
  return directory


def read_info(directory: epath.PathLike) -> Dict[str, Any]:
  """Reads and checks `export.json`.

  Args:
    directory: an export folder.

  Returns:
    The export's fields (see `FIELDS`).

  Raises:
    FileNotFoundError: no complete export there.
    ValueError: not an etcjax export, or fields missing.
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
    raise ValueError(f"{path} is not valid JSON: {e}") from None
  if not isinstance(info, dict) or info.get("format") != FORMAT:
    raise ValueError(
        f"{path} is not an etcjax export (format "
        f"{info.get('format') if isinstance(info, dict) else None!r}, "
        f"expected {FORMAT!r})")
  missing = set(FIELDS) - set(info)
  if missing:
    raise ValueError(f"{path} misses fields {sorted(missing)}")
  return info


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
    raise ValueError(f"{directory}: unsupported input_shape {info['input_shape']}")
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
