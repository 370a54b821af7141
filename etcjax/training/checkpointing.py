"""Periodic, asynchronous train-state checkpoints and exact resumption.

A checkpoint holds the whole `TrainState` (its `step` is also the data
position: the input pipeline restarts at that batch) and a small JSON
record of what the run is (model, scheme, key fingerprint) so that a
workdir is never resumed with another key or model. It never holds the key
or the encryption plan.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional, Tuple

from absl import logging
from etils import epath
import orbax.checkpoint as ocp

from etcjax import errors
from etcjax.encryption import keys
from etcjax.training import default_config


class WorkdirMismatchError(errors.UserError, ValueError):
  """A workdir's checkpoints belong to another run (model, config)."""

# Fields of the JSON record that must match for a workdir to be resumed.
IDENTITY_FIELDS = ("model", "model_kwargs", "num_classes", "input_shape",
                   "scheme", "block_size", "key_fingerprint")


class Checkpoints:
  """The checkpoints of one run, in `workdir/checkpoints/<step>/`.

  Every method must be called by all processes (orbax synchronises them and
  writes replicated arrays once).
  """

  def __init__(self, directory: epath.PathLike, every_steps: int,
               keep: int, use_async: bool = True):
    """Opens (creating if needed) a checkpoint directory.

    Args:
      directory: where step folders live (local path or gs://).
      every_steps: save interval in steps (> 0).
      keep: how many of the latest checkpoints to keep (> 0).
      use_async: write in a background thread while training continues.
    """
    if every_steps < 1 or keep < 1:
      raise default_config.ConfigError(
          f"checkpoint_every_steps ({every_steps}) and keep_checkpoints "
          f"({keep}) must be >= 1")
    # orbax refuses relative paths; the faces resolve them, this keeps
    # library callers safe too.
    self.directory = epath.Path(directory if "://" in str(directory)
                                else os.path.abspath(directory))
    # Interval and preemption saves only: orbax's default policy also saves
    # the first step, a full (e.g. 1 GB for ViT-B) save of nothing learned.
    policy = ocp.checkpoint_managers.AnySavePolicy([
        ocp.checkpoint_managers.FixedIntervalPolicy(every_steps),
        ocp.checkpoint_managers.PreemptionCheckpointingPolicy()])
    options = ocp.CheckpointManagerOptions(
        save_decision_policy=policy, max_to_keep=keep,
        enable_async_checkpointing=use_async, create=True,
        # A run killed mid-save leaves `<step>.orbax-checkpoint-tmp-*`
        # behind; the next run on the workdir removes it.
        cleanup_tmp_directories=True)
    self._manager = ocp.CheckpointManager(
        self.directory, item_names=("state", "meta"), options=options)

  def latest_step(self) -> Optional[int]:
    """The step of the newest complete checkpoint, or None."""
    return self._manager.latest_step()

  def due(self, step: int) -> bool:
    """Whether `step` is a save step (interval reached, or a preemption)."""
    return self._manager.should_save(step)

  def reached_preemption(self, step: int) -> bool:
    """Whether all hosts agreed to stop at `step` for a preemption notice.

    Always False without a multi-host preemption service (single process).
    """
    return self._manager.reached_preemption(step)

  def save(self, step: int, state: Any, record: Dict[str, Any],
           force: bool = False) -> bool:
    """Saves the state if `step` is due (or `force`), asynchronously.

    Args:
      step: the state's step (a Python int, equal to `state.step`).
      state: the `TrainState` (global jax arrays).
      record: JSON-serialisable description of the run (see
        `IDENTITY_FIELDS`); must not hold secrets.
      force: save even if the interval is not reached (end of training,
        preemption); a checkpoint that exists for `step` is kept.

    Returns:
      Whether a save was started.
    """
    if force and step in self._manager.all_steps():
      return False
    return self._manager.save(
        step, force=force,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                meta=ocp.args.JsonSave(dict(record, step=step))))

  def restore_latest(self, abstract_state: Any, record: Dict[str, Any]
                     ) -> Tuple[Optional[Any], Optional[int]]:
    """Restores the newest checkpoint, checking it belongs to this run.

    Args:
      abstract_state: the `TrainState` structure as `jax.ShapeDtypeStruct`s
        with shardings (restored arrays are placed accordingly).
      record: this run's description; its `IDENTITY_FIELDS` must equal the
        checkpoint's.

    Returns:
      `(state, step)`, or `(None, None)` when there is no checkpoint.

    Raises:
      KeyMismatchError: the checkpoint was made with another key.
      ValueError: the checkpoint is of another model, dataset geometry or
        scheme.
    """
    step = self.latest_step()
    if step is None:
      return None, None
    meta = self._manager.restore(
        step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    check_same_run(meta, record, self.directory / str(step))
    restored = self._manager.restore(
        step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state)))
    logging.info("Resumed from checkpoint %s", self.directory / str(step))
    return restored["state"], step

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are written."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and releases the manager's resources."""
    self._manager.wait_until_finished()
    self._manager.close()


def check_same_run(saved: Dict[str, Any], current: Dict[str, Any],
                   where: Any) -> None:
  """Raises unless a checkpoint's record matches the current run's.

  Args:
    saved: the checkpoint's JSON record.
    current: the current run's record.
    where: the checkpoint's path, for messages.

  Raises:
    KeyMismatchError: different key fingerprints.
    WorkdirMismatchError: another identity field differs.
  """
  if saved.get("key_fingerprint") != current.get("key_fingerprint"):
    raise keys.KeyMismatchError(
        f"checkpoint {where} was trained on images encrypted with key "
        f"fingerprint {saved.get('key_fingerprint') or 'none (plain images)'}"
        f", but this run uses "
        f"{current.get('key_fingerprint') or 'none (plain images)'}; use "
        "the original key, or a new --workdir")
  # Compare as stored: JSON turns tuples (e.g. in model_kwargs) into lists.
  current = json.loads(json.dumps(current))
  for field in IDENTITY_FIELDS:
    if saved.get(field) != current.get(field):
      raise WorkdirMismatchError(
          f"checkpoint {where} has {field}={saved.get(field)!r} but this run "
          f"has {field}={current.get(field)!r}; resume with the original "
          "config, or use a new --workdir")

