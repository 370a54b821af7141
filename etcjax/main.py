r"""Trains and evaluates a classifier on encrypted (or plain) images.

    python -m etcjax.main --config=configs/convmixer_cifar10_etc.py:smoke \
        --workdir=/tmp/etcjax_smoke [--config.data_dir=...]

Any config field can be overridden with `--config.FIELD=VALUE`. Without
--config.data_dir, a missing tfds dataset is downloaded into tfds' default
folder first (a connected machine's default; --nodownload refuses). The same
command runs on one CPU, one TPU host, or every worker of a TPU pod slice
(add --distributed there; see launch/). Re-running it with the same
workdir resumes from the latest checkpoint.
"""

import logging as std_logging
import os
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from etcjax import encryption
from etcjax import files
from etcjax.data import encrypted_dataset
from etcjax.training import train

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training config file (configs/*.py[:variant]).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for checkpoints, summaries, export and "
    "results.json (local or gs://, shared by all hosts).")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", os.environ.get("ETCJAX_DISTRIBUTED", "") == "1",
    "Call jax.distributed.initialize() before anything else (multi-host "
    "runs; default from $ETCJAX_DISTRIBUTED=1). On Cloud TPU the "
    "coordinator and process ids are detected automatically.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None,
    "host:port of process 0, for multi-process runs off Cloud TPU.")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Number of processes, with --coordinator_address.")
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "This process's id, with --coordinator_address.")
_DOWNLOAD = flags.DEFINE_bool(
    "download", True,
    "When config.data_dir is unset (tfds' default folder) and the tfds "
    "dataset is not prepared there, download and prepare it first. An "
    "explicit config.data_dir is never downloaded into.")

flags.mark_flags_as_required(["config", "workdir"])

# Errors whose message says everything: no traceback for them.
_USER_ERRORS = (train.NonFiniteLossError, encryption.KeyMismatchError,
                encryption.InvalidKeyError, FileNotFoundError, PermissionError,
                IsADirectoryError, files.FolderLockedError,
                encrypted_dataset.DatasetError)


def _quiet_orbax(record: std_logging.LogRecord) -> bool:
  # orbax logs every save phase at INFO; keep its warnings and errors.
  return record.levelno >= std_logging.WARNING or (
      f"{os.sep}orbax{os.sep}" not in record.pathname)


def _prepare_default_tfds(config) -> None:
  """Downloads a tfds dataset into tfds' default folder if it is missing."""
  if (not _DOWNLOAD.value or config.data_dir
      or config.dataset in ("folder", "encrypted")):
    return
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder(config.dataset)
  if builder.is_prepared():
    return
  logging.warning("tfds dataset %s is not in %s: downloading and preparing "
                  "it (pass --nodownload to refuse)", config.dataset,
                  builder.data_dir_root)
  try:
    builder.download_and_prepare()
  except Exception as e:  # pylint: disable=broad-except
    raise FileNotFoundError(
        f"tfds dataset {config.dataset!r} is not prepared in "
        f"{builder.data_dir_root} and downloading it failed "
        f"({type(e).__name__}: {e}); prepare it with `tfds build "
        f"{config.dataset}` or pass --config.data_dir") from None


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.get_absl_handler().addFilter(_quiet_orbax)
  if _DISTRIBUTED.value or _COORDINATOR.value:
    jax.distributed.initialize(
        coordinator_address=_COORDINATOR.value,
        num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
  logging.info("JAX process %d/%d, %d local / %d global devices (%s)",
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count(),
               jax.default_backend())
  try:
    _prepare_default_tfds(_CONFIG.value)
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except _USER_ERRORS as e:
    logging.error("%s: %s", type(e).__name__, e)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
