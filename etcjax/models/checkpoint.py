"""Reading pretrained checkpoints into a model's variables.

Formats read:

- `.npz` in the vit_jax format: one array per parameter, named by its
  '/'-joined path (`Transformer/encoderblock_0/LayerNorm_0/scale`). Our
  `save_npz` writes the same format; BatchNorm statistics, which vit_jax
  never has, are stored under a `batch_stats/` prefix.
- orbax checkpoints of our own: a directory saved with orbax holding a
  variables dict (`{'params': ..., 'batch_stats': ...}`, as written by
  `etcjax.training.export`), a `TrainState` (`.../checkpoints/<step>`, whose
  `state` item is read), or a bare params tree.

`load_pretrained` maps every checkpoint tensor to the parameter of the same
name (after the explicit aliases in `CHECKPOINT_ALIASES`), and adapts the
parts that legitimately differ when fine-tuning: it drops a pre-logits layer
the model does not have, re-initialises a head of another size, and
resamples the position-embedding grid to the model's. Everything else must
match exactly; otherwise the error lists every missing, unexpected and
mis-shaped tensor.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any, Dict, Mapping, Sequence, Tuple

import flax
import jax
import numpy as np

from etcjax import errors

Flat = Dict[str, np.ndarray]

BATCH_STATS_PREFIX = "batch_stats/"

# Checkpoint spellings that mean one of our parameter names, per model family
# (the registry name prefix). vit_jax's Flax-linen code names a block's
# submodules with per-type counters (LayerNorm_1, MlpBlock_0, ...), while the
# published .npz files keep the pre-linen single counter that our modules use.
CHECKPOINT_ALIASES: Dict[str, Tuple[Tuple[str, str], ...]] = {
    "ViT": (
        (r"^(Transformer/encoderblock_\d+)/MultiHeadDotProductAttention_0/",
         r"\1/MultiHeadDotProductAttention_1/"),
        (r"^(Transformer/encoderblock_\d+)/LayerNorm_1/", r"\1/LayerNorm_2/"),
        (r"^(Transformer/encoderblock_\d+)/MlpBlock_0/", r"\1/MlpBlock_3/"),
    ),
}

POSEMB_KEY = "Transformer/posembed_input/pos_embedding"


class CheckpointMismatchError(errors.UserError, ValueError):
  """A checkpoint's tensors do not fit the model's parameters."""


def flatten(tree: Mapping[str, Any]) -> Flat:
  """Nested dict -> `{'a/b/c': leaf}`."""
  return {"/".join(k): v for k, v in
          flax.traverse_util.flatten_dict(dict(tree)).items()}


def unflatten(flat: Mapping[str, Any]) -> Dict[str, Any]:
  """`{'a/b/c': leaf}` -> nested dict."""
  return flax.traverse_util.unflatten_dict(
      {tuple(k.split("/")): v for k, v in flat.items()})


def save_npz(path: str, variables: Mapping[str, Any]) -> None:
  """Writes variables (or a bare params tree) as a vit_jax-format `.npz`.

  Args:
    path: output file.
    variables: `{'params': ..., ['batch_stats': ...]}` or a params tree.
      Params are stored under their '/'-joined names, BatchNorm statistics
      under `batch_stats/<name>`.
  """
  if "params" in variables:
    flat = flatten(variables["params"])
    for k, v in flatten(variables.get("batch_stats", {})).items():
      flat[BATCH_STATS_PREFIX + k] = v
  else:
    flat = flatten(variables)
  np.savez(path, **{k: np.asarray(v) for k, v in flat.items()})


def _restore_orbax(path: str) -> Any:
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  # A TrainState checkpoint of etcjax.training is a composite; read its state.
  if os.path.isdir(os.path.join(path, "state")):
    path = os.path.join(path, "state")
  checkpointer = ocp.StandardCheckpointer()
  try:
    return checkpointer.restore(os.path.abspath(path))
  finally:
    checkpointer.close()


def read_checkpoint(path: str) -> Tuple[Flat, Flat]:
  """Reads a checkpoint into flat params and BatchNorm statistics.

  Args:
    path: a `.npz` file or an orbax checkpoint directory (see module doc).

  Returns:
    `(params, batch_stats)`: dicts from '/'-joined names to numpy arrays
    (`batch_stats` empty when the checkpoint has none).

  Raises:
    FileNotFoundError: nothing at `path`.
    ValueError: a directory that holds no params.
  """
  path = os.path.expanduser(os.fspath(path))
  if not os.path.exists(path):
    raise FileNotFoundError(f"checkpoint {path} does not exist")
  if os.path.isdir(path):
    tree = _restore_orbax(path)
    tree = dict(tree) if isinstance(tree, Mapping) else vars(tree)
    if "params" in tree:
      params, stats = tree["params"], tree.get("batch_stats") or {}
    else:
      params, stats = tree, {}
    if not params:
      raise ValueError(f"orbax checkpoint {path} holds no params")
    to_np = lambda d: {k: np.asarray(v) for k, v in flatten(d).items()}
    return to_np(params), to_np(stats)
  with np.load(path, allow_pickle=False) as data:
    flat = {k: data[k] for k in data.files}
  stats = {k[len(BATCH_STATS_PREFIX):]: v for k, v in flat.items()
           if k.startswith(BATCH_STATS_PREFIX)}
  params = {k: v for k, v in flat.items()
            if not k.startswith(BATCH_STATS_PREFIX)}
  # np.savez of a variables dict spells params as 'params/...'.
  if params and all(k.startswith("params/") for k in params):
    params = {k[len("params/"):]: v for k, v in params.items()}
  return params, stats


def _linear_resize_axis(x: np.ndarray, size: int, axis: int) -> np.ndarray:
  """Linear interpolation along `axis` with the end points aligned."""
  old = x.shape[axis]
  if old == size:
    return x
  if old == 1 or size == 1:
    coords = np.zeros(size) if old == 1 else np.array([(old - 1) / 2])
  else:
    coords = np.linspace(0, old - 1, size)
  lo = np.clip(np.floor(coords).astype(int), 0, old - 1)
  hi = np.minimum(lo + 1, old - 1)
  shape = [1] * x.ndim
  shape[axis] = size
  frac = (coords - lo).reshape(shape)
  return (np.take(x, lo, axis=axis) * (1 - frac)
          + np.take(x, hi, axis=axis) * frac)


def resample_posemb(posemb, grid_shape: Sequence[int], *,
                    num_prefix_tokens: int = 1) -> np.ndarray:
  """Resamples a position embedding to another grid of patches.

  The prefix (class-token) entries are kept; the grid entries, laid out
  row-major on a square grid, are interpolated linearly along each axis with
  the corner entries aligned, i.e. vit_jax's `scipy.ndimage.zoom(order=1)`.
  E.g. 14x14 (224 px, patch 16) -> 24x24 (384 px), or -> 2x2 (32 px), which
  keeps the four corner embeddings.

  Args:
    posemb: float `[1, num_prefix_tokens + g*g, D]`.
    grid_shape: `(gh, gw)` of the new grid.
    num_prefix_tokens: leading entries that are not on the grid.

  Returns:
    float32 numpy `[1, num_prefix_tokens + gh*gw, D]`.

  Raises:
    ValueError: the old grid is not square or the shapes are malformed.
  """
  posemb = np.asarray(posemb, np.float32)
  if posemb.ndim != 3 or posemb.shape[0] != 1:
    raise ValueError(f"position embedding must be [1, L, D], got {posemb.shape}")
  prefix, grid = posemb[:, :num_prefix_tokens], posemb[0, num_prefix_tokens:]
  side = int(round(np.sqrt(len(grid))))
  if side * side != len(grid):
    raise ValueError(
        f"position embedding has {len(grid)} grid entries (after "
        f"{num_prefix_tokens} prefix tokens), not a square grid")
  gh, gw = (int(s) for s in grid_shape)
  grid = grid.reshape(side, side, -1).astype(np.float64)
  grid = _linear_resize_axis(_linear_resize_axis(grid, gh, 0), gw, 1)
  return np.concatenate(
      [prefix, grid.reshape(1, gh * gw, -1).astype(np.float32)], axis=1)


def _apply_aliases(flat: Flat, family: str) -> Flat:
  out = {}
  for key, value in flat.items():
    for pattern, replacement in CHECKPOINT_ALIASES.get(family, ()):
      key = re.sub(pattern, replacement, key)
    out[key] = value
  return out


def _describe(label: str, keys, loaded: Flat, init: Flat, limit=20) -> str:
  """One line per key: '<label>: <key> <shape>' or '<key>: checkpoint .. vs model ..'."""
  keys = sorted(keys)
  lines = []
  for k in keys[:limit]:
    if label == "shape":
      lines.append(f"  {k}: checkpoint {tuple(np.shape(loaded[k]))} vs model "
                   f"{tuple(np.shape(init[k]))}")
    else:
      source = init if k in init else loaded
      lines.append(f"  {label}: {k} {tuple(np.shape(source[k]))}")
  if len(keys) > limit:
    lines.append(f"  ... and {len(keys) - limit} more {label} keys")
  return "\n".join(lines)


def _merge(loaded: Flat, init: Flat, *, path: str, name: str,
           what: str) -> Flat:
  """Checks names and shapes, then casts to the model's dtypes."""
  missing = init.keys() - loaded.keys()
  extra = loaded.keys() - init.keys()
  misshaped = {k for k in init.keys() & loaded.keys()
               if tuple(np.shape(init[k])) != tuple(np.shape(loaded[k]))}
  if missing or extra or misshaped:
    parts = [f"checkpoint {path} does not match the {what} of model {name} "
             f"({len(missing)} missing, {len(extra)} unexpected, "
             f"{len(misshaped)} of another shape):"]
    if missing:
      parts.append(_describe("missing from checkpoint", missing, loaded, init))
    if extra:
      parts.append(_describe("unexpected in checkpoint", extra, loaded, init))
    if misshaped:
      parts.append(_describe("shape", misshaped, loaded, init))
    raise CheckpointMismatchError("\n".join(parts))
  return {k: np.asarray(loaded[k]).astype(np.asarray(init[k]).dtype)
          for k in init}


