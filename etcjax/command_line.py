"""What every command-line face shares: paths, flag aliases, user errors.

Only the faces (`main`, `encrypt`, `predict`, `evaluate`, `adapt`) import
this module; the library never does. The library raises specific exception
classes; this module knows which of them are the user's mistake (a wrong
path, flag, key, config or dataset) and turns those into one line on
stderr:

    error: <what was wrong, what was expected>

with exit status 1, and argparse / absl usage errors into exit status 2.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Callable, Optional, Sequence, Tuple, Type

USAGE_ERROR = 2
FAILURE = 1


def resolve_path(path: Optional[str]) -> Optional[str]:
  """An absolute local path (`~` expanded), or a URL (gs://...) unchanged.

  Paths are resolved once, at the command-line boundary: orbax refuses
  relative checkpoint paths, and a path recorded in a result must not
  depend on the folder the command ran in.

  Args:
    path: a path as the user typed it, '' or None.

  Returns:
    The absolute path (None / '' unchanged).
  """
  if not path or "://" in path:
    return path
  return os.path.abspath(os.path.expanduser(path))


def path_arg(text: str) -> str:
  """argparse `type=` for path flags and arguments (see `resolve_path`)."""
  return resolve_path(text)


def add_alias(parser: argparse.ArgumentParser, old: str, new: str,
              **unused_kwargs) -> None:
  """Makes `old` a second name of the flag `new` that warns when used.

  The alias is an option string of the same argparse action, so a required
  `new` is satisfied by `old` and both share type and default; `--help`
  lists it next to the new name.

  Args:
    parser: the (sub)parser that already defines `new`.
    old: e.g. '--key'.
    new: e.g. '--key_file'.
  """
  action = parser._option_string_actions[new]  # pylint: disable=protected-access
  base = type(action)

  class _WarnsOnOldName(base):  # pylint: disable=missing-class-docstring

    def __call__(self, parser, namespace, values, option_string=None):
      if option_string == old:
        print(f"warning: {old} is deprecated, use {new}", file=sys.stderr)
      super().__call__(parser, namespace, values, option_string)

  action.__class__ = _WarnsOnOldName
  action.option_strings.append(old)
  parser._option_string_actions[old] = action  # pylint: disable=protected-access


def user_errors() -> Tuple[Type[BaseException], ...]:
  """The exception classes that report a user's mistake, not a bug.

  Classes of modules the running face has not imported cannot have been
  raised, so they are looked up in `sys.modules` only: `predict` does not
  import TensorFlow to learn about a training error.
  """
  errors = [
      # The file system: a wrong or missing path, a folder that exists.
      FileNotFoundError, FileExistsError, IsADirectoryError,
      NotADirectoryError, PermissionError,
  ]
  for module_name, names in USER_ERRORS:
    module = sys.modules.get(module_name)
    if module is not None:
      errors += [getattr(module, n) for n in names if hasattr(module, n)]
  return tuple(errors)


# (module, exception class names) of the library's user-mistake errors.
USER_ERRORS = (
    ("etcjax.files", ("FolderLockedError",)),
    # ManifestError, DatasetMismatchError, IncompleteSplitError,
    # DamagedFileError, UnverifiableDatasetError are DatasetErrors.
    ("etcjax.data.encrypted_dataset", ("DatasetError",)),
    ("etcjax.encryption.keys", ("InvalidKeyError", "KeyMismatchError")),
    ("etcjax.encryption.schemes", ("UnknownSchemeError",
                                   "SchemeParameterError", "InvalidStepsError",
                                   "DuplicateImageIdsError")),
    ("etcjax.models.key_adaptation", ("AdaptationError",)),
    ("etcjax.models.checkpoint", ("CheckpointMismatchError",)),
    ("etcjax.data.errors", ("DataError",)),
    ("etcjax.training.default_config", ("ConfigError",)),
    ("etcjax.training.train", ("NonFiniteLossError",)),
    ("etcjax.training.checkpointing", ("WorkdirMismatchError",)),
    ("etcjax.inference.classifier", ("InputError",)),
    ("etcjax.inference.export", ("ExportError",)),
    ("etcjax.evaluation.requests", ("RequestError", "MissingExtraError")),
)


def one_line(error) -> str:
  """`error: MESSAGE` on one line.

  Args:
    error: an exception or a message. A message that embeds a traceback
      (absl and ml_collections wrap errors of config files so) is cut to
      the exception it ends with.

  Returns:
    The line.
  """
  message = str(error)
  if "Traceback (most recent call last)" in message:
    head = message.split("Traceback (most recent call last)")[0]
    head = head.rstrip(" :\n").rsplit(":", 1)[0] if head.strip() else ""
    raised = re.findall(r"^(?:[\w.]+\.)?(\w+(?:Error|Exception)): (.*)$",
                        message, flags=re.M)
    if raised:
      message = f"{head}: {raised[-1][1]}" if head else raised[-1][1]
  message = " ".join(message.split()) or type(error).__name__
  return f"error: {message}"


def run(main: Callable[[Optional[Sequence[str]]], int],
        argv: Optional[Sequence[str]] = None,
        extra_errors: Tuple[Type[BaseException], ...] = ()) -> int:
  """Runs an argparse face's `_main(argv)`; returns the exit status.

  Args:
    main: the face's body; returns 0 (or raises).
    argv: arguments (None: sys.argv[1:]).
    extra_errors: further exception classes the face knows to be user
      mistakes (e.g. its own argument checks).

  Returns:
    0, `FAILURE` for a user's mistake (one line on stderr), `USAGE_ERROR`
    for bad flags (argparse prints its usage line).
  """
  try:
    return main(argv) or 0
  except SystemExit as e:  # argparse: 2 on usage errors, 0 on --help
    return e.code if isinstance(e.code, int) else FAILURE
  except UsageError as e:
    print(one_line(e), file=sys.stderr)
    return USAGE_ERROR
  except user_errors() + tuple(extra_errors) as e:
    print(one_line(e), file=sys.stderr)
    return FAILURE


class UsageError(ValueError):
  """Flags that do not fit together (exit status 2)."""
