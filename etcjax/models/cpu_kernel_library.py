"""Loading the compiled XLA:CPU kernels of etcjax.models (C++ extensions).

`setup.py` builds `_depthwise_cpu`, `_attention_cpu` and `_layer_norm_cpu`
next to this file against jaxlib's FFI headers. They are optional: without a
C++ compiler the install succeeds, `register` returns False and the models
use XLA formulations of the same functions.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.machinery
import os
from typing import Optional

import jax


def library_path(name: str) -> Optional[str]:
  """The built extension `name` (e.g. '_attention_cpu') beside this file."""
  folder = os.path.dirname(os.path.abspath(__file__))
  for suffix in importlib.machinery.EXTENSION_SUFFIXES:
    path = os.path.join(folder, name + suffix)
    if os.path.isfile(path):
      return path
  return None


@functools.lru_cache(maxsize=None)
def register(name: str, targets: tuple[tuple[str, str], ...]) -> bool:
  """Loads library `name` and registers its FFI handlers, once.

  Args:
    name: the extension's module name, e.g. '_attention_cpu'.
    targets: `(ffi_target_name, exported_symbol)` pairs.

  Returns:
    Whether the library was built and its targets are registered for the
    CPU platform.
  """
  path = library_path(name)
  if path is None:
    return False
  library = ctypes.cdll.LoadLibrary(path)
  for target, symbol in targets:
    jax.ffi.register_ffi_target(
        target, jax.ffi.pycapsule(getattr(library, symbol)), platform="cpu")
  return True