def load_pretrained(path: str, variables: Mapping[str, Any], name: str
                    ) -> Dict[str, Any]:
  """Loads a checkpoint into a model's variables for fine-tuning or eval.

  Every model tensor is taken from the checkpoint tensor of the same name,
  except:

  - `pre_logits/*` in the checkpoint is dropped when the model has no
    pre-logits layer (vit_jax's fine-tuning setting);
  - `head/*` of another shape (another number of classes), or absent, keeps
    the model's initial values (zeros for ViT);
  - a ViT position embedding for another grid is resampled with
    `resample_posemb` (class token kept);
  - BatchNorm statistics keep their initial values when the checkpoint has
    none (e.g. a params-only `.npz`).

  Args:
    path: `.npz` file or orbax checkpoint directory (see module doc).
    variables: the model's initial variables
      (`{'params': ..., ['batch_stats': ...]}`), or a bare params tree.
    name: the registry name of the model, e.g. 'ViT-B_16' (selects the
      checkpoint aliases and appears in messages).

  Returns:
    The same structure as `variables` with numpy arrays of the same shapes
    and dtypes, filled from the checkpoint.

  Raises:
    CheckpointMismatchError: tensors missing from the checkpoint, extra
      ones, or mis-shaped ones (all listed with their shapes).
    FileNotFoundError: nothing at `path`.
  """
  is_variables = "params" in variables
  init_params = flatten(variables["params"] if is_variables else variables)
  init_stats = flatten(variables.get("batch_stats", {})) if is_variables else {}
  family = name.split("-")[0]
  params, stats = read_checkpoint(path)
  params = _apply_aliases(params, family)

  if not any(k.startswith("pre_logits/") for k in init_params):
    dropped = [k for k in params if k.startswith("pre_logits/")]
    if dropped:
      logging.info("load_pretrained: dropping %s (model has no pre-logits)",
                   dropped)
    params = {k: v for k, v in params.items() if k not in dropped}

  for k in [k for k in init_params if k.startswith("head/")]:
    if k not in params or np.shape(params[k]) != np.shape(init_params[k]):
      logging.info("load_pretrained: re-initialising %s %s (checkpoint: %s)",
                   k, np.shape(init_params[k]),
                   np.shape(params[k]) if k in params else "absent")
      params[k] = np.asarray(init_params[k])
  params = {k: v for k, v in params.items()
            if not k.startswith("head/") or k in init_params}

  if POSEMB_KEY in init_params and POSEMB_KEY in params:
    old, new = np.shape(params[POSEMB_KEY]), np.shape(init_params[POSEMB_KEY])
    if old != new:
      grid = new[1] - 1
      side = int(round(np.sqrt(grid)))
      if side * side != grid or old[2] != new[2]:
        raise CheckpointMismatchError(
            f"checkpoint {path}: position embedding {old} cannot be resampled "
            f"to the model's {new} (needs equal width and a square grid)")
      logging.info("load_pretrained: resampling %s from %s to %s", POSEMB_KEY,
                   old, new)
      params[POSEMB_KEY] = resample_posemb(params[POSEMB_KEY], (side, side))

  loaded = unflatten(_merge(params, init_params, path=path, name=name,
                            what="parameters"))
  if not is_variables:
    return loaded
  out = dict(variables, params=loaded)
  if init_stats:
    if stats:
      out["batch_stats"] = unflatten(_merge(
          stats, init_stats, path=path, name=name,
          what="BatchNorm statistics"))
    else:
      logging.warning("load_pretrained: %s has no BatchNorm statistics; "
                      "keeping the initial ones", path)
      out["batch_stats"] = unflatten(
          {k: np.asarray(v) for k, v in init_stats.items()})
  return out
