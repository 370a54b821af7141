"""Crash-safe files and folder locks, shared by every layer but the cipher.

- `atomic_write`: a file either exists complete or not at all (temporary
  file + rename), so a killed job never leaves a half-written file that
  looks finished.
- `locked_folder`: an exclusive flock on a hidden file in a folder, so two
  jobs writing one folder (an encrypted dataset, a training workdir) refuse
  each other instead of interleaving their files.

This module imports nothing of etcjax (`etcjax.encryption` keeps its own key
file writer: the cipher imports nothing of etcjax).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import sys
import tempfile
from typing import Iterator

from etcjax import errors

LOCK_FILE = ".etcjax.lock"


class FolderLockedError(errors.UserError, RuntimeError):
  """Another process holds the lock of a folder this process must write."""


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
  """Writes `data` to `path` via a temporary file and a rename.

  A crash leaves either no file at `path` or the complete one (at worst a
  stray `.<name>.*.tmp` file in the same folder, which readers ignore).

  Args:
    path: destination; its folder must exist.
    data: the file's content.
  """
  folder, name = os.path.split(os.fspath(path))
  fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder or ".")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    # mkstemp creates 0600 files; data files get the usual umask'ed mode.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


@contextlib.contextmanager
def locked_folder(folder: str | os.PathLike, owner: str,
                  advice: str) -> Iterator[None]:
  """Holds an exclusive lock on `folder` (created if needed) while in use.

  The lock is an flock on the hidden file `folder/.etcjax.lock`, which
  records the holder's pid and host: the kernel drops the lock when the
  process dies, so a killed job never leaves a stale lock behind. The file
  is removed (while still locked) when the job ends; a job that opened it
  just before then sees that its inode is gone and opens the new one.

  Args:
    folder: the folder to lock.
    owner: what holds such locks, for the message, e.g. "etcjax.encrypt
      run".
    advice: what the user can do when the folder is locked, e.g. "wait for
      it to finish or choose another --out".

  Raises:
    FileExistsError: `folder` exists and is not a folder.
    FolderLockedError: another process holds the lock; the message names
      it ("another <owner> (pid N on HOST) is writing to <folder>; <advice>").
  """
  folder = os.fspath(folder)
  if os.path.exists(folder) and not os.path.isdir(folder):
    raise FileExistsError(f"{folder} exists and is not a folder")
  os.makedirs(folder, exist_ok=True)
  path = os.path.join(folder, LOCK_FILE)
  while True:
    f = open(path, "a+")
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      f.seek(0)
      holder = f.read().strip() or "another process"
      f.close()
      raise FolderLockedError(
          f"another {owner} ({holder}) is writing to {folder}; {advice}"
      ) from None
    except OSError as e:
      # Some network and FUSE file systems have no flock; lose only the
      # protection, not the job.
      print(f"warning: cannot lock {path} ({e}); concurrent jobs writing "
            f"{folder} will not be detected", file=sys.stderr)
    try:
      current = os.stat(path).st_ino
    except FileNotFoundError:
      current = None
    if current == os.fstat(f.fileno()).st_ino:
      break
    f.close()  # locked a file its holder had already removed: retry
  try:
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()}")
    f.flush()
    yield
  finally:
    os.remove(path)
    f.close()  # releases the flock
