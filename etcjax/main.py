r"""Trains and evaluates a classifier on encrypted (or plain) images.

    python -m etcjax.main --config=configs/convmixer_cifar10_etc.py:smoke \
        --workdir=/tmp/etcjax_smoke [--config.data_dir=...]

Any config field can be overridden with `--config.FIELD=VALUE` (`--help`
lists them). Data come from --config.data_dir (tfds data_dir, or the root
of a 'folder' / 'encrypted' dataset), else from tfds' default folder
($TFDS_DATA_DIR or ~/tensorflow_datasets). Nothing is downloaded unless
you ask: with --download, a tfds dataset missing from tfds' default folder
is downloaded and prepared there first. Paths may be relative or start
with `~`. The same
command runs on one CPU, one TPU host, or every worker of a TPU pod slice
(add --distributed there; see launch/). Re-running it with the same
workdir resumes from the latest checkpoint.
"""

if __name__ == "__main__":
  # First, before imports start threads and take seconds: glibc reads its
  # tunables at process start (see etcjax/host_memory.py).
  from etcjax import host_memory  # pylint: disable=g-import-not-at-top
  host_memory.restart_with_huge_pages()

import logging as std_logging
import os
import re
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from etcjax import command_line
from etcjax import host_memory
from etcjax.training import default_config
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
    "download", False,
    "Opt-in: when config.data_dir is unset (tfds' default folder) and the "
    "tfds dataset is not prepared there, download and prepare it first "
    "(needs internet). Without it a missing dataset fails at once, naming "
    "what to set. An explicit config.data_dir is never downloaded into.")

flags.mark_flags_as_required(["config", "workdir"])

# Config fields that hold local paths: resolved once, here (orbax refuses
# relative checkpoint paths; recorded paths must not depend on the cwd).
_PATH_FIELDS = ("data_dir", "encryption.key_file", "pretrained_path")


def _quiet_orbax(record: std_logging.LogRecord) -> bool:
  # orbax logs every save phase at INFO; keep its warnings and errors.
  return record.levelno >= std_logging.WARNING or (
      f"{os.sep}orbax{os.sep}" not in record.pathname)


def _resolve_paths(config) -> None:
  for field in _PATH_FIELDS:
    *parents, name = field.split(".")
    node = config
    for parent in parents:
      node = node[parent]
    if node[name]:
      node[name] = command_line.resolve_path(node[name])


def _check_default_tfds(config) -> None:
  """Fails at once when a tfds dataset is missing; downloads on --download.

  Only tfds' default folder is checked here (an explicit data_dir is read
  as given); checking creates nothing there.
  """
  if config.data_dir or config.dataset in ("folder", "encrypted"):
    return
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder(config.dataset)
  if builder.is_prepared():
    return
  if not _DOWNLOAD.value:
    raise FileNotFoundError(
        f"tfds dataset {config.dataset!r} is not prepared in tfds' default "
        f"folder {builder.data_dir_root}: pass --config.data_dir=DIR (or set "
        "TFDS_DATA_DIR) to a tensorflow_datasets folder that holds it, or "
        "--download to download it there")
  logging.warning("tfds dataset %s is not in %s: downloading and preparing "
                  "it (--download)", config.dataset, builder.data_dir_root)
  try:
    builder.download_and_prepare()
  except Exception as e:  # pylint: disable=broad-except
    raise FileNotFoundError(
        f"tfds dataset {config.dataset!r} is not prepared in "
        f"{builder.data_dir_root} and downloading it failed "
        f"({type(e).__name__}: {e}); prepare it with `tfds build "
        f"{config.dataset}` or pass --config.data_dir") from None


def _print_outputs(workdir: str) -> None:
  print(f"export:      {os.path.join(workdir, 'export')}\n"
        f"results:     {os.path.join(workdir, 'results.json')}\n"
        f"TensorBoard: {os.path.join(workdir, 'tensorboard')} (view with "
        f"`tensorboard --logdir={os.path.join(workdir, 'tensorboard')}`; "
        "pip install -e \".[tensorboard]\")", flush=True)


