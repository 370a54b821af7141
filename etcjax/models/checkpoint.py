"""Pretrained weights: vit_jax `.npz` checkpoints and etcjax exports.

A vit_jax checkpoint (e.g. `ViT-B_16.npz`, ImageNet-21k) is a flat `.npz`
whose keys are '/'-joined parameter paths. Our ViT uses the same tree, so
the name map is explicit but mostly the identity; what differs between a
checkpoint and a fine-tuning model is handled by rule:

- the classification head is re-initialised (zeros) when the number of
  classes differs, and kept otherwise;
- the pre-logits layer is dropped when the model has none;
- the position embedding is resampled when the patch grid differs (e.g.
  224 -> 384, or 14x14 -> 2x2 for 32x32 CIFAR images);
- anything else missing, unexpected or mis-shaped is an error that lists
  every offending key.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, Mapping, Optional

import numpy as np
import scipy.ndimage

POSEMB_KEY = "Transformer/posembed_input/pos_embedding"
HEAD_PREFIX = "head/"
PRE_LOGITS_PREFIX = "pre_logits/"


def flatten(tree: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
  """Nested dict -> {'a/b/c': leaf}."""
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(flatten(v, f"{prefix}{k}/"))
    else:
      out[f"{prefix}{k}"] = v
  return out


def unflatten(flat: Mapping[str, Any]) -> Dict[str, Any]:
  """{'a/b/c': leaf} -> nested dict."""
  tree: Dict[str, Any] = {}
  for path, v in flat.items():
    node = tree
    *parents, leaf = path.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = v
  return tree


def save_npz(path: str, params: Mapping[str, Any]) -> None:
  """Writes params in the vit_jax `.npz` format ('/'-joined keys)."""
  np.savez(path, **{k: np.asarray(v) for k, v in flatten(params).items()})


def load_npz(path: str) -> Dict[str, np.ndarray]:
  """Reads a vit_jax `.npz` checkpoint into a flat {'a/b': array} dict."""
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"pretrained checkpoint {path} does not exist (vit_jax ImageNet-21k "
        "checkpoints, e.g. ViT-B_16.npz, are published in the "
        "vit_models/imagenet21k Cloud Storage bucket)")
  with np.load(path, allow_pickle=False) as data:
    return {k: data[k] for k in data.files}


def resample_posemb(posemb: np.ndarray, new_grid) -> np.ndarray:
  """Resamples a ViT position embedding to a new patch grid.

  Bilinear interpolation of the grid part (as vit_jax does when fine-tuning
  at another resolution); the class token's entry is kept unchanged.

  Args:
    posemb: float `[1, 1 + gh * gw, D]` (class token first, square grid).
    new_grid: `(gh', gw')` patch grid of the new resolution.

  Returns:
    float `[1, 1 + gh' * gw', D]`, same dtype.
  """
  posemb = np.asarray(posemb)
  if posemb.ndim != 3 or posemb.shape[0] != 1:
    raise ValueError(f"position embedding must be [1, L, D], got {posemb.shape}")
  cls, grid = posemb[:, :1], posemb[0, 1:]
  old = int(round(np.sqrt(grid.shape[0])))
  if old * old != grid.shape[0]:
    raise ValueError(
        f"position embedding has {grid.shape[0]} patch entries, not a square grid")
  gh, gw = new_grid
  grid = grid.reshape(old, old, -1)
  grid = scipy.ndimage.zoom(grid, (gh / old, gw / old, 1), order=1)
  return np.concatenate([cls, grid.reshape(1, gh * gw, -1)], axis=1).astype(
      posemb.dtype)


# Checkpoint key -> model key. Our ViT's names are the vit_jax names, so the
# map is the identity; it is spelled out so a renamed module shows up here.
def vit_name_map(checkpoint_key: str) -> Optional[str]:
  return checkpoint_key


NAME_MAPS: Dict[str, Callable[[str], Optional[str]]] = {"ViT": vit_name_map}


class CheckpointMismatchError(ValueError):
  """A checkpoint does not fit the model (lists every offending key)."""


def _read(path: str) -> Dict[str, np.ndarray]:
  if os.path.isdir(path):
    # An etcjax export or orbax params checkpoint.
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
    restored = ocp.PyTreeCheckpointer().restore(os.path.abspath(path))
    restored = restored.get("params", restored)
    return {k: np.asarray(v) for k, v in flatten(restored).items()}
  return load_npz(path)


def load_pretrained(path: str, variables: Mapping[str, Any], name: str
                    ) -> Dict[str, Any]:
  """Loads pretrained weights into a model's freshly initialised variables.

  Args:
    path: a vit_jax `.npz` checkpoint, or an orbax params checkpoint folder.
    variables: the model's initialised variables (`{'params': ...}`), whose
      shapes define what is expected.
    name: model name (e.g. 'ViT-B_16'); picks the name map.

  Returns:
    New variables with every parameter taken from the checkpoint except the
    head when the class count differs (zeros) and a resampled position
    embedding when the grid differs.

  Raises:
    CheckpointMismatchError: keys missing from or unexpected in the
      checkpoint, or shapes that differ (all listed).
  """
  family = name.split("-")[0]
  name_map = NAME_MAPS.get(family, lambda k: k)
  ckpt = {}
  for k, v in _read(path).items():
    mapped = name_map(k)
    if mapped is not None:
      ckpt[mapped] = v
  model = flatten(variables["params"])

  missing = sorted(k for k in model if k not in ckpt
                   and not k.startswith(HEAD_PREFIX))
  extra = sorted(k for k in ckpt if k not in model
                 and not k.startswith((HEAD_PREFIX, PRE_LOGITS_PREFIX)))
  mismatched = []
  loaded = {}
  for k, init in model.items():
    if k not in ckpt:
      loaded[k] = init
      continue
    value = ckpt[k]
    if k.startswith(HEAD_PREFIX) and value.shape != init.shape:
      loaded[k] = np.zeros(init.shape, np.asarray(init).dtype)  # new classes
    elif k == POSEMB_KEY and value.shape != init.shape:
      if value.shape[-1] != init.shape[-1]:
        mismatched.append(f"{k}: checkpoint {value.shape} vs model {init.shape}")
        continue
      n = init.shape[1] - 1
      side = int(round(np.sqrt(n)))
      if side * side != n:
        mismatched.append(f"{k}: model grid of {n} patches is not square")
        continue
      loaded[k] = resample_posemb(value, (side, side))
    elif value.shape != init.shape:
      mismatched.append(f"{k}: checkpoint {value.shape} vs model {init.shape}")
    else:
      loaded[k] = value.astype(np.asarray(init).dtype)
  if missing or extra or mismatched:
    lines = [f"checkpoint {path} does not fit model {name}:"]
    lines += [f"  missing from checkpoint: {k}" for k in missing]
    lines += [f"  unexpected in checkpoint: {k}" for k in extra]
    lines += [f"  shape mismatch: {m}" for m in mismatched]
    raise CheckpointMismatchError("\n".join(lines))
  return dict(variables, params=unflatten(loaded))
