"""Loading the compiled XLA:CPU kernels of etcjax.models (C++ extensions).

`setup.py` builds `_depthwise_cpu`, `_attention_cpu` and `_layer_norm_cpu`
next to this file against jaxlib's FFI headers. They are optional: without a
C++ compiler the install succeeds, `register` returns False and the models
use XLA formulations of the same functions. `split_over_batch` lets XLA's
SPMD partitioner run each kernel on every device's part of the batch.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.machinery
import os
from typing import Any, Callable, Optional, Sequence

import jax
from jax import custom_batching
from jax.experimental.custom_partitioning import custom_partitioning
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec


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


def usable(name: str, targets: tuple[tuple[str, str], ...], dtype) -> bool:
  """Whether the library's kernels run here for `dtype`: float32 on the CPU
  backend, library built. The non-raising twin of `require`, for 'auto'."""
  return (jnp.dtype(dtype) == jnp.float32 and jax.default_backend() == "cpu"
          and register(name, targets))


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


# How a kernel's operand or result relates to the batch (leading) dimension.
BATCH = "batch"  # split along dimension 0 like the batch
WHOLE = "whole"  # not batched (weights): every device holds all of it
SUM = "sum"  # result: a sum over the batch (weight gradients)


def split_over_batch(kernel: Callable[..., Any], operands: Sequence[str],
                     results: Sequence[str], sharding_rule: str):
  """`kernel`, made splittable by XLA's SPMD partitioner over the batch.

  An `ffi_call` is opaque to the partitioner: under `jax.jit` with inputs
  sharded over several devices it gathers the whole batch onto every
  device and runs the kernel there (the same values, each device doing all
  the work). The kernels are independent per batch element, so each device
  can run them on its own part of the batch instead; SUM results then add
  the devices' partial sums (`psum`). With one device the kernel is
  called as it is.

  Args:
    kernel: a function of arrays (static arguments bound) returning one
      array or a tuple, each with dimension 0 the batch where BATCH.
    operands: BATCH or WHOLE per operand.
    results: BATCH, WHOLE or SUM per result.
    sharding_rule: the kernel's Shardy rule (einsum-like, e.g.
      'n l c -> n l d'), the batch factor first where BATCH.

  Returns:
    A function with `kernel`'s signature and values.
  """

  def partition(mesh, arg_shapes, result_shapes):
    # A NamedSharding: jit's inputs carry them (the mesh is theirs), and
    # with a single device this is never called.
    sharding = next(a.sharding for a, kind in zip(arg_shapes, operands)
                    if kind == BATCH)
    # The batch's mesh axes, as the partitioner proposes them; its other
    # dimensions are gathered.
    batch = sharding.spec[0] if sharding.spec else None
    axes = () if batch is None else (
        batch if isinstance(batch, tuple) else (batch,))

    def spec(kind, ndim):
      lead = batch if kind == BATCH else None
      return NamedSharding(mesh, PartitionSpec(lead, *[None] * (ndim - 1)))

    results_flat = jax.tree.leaves(result_shapes)
    arg_shardings = tuple(spec(kind, len(a.shape))
                          for a, kind in zip(arg_shapes, operands))
    out_shardings = jax.tree.unflatten(
        jax.tree.structure(result_shapes),
        [spec(kind, len(r.shape)) for r, kind in zip(results_flat, results)])

    def lower(*args):
      outs = kernel(*args)
      if not axes or SUM not in results:
        return outs
      flat, tree = jax.tree.flatten(outs)
      flat = [jax.lax.psum(x, axes) if kind == SUM else x
              for x, kind in zip(flat, results)]
      return jax.tree.unflatten(tree, flat)

    return mesh, lower, out_shardings, arg_shardings

  # custom_partitioning binds arguments by the function's signature, which
  # a functools.partial's bound keywords confuse: positional only.
  split = custom_partitioning(lambda *args: kernel(*args))
  split.def_partition(partition=partition, sharding_rule=sharding_rule)

  # custom_partitioning has no batching rule; under vmap the kernel runs
  # once per vmapped element (so the kernels' ffi_calls are never vmapped
  # and declare no vmap_method).
  @custom_batching.custom_vmap
  def call(*args):
    return split(*args)

  @call.def_vmap
  def _vmap(axis_size, in_batched, *args):
    del axis_size

    def one(batched_args):
      it = iter(batched_args)
      return call(*[next(it) if b else a for a, b in zip(args, in_batched)])

    outs = jax.lax.map(one, [a for a, b in zip(args, in_batched) if b])
    return outs, jax.tree.map(lambda _: True, outs)

  return call
