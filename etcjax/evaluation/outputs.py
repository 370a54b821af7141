"""Output folders of evaluation tasks: one per task (and dataset) in a run.

    RUN/<task>/[<dataset>/]   tables (*.csv, *.md), figures (*.png),
                              meta.json (what was run, on what, how long)

A task writes into a hidden staging folder `RUN/<task>/.<name>.partial`
that replaces the final folder only once everything is written, so a
visible result folder is always complete. Existing results are never
replaced without `overwrite=True`, and the check happens before any work.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import time
from typing import Any, Dict, Optional

from etcjax.evaluation import requests

META_FILE = "meta.json"


class TaskOutput:
  """A task's output folder, written atomically.

      out = TaskOutput(run_dir, 'compressibility', 'cifar10', overwrite=False)
      with out as folder:          # a fresh staging folder
        table.write(folder, 'file_sizes')
        out.meta['images'] = n
      # now RUN/compressibility/cifar10/ holds the results and meta.json

  Attributes:
    path: the final folder.
    meta: dict written to `meta.json` on success (add to it while working);
      never put key material in it (use `encryption.fingerprint`). On
      success it also holds `seconds`, the wall time since this object was
      made (tasks may compute before they enter it), and `finished`.
  """

  def __init__(self, run_dir: str, task: str, name: Optional[str] = None,
               overwrite: bool = False, meta: Optional[Dict[str, Any]] = None):
    if not run_dir:
      raise requests.RequestError("an output folder is needed: pass --out=DIR")
    parent = os.path.join(run_dir, task)
    self.path = os.path.join(parent, name) if name else parent
    self._staging = os.path.join(
        os.path.dirname(self.path), f".{os.path.basename(self.path)}.partial")
    self._overwrite = overwrite
    self.meta: Dict[str, Any] = dict(meta or {}, task=task)
    if name:
      self.meta["dataset"] = name
    # Timed from here: some tasks compute everything before they enter.
    self._start = time.time()
    self.check()

  def check(self) -> None:
    """Raises FileExistsError if results exist and may not be replaced."""
    if (os.path.exists(self.path) and not self._overwrite
        and (not os.path.isdir(self.path) or os.listdir(self.path))):
      raise FileExistsError(
          f"{self.path} already holds results; pass --overwrite to replace "
          "them, or choose another --out")

  def __enter__(self) -> str:
    self.check()
    if os.path.exists(self._staging):
      shutil.rmtree(self._staging)
    os.makedirs(self._staging)
    return self._staging

  def __exit__(self, exc_type, exc, tb) -> bool:
    if exc_type is not None:
      shutil.rmtree(self._staging, ignore_errors=True)
      return False
    self.meta.update(
        finished=datetime.datetime.now().astimezone().isoformat(
            timespec="seconds"),
        seconds=round(time.time() - self._start, 1),
        host=platform.node(), python=platform.python_version())
    with open(os.path.join(self._staging, META_FILE), "w",
              encoding="utf-8") as f:
      json.dump(self.meta, f, indent=2, sort_keys=True, default=str)
    self.check()
    if os.path.exists(self.path):
      old = self._staging + ".old"
      os.replace(self.path, old)
      os.replace(self._staging, self.path)
      shutil.rmtree(old)
    else:
      os.replace(self._staging, self.path)
    return False
