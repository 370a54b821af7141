"""Finished pieces of a long evaluation task, kept so that a rerun resumes.

The attacks task on Imagenette runs for hours on a CPU. It saves each
finished (scheme, attack) piece here, next to its output folder, and for
the image-by-image attacks each finished chunk of images on the way:

    RUN/<task>/.<name>.resume/request.json    what was asked (no key material)
    RUN/<task>/.<name>.resume/<unit>.npz      one finished piece or chunk

Rerunning the same request skips the saved pieces; a different request
with pieces left over is refused (pass overwrite to discard them), so
results of different settings never mix. The task clears the store once
its output folder is complete.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
from typing import Any, Dict, Tuple

import numpy as np

from etcjax import files

REQUEST_FILE = "request.json"
_INFO = "__info__"  # Key of the JSON part of a unit's file.


class ResumeStore:
  """Saved pieces of one task run.

  Attributes:
    path: the store's folder.
    resumed: names of the units found from an earlier run.
  """

  def __init__(self, output_path: str, request: Dict[str, Any],
               overwrite: bool = False):
    """Opens (or starts) the store of the task writing to `output_path`.

    Args:
      output_path: the task's final output folder.
      request: JSON-able description of the run (all that changes the
        results); never key material.
      overwrite: discard pieces of a different earlier request (and of the
        same one: start over).

    Raises:
      FileExistsError: pieces of a different request exist and `overwrite`
        is False.
    """
    parent, name = os.path.split(output_path.rstrip(os.sep))
    self.path = os.path.join(parent, f".{name}.resume")
    self._request = json.loads(json.dumps(request, sort_keys=True,
                                          default=str))
    request_file = os.path.join(self.path, REQUEST_FILE)
    if os.path.exists(self.path) and overwrite:
      shutil.rmtree(self.path)
    if os.path.exists(request_file):
      with open(request_file, encoding="utf-8") as f:
        earlier = json.load(f)
      if earlier != self._request:
        changed = sorted(k for k in set(earlier) | set(self._request)
                         if earlier.get(k) != self._request.get(k))
        raise FileExistsError(
            f"{self.path} holds finished pieces of an unfinished run with "
            f"other settings ({', '.join(changed)} differ); rerun with those "
            "settings to resume it, or pass --overwrite to discard it")
    os.makedirs(self.path, exist_ok=True)
    files.atomic_write(request_file,
                          json.dumps(self._request, indent=2).encode("utf-8"))
    self.resumed = sorted(f[:-len(".npz")] for f in os.listdir(self.path)
                          if f.endswith(".npz"))

  def _file(self, unit: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", unit):
      raise ValueError(f"unit names are file names, got {unit!r}")
    return os.path.join(self.path, f"{unit}.npz")

  def has(self, unit: str) -> bool:
    """Whether `unit` was saved."""
    return os.path.exists(self._file(unit))

  def scratch(self, unit: str) -> str:
    """A folder for `unit`'s work in progress (e.g. training checkpoints).

    It is removed with the store.
    """
    self._file(unit)  # Checks the name.
    return os.path.join(self.path, f"{unit}.work")

  def save(self, unit: str, arrays: Dict[str, np.ndarray],
           info: Dict[str, Any]) -> None:
    """Saves a finished unit atomically (a crash leaves it absent, not torn).

    Args:
      unit: its name (letters, digits, '_', '.', '-').
      arrays: numpy arrays by name.
      info: JSON-able values (e.g. table rows).
    """
    buffer = io.BytesIO()
    np.savez(buffer, **arrays, **{_INFO: np.asarray(json.dumps(info))})
    files.atomic_write(self._file(unit), buffer.getvalue())

  def load(self, unit: str) -> Tuple[Dict[str, np.ndarray], Dict[str, Any]]:
    """Returns `(arrays, info)` of a saved unit."""
    with np.load(self._file(unit)) as data:
      arrays = {k: data[k] for k in data.files if k != _INFO}
      info = json.loads(str(data[_INFO]))
    return arrays, info

  def clear(self) -> None:
    """Deletes the store (the task's output is complete)."""
    shutil.rmtree(self.path, ignore_errors=True)

