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
import jax.numpy as jnp


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


def require(name: str, targets: tuple[tuple[str, str], ...], method: str,
            array, what: str, alternatives: str) -> None:
  """Checks that a 'native' method can run on `array`; raises if not.

  Args:
    name: the extension's module name.
    targets: its FFI targets, as for `register`.
    method: the user-facing method, e.g. "depthwise method 'native'".
    array: the kernel's input.
    what: the input's name in messages.
    alternatives: methods that run everywhere, for the messages.

  Raises:
    RuntimeError: the extension was not built.
    ValueError: the default backend is not the CPU, or the input is not
      float32.
  """
  if not register(name, targets):
    raise RuntimeError(
        f"{method} needs the compiled CPU kernel ({name}*.so next to "
        f"{__file__}), which was not built: install with a C++ compiler "
        f"(pip install -e .) or use {alternatives}")
  if jax.default_backend() != "cpu":
    raise ValueError(
        f"{method} runs on the CPU backend only, the default backend is "
        f"{jax.default_backend()!r}; use {alternatives}")
  if array.dtype != jnp.float32:
    raise ValueError(
        f"{method} computes in float32, got {what} of dtype {array.dtype}; "
        "use 'auto' (which picks an XLA formulation for it)")
