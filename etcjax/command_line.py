"""What every command-line face shares: paths, flag aliases, user errors.

Only the faces (`main`, `encrypt`, `predict`, `evaluate`, `adapt`) import
this module; the library never does. The library raises specific exception
classes, and marks those that are the user's mistake (a wrong path, flag,
key, model, image shape, config or dataset; damaged data) with the mixin
`etcjax.errors.UserError`; this module turns those into one line on stderr:

    error: <what was wrong, what was expected>

with exit status 1, and usage errors (argparse / absl flag errors and
`UsageError`: flags that are malformed or do not fit together) into exit
status 2. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import sys
import tempfile
from typing import Callable, Optional, Sequence

from etcjax import errors

USAGE_ERROR = 2
FAILURE = 1


def _keep_keras_out_of_home() -> None:
  """Points Keras' and matplotlib's folders away from the user's home.

  TensorFlow imports Keras, and importing Keras creates ~/.keras (a
  keras.json of its defaults) unless KERAS_HOME is set; Keras in turn
  imports matplotlib, which writes a font cache to ~/.cache/matplotlib and
  creates ~/.config/matplotlib unless MPLCONFIGDIR is set. etcjax never
  reads Keras' config nor downloads through Keras, and a command must not
  write under the user's home unasked (tests/test_cli_errors.py checks it).
  A per-user folder of the temp dir is where both go when the home is not
  writable. A variable the user set wins, and so does a matplotlib config
  folder the user already has (its matplotlibrc styles our figures).
  """
  folder = os.path.join(tempfile.gettempdir(), f"etcjax-keras-{os.getuid()}")
  os.environ.setdefault("KERAS_HOME", folder)
  config_home = os.environ.get("XDG_CONFIG_HOME") or os.path.join(
      os.path.expanduser("~"), ".config")
  if not os.path.isdir(os.path.join(config_home, "matplotlib")):
    os.environ.setdefault("MPLCONFIGDIR", os.path.join(folder, "matplotlib"))


# At import: every face imports this module before any module that imports
# TensorFlow, and Keras and matplotlib read their variables once, when they
# are first imported.
_keep_keras_out_of_home()


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


# Failures of the file system that are the user's to fix (a wrong or
# missing path, a folder that exists, no permission, a full or read-only
# disk), not bugs; other OSErrors keep their traceback.
FILE_SYSTEM_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError,
                      NotADirectoryError, PermissionError)
FILE_SYSTEM_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def is_user_error(error: BaseException) -> bool:
  """Whether `error` reports a user's mistake (one line), not a bug.

  The library marks those with `etcjax.errors.UserError` (a mixin of its
  specific classes: InvalidKeyError, UnknownSchemeError, UnknownModelError,
  ImageShapeError, DatasetError, ConfigError, ...); a plain ValueError,
  KeyError or TypeError is a bug and keeps its traceback.
  """
  if isinstance(error, errors.UserError):
    return True
  if isinstance(error, FILE_SYSTEM_ERRORS):
    return True
  return isinstance(error, OSError) and error.errno in FILE_SYSTEM_ERRNOS


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
        argv: Optional[Sequence[str]] = None) -> int:
  """Runs a face's body `main(argv)`; returns the exit status.

  Args:
    main: the face's body; returns 0 (or raises).
    argv: arguments (None: sys.argv[1:]).

  Returns:
    0; `USAGE_ERROR` for flags that are malformed or do not fit together
    (argparse prints its usage line, `UsageError` one line); `FAILURE` for
    any other user's mistake (`is_user_error`: one line on stderr).
    Anything else propagates with its traceback: it is a bug.
  """
  try:
    return main(argv) or 0
  except SystemExit as e:  # argparse: 2 on usage errors, 0 on --help
    return e.code if isinstance(e.code, int) else FAILURE
  except UsageError as e:
    print(one_line(e), file=sys.stderr)
    return USAGE_ERROR
  except Exception as e:  # pylint: disable=broad-except
    if not is_user_error(e):
      raise
    print(one_line(e), file=sys.stderr)
    return FAILURE


class UsageError(errors.UserError, ValueError):
  """Flags that do not fit together (exit status 2)."""
