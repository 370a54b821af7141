"""Transparent huge pages for XLA:CPU's per-step buffer (glibc's malloc).

XLA:CPU allocates one temporary buffer per execution for a step's
intermediate arrays and frees it when the step ends: about 600 MB for a
ConvMixer-256/8 (P=2, batch 64) training step, 760 MB for ViT-Ti/16 at
batch 16, 2.4 GB for ConvMixer-256/8 at P=1. glibc's malloc serves it from
the arena of the XLA worker thread that runs the step, and a secondary
arena maps a fresh region for any request larger than its 64 MB heaps,
whatever `M_MMAP_THRESHOLD` / `M_MMAP_MAX` say, and unmaps it on free. So
every step faults the whole buffer in again, 4 KiB at a time: measured on
a 2-vCPU EPYC, 148,000 page faults and 260 ms of kernel time in a 650 ms
ConvMixer step, 590,000 faults in a P=1 step.

With glibc's tunable `glibc.malloc.hugetlb=1` (glibc 2.35+), malloc advises
the kernel to back its mappings with transparent huge pages
(`madvise(MADV_HUGEPAGE)`), which the kernel then faults in 2 MiB at a
time: 740 faults per ConvMixer step, 1.1-1.5x faster training steps (ViT-Ti,
ConvMixer P=1 and P=2; see the README's 'CPU speed'). It only helps where the
kernel's THP mode is 'madvise' ('always' already does this; 'never' cannot).

glibc reads tunables when a process starts, so the command-line faces that
train restart themselves with it, first thing (`restart_with_huge_pages`):
same process id, arguments and environment plus `GLIBC_TUNABLES`. A
`GLIBC_TUNABLES` that already names `glibc.malloc.hugetlb` is the user's
choice and is kept; `ETCJAX_HUGE_PAGES=0` turns the restart off.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Mapping, Optional

TUNABLE = "glibc.malloc.hugetlb=1"
OPT_OUT = "ETCJAX_HUGE_PAGES"
_THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"


def glibc_version() -> Optional[tuple[int, int]]:
  """(major, minor) of the C library when it is glibc, else None."""
  try:
    text = os.confstr("CS_GNU_LIBC_VERSION") or ""
  except (ValueError, OSError, AttributeError):
    return None
  match = re.fullmatch(r"glibc (\d+)\.(\d+).*", text)
  return (int(match.group(1)), int(match.group(2))) if match else None


def thp_mode(path: str = _THP_MODE_FILE) -> Optional[str]:
  """The kernel's transparent huge page mode ('always', 'madvise', 'never'),
  or None where there is none (not Linux, no THP)."""
  try:
    with open(path, encoding="ascii") as f:
      match = re.search(r"\[(\w+)\]", f.read())
  except OSError:
    return None
  return match.group(1) if match else None


def _why_not(env: Mapping[str, str], glibc: Optional[tuple[int, int]],
             mode: Optional[str]) -> Optional[str]:
  """Why the tunable is not to be added to `env`, or None if it is."""
  if "glibc.malloc.hugetlb" in env.get("GLIBC_TUNABLES", ""):
    return "GLIBC_TUNABLES already sets glibc.malloc.hugetlb"
  if env.get(OPT_OUT, "1") == "0":
    return f"{OPT_OUT}=0"
  if glibc is None or glibc < (2, 35):
    return f"C library {glibc or 'not glibc'}"
  if mode != "madvise":
    return f"kernel THP mode {mode}"
  return None


def environment(env: Mapping[str, str],
                glibc: Optional[tuple[int, int]] = None,
                mode: Optional[str] = None) -> Optional[dict[str, str]]:
  """`env` with the huge-page tunable added, or None when it would not help.

  Args:
    env: a process environment (e.g. `os.environ`).
    glibc: the glibc version; default: this process's (`glibc_version()`).
    mode: the THP mode; default: this machine's (`thp_mode()`).

  Returns:
    A new environment whose `GLIBC_TUNABLES` also holds
    `glibc.malloc.hugetlb=1`; None when `env` opts out
    (`ETCJAX_HUGE_PAGES=0`), already sets `glibc.malloc.hugetlb`, or the
    C library / kernel cannot use it (not glibc 2.35+, THP mode not
    'madvise').
  """
  glibc = glibc_version() if glibc is None else glibc
  mode = thp_mode() if mode is None else mode
  if _why_not(env, glibc, mode) is not None:
    return None
  tunables = env.get("GLIBC_TUNABLES", "")
  return dict(env, GLIBC_TUNABLES=":".join(filter(None, (tunables, TUNABLE))))


def describe(env: Mapping[str, str] = os.environ) -> str:
  """One line for the logs: whether malloc asks for huge pages, and why."""
  tunables = env.get("GLIBC_TUNABLES", "")
  if "glibc.malloc.hugetlb" in tunables:
    return f"malloc huge pages: GLIBC_TUNABLES={tunables}"
  reason = _why_not(env, glibc_version(), thp_mode())
  return ("malloc huge pages: off "
          f"({reason or 'not restarted with the tunable'})")


def restart_with_huge_pages() -> None:
  """Re-executes this Python process with the tunable, when it helps.

  Call it first thing in a command-line face, before JAX, TensorFlow or
  any thread starts: `os.execve` replaces the process (same pid, same
  arguments, interpreter options included) and does not return. Returns
  without doing anything when `environment(os.environ)` is None (which is
  also the case in the restarted process).
  """
  env = environment(os.environ)
  if env is None or not sys.executable:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  try:
    os.execve(sys.executable, list(sys.orig_argv), env)
  except OSError:
    pass  # Runs on without; the main job's log says huge pages are off.
