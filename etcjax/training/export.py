"""Writing the exported model (`WORKDIR/export`); the format and reading
are in `etcjax.inference.export`, re-exported here.
"""

from __future__ import annotations

import os
import shutil
from typing import Any, Dict

from absl import logging
from etils import epath
import jax
import orbax.checkpoint as ocp

from etcjax.inference.export import (EXPORT_FILE, FIELDS, FORMAT,  # pylint: disable=unused-import
                                     OPTIONAL_FIELDS, PUBLIC_WEIGHTS_WARNING,
                                     VARIABLES_DIR, ExportError,
                                     encryption_plan, load, read_info)
from etcjax.training import metrics


def save(directory: epath.PathLike, variables: Dict[str, Any],
         info: Dict[str, Any]) -> epath.Path:
  """Writes an export; collective: every process must call it.

  An existing export in `directory` is replaced (its `export.json` is
  removed first, so a crash mid-way never leaves it looking complete).

  Args:
    directory: the export folder (usually `workdir/export`).
    variables: inference variables {'params': ..., ['batch_stats': ...]},
      jax arrays (replicated or host-local).
    info: the fields of `FIELDS` except 'format', and optionally those of
      `OPTIONAL_FIELDS`.

  Returns:
    The export folder.

  Raises:
    ValueError: `info` misses fields or has unknown ones.
  """
  info = dict(OPTIONAL_FIELDS, **info, format=FORMAT)
  known = set(FIELDS) | set(OPTIONAL_FIELDS)
  if not set(FIELDS) <= set(info) <= known:
    raise ValueError(
        f"export info fields differ from {FIELDS} (+ optional "
        f"{tuple(OPTIONAL_FIELDS)}): missing {sorted(set(FIELDS) - set(info))}"
        f", unknown {sorted(set(info) - known)}")
  adaptation = info["adaptation"]
  if adaptation and adaptation.get("from_public_weights"):
    adaptation = dict(adaptation, warning=PUBLIC_WEIGHTS_WARNING)
    info["adaptation"] = adaptation
    if jax.process_index() == 0:
      logging.warning("Exporting to %s (adapted from %s). %s", directory,
                      adaptation.get("source"), PUBLIC_WEIGHTS_WARNING)
  local = "://" not in str(directory)
  # orbax refuses relative paths (the faces resolve them; so does this).
  directory = epath.Path(os.path.abspath(directory) if local else directory)
  created = not directory.exists()
  if jax.process_index() == 0:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / EXPORT_FILE).unlink(missing_ok=True)
  try:
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(directory / VARIABLES_DIR, variables, force=True)
    checkpointer.wait_until_finished()
    checkpointer.close()
  except BaseException:
    # Leave nothing that looks like an export: no variables, no orbax
    # temporary folder, and no folder this call created.
    if jax.process_index() == 0 and local:
      _remove_partial(directory, created)
    raise
  if jax.process_index() == 0:
    metrics.write_json(directory / EXPORT_FILE, info)
  return directory


def _remove_partial(directory: epath.Path, created: bool) -> None:
  for child in directory.iterdir() if directory.exists() else ():
    if child.name == VARIABLES_DIR or child.name.startswith(
        VARIABLES_DIR + ".orbax-checkpoint-tmp"):
      shutil.rmtree(child, ignore_errors=True)
  if created and directory.exists() and not any(directory.iterdir()):
    directory.rmdir()