def config_fields_help(config=None) -> str:
  """The config's fields, their values and the comments that explain them.

  Args:
    config: a loaded config (its values are shown), or None for the
      defaults of `default_config.get_default_config()`.

  Returns:
    Lines `--config.FIELD=VALUE  # comment`.
  """
  comments = _field_comments()
  config = config or default_config.get_default_config()
  lines = ["Config fields (override with --config.FIELD=VALUE):"]
  for field, value in _flatten(config.to_dict()):
    comment = comments.get(field, "")
    lines.append(f"  --config.{field}={value!r}"
                 + (f"\n      {comment}" if comment else ""))
  return "\n".join(lines)


def _flatten(tree, prefix=""):
  for k, v in tree.items():
    if isinstance(v, dict) and v and k != "model_kwargs":
      yield from _flatten(v, f"{prefix}{k}.")
    else:
      yield prefix + k, v


def _field_comments():
  """{field: comment} read from the comments of default_config.py."""
  with open(default_config.__file__, encoding="utf-8") as f:
    source = f.read().splitlines()
  comments, pending = {}, []
  for line in source:
    stripped = line.strip()
    if stripped.startswith("#"):
      if not stripped.startswith("# ---"):
        pending.append(stripped.lstrip("# "))
      continue
    m = re.match(r"config\.([\w.]+)\s*=\s*(.*?)(?:\s+#\s*(.*))?$", stripped)
    if m:
      text = " ".join(pending + ([m.group(3)] if m.group(3) else []))
      if text:
        comments[m.group(1)] = text
    pending = []
  return comments


def _parse_flags(argv):
  """absl flag parsing with `--help` showing the config fields; usage
  errors and config mistakes are one line and exit status 2."""
  if any(a in ("--help", "-h", "--helpshort", "--helpfull", "-?")
         for a in argv[1:]):
    rest = [a for a in argv if a not in ("--help", "-h", "--helpshort",
                                         "--helpfull", "-?")]
    config = _help_config([a for a in rest if a.startswith("--config=")])
    print(__doc__)
    print(flags.FLAGS.module_help(sys.modules[__name__]))
    print(config_fields_help(config))
    sys.exit(0)
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(command_line.one_line(e), file=sys.stderr)
    print("(python -m etcjax.main --help lists the flags and config "
          "fields)", file=sys.stderr)
    sys.exit(command_line.USAGE_ERROR)


def _help_config(config_args):
  """The config named by --config=PATH[:VARIANT] for --help, or None."""
  if not config_args:
    return None
  path, _, arg = config_args[-1].split("=", 1)[1].partition(":")
  try:
    module = default_config.load_sibling(os.path.basename(path),
                                         os.path.abspath(path))
    return module.get_config(arg or None)
  except Exception:  # pylint: disable=broad-except
    return None  # No loadable config: --help shows the defaults.


def _config():
  """The loaded config; a wrong path or variant is a usage error."""
  try:
    config = _CONFIG.value
    config.name  # pylint: disable=pointless-statement
    return config
  except (OSError, ValueError, AttributeError, KeyError) as e:
    # config_flags loads lazily: a missing file or an unknown variant
    # surfaces here, wrapped in a message about its "earlier failure".
    message = str(e)
    cause = re.findall(r"\[Errno 2\][^\n]*|unknown config variant[^\n]*",
                       message)
    raise command_line.UsageError(
        f"--config={flags.FLAGS['config'].serialize().split('=', 1)[-1]}: "
        + (cause[-1] if cause else message.splitlines()[-1].strip())) from None


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.get_absl_handler().addFilter(_quiet_orbax)
  if _DISTRIBUTED.value or _COORDINATOR.value:
    jax.distributed.initialize(
        coordinator_address=_COORDINATOR.value,
        num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
  logging.info("JAX process %d/%d, %d local / %d global devices (%s); %s",
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count(),
               jax.default_backend(), host_memory.describe())
  status = command_line.run(_train, [])
  if status:
    sys.exit(status)


def _train(unused_argv) -> int:
  config = _config()
  _resolve_paths(config)
  workdir = command_line.resolve_path(_WORKDIR.value)
  _check_default_tfds(config)
  train.train_and_evaluate(config, workdir)
  if jax.process_index() == 0:
    _print_outputs(workdir)
  return 0


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
