"""Which examples every host reads at every step: deterministic and resumable.

Training reads an endless stream of epochs; epoch e is a permutation of the
dataset derived from (seed, e). Global step s covers stream positions
[s * B, (s + 1) * B) (B = global batch size), so batches run across epoch
boundaries without dropping or repeating examples, and host p of P takes the
contiguous slice [s * B + p * B / P, s * B + (p + 1) * B / P). Any step's
examples are computed in O(1) from (seed, s): a run resumed at step s reads
exactly what an uninterrupted run reads there, whatever the number of hosts.

Evaluation reads the split once in its stored order, in global batches of
B; the last batch is padded (with example 0, masked out), and every host
slices each global batch the same way, so the hosts together see every
example exactly once.
"""

from __future__ import annotations

from typing import Iterator, Tuple

import numpy as np

from etcjax.data import errors


def _check_sharding(batch_size: int, process_index: int,
                    process_count: int, what: str) -> int:
  """Returns the per-host batch size, checking the arguments."""
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(
        f"process_index must be in [0, process_count), got process_index "
        f"{process_index} and process_count {process_count}")
  if batch_size < 1 or batch_size % process_count:
    raise errors.DataError(
        f"{what} {batch_size} must be a positive multiple of the number of "
        f"hosts (process_count {process_count}); it is the global batch size")
  return batch_size // process_count


def epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
  """The order of the examples in one training epoch.

  Args:
    seed: the run's data seed.
    epoch: epoch number, >= 0.
    num_examples: dataset size N.

  Returns:
    int64 `[N]`, a permutation of [0, N).
  """
  # Data order only, not key material: numpy's seeded generator is fine.
  return np.random.default_rng([seed, epoch]).permutation(num_examples)


class TrainOrder:
  """The examples of every training step for one host.

  Attributes:
    num_examples: dataset size N.
    batch_size: global batch size B.
    local_batch_size: B / process_count, examples per step on this host.
  """

  def __init__(self, num_examples: int, batch_size: int, seed: int,
               process_index: int = 0, process_count: int = 1):
    """Sets up the order.

    Args:
      num_examples: dataset size N (> 0).
      batch_size: global batch size B, a multiple of `process_count`.
      seed: data seed; equal seeds give equal orders.
      process_index: this host's index in [0, process_count).
      process_count: number of hosts.
    """
    if num_examples < 1:
      raise errors.DataError(
          f"cannot train on an empty dataset (num_examples {num_examples})")
    self.local_batch_size = _check_sharding(batch_size, process_index,
                                            process_count, "batch_size")
    self.num_examples = num_examples
    self.batch_size = batch_size
    self._seed = seed
    self._offset = process_index * self.local_batch_size
    self._permutations = {}

  def _permutation(self, epoch: int) -> np.ndarray:
    if epoch not in self._permutations:
      # A step touches at most a few consecutive epochs; keep only those.
      for old in [e for e in self._permutations if e < epoch - 1]:
        del self._permutations[old]
      self._permutations[epoch] = epoch_permutation(self._seed, epoch,
                                                    self.num_examples)
    return self._permutations[epoch]

  def step(self, step: int) -> Tuple[np.ndarray, np.ndarray]:
    """This host's examples of one global step.

    Args:
      step: global step, >= 0.

    Returns:
      `(indices, positions)`: int64 `[local_batch_size]` dataset indices in
      [0, N), and their int64 positions in the global example stream (unique
      over all steps and hosts; per-example augmentation is seeded by them).
    """
    if step < 0:
      raise ValueError(f"step must be >= 0, got {step}")
    positions = (step * self.batch_size + self._offset
                 + np.arange(self.local_batch_size, dtype=np.int64))
    epochs, offsets = np.divmod(positions, self.num_examples)
    indices = np.empty_like(positions)
    for epoch in np.unique(epochs):
      where = epochs == epoch
      indices[where] = self._permutation(int(epoch))[offsets[where]]
    return indices, positions


def num_eval_batches(num_examples: int, batch_size: int) -> int:
  """Number of global eval batches: ceil(N / B), the same on every host."""
  return -(-num_examples // batch_size)


def eval_batches(num_examples: int, batch_size: int, process_index: int = 0,
                 process_count: int = 1
                 ) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
  """This host's slices of the evaluation batches.

  Args:
    num_examples: split size N (> 0).
    batch_size: global eval batch size B, a multiple of `process_count`.
    process_index: this host's index in [0, process_count).
    process_count: number of hosts.

  Yields:
    `num_eval_batches(N, B)` pairs `(indices, mask)`: int64
    `[B / process_count]` example indices (0 for padding) and bool
    `[B / process_count]`, False on padding.
  """
  if num_examples < 1:
    raise errors.DataError(
        f"cannot evaluate on an empty split (num_examples {num_examples})")
  local = _check_sharding(batch_size, process_index, process_count,
                          "eval_batch_size")
  for batch in range(num_eval_batches(num_examples, batch_size)):
    positions = (batch * batch_size + process_index * local
                 + np.arange(local, dtype=np.int64))
    mask = positions < num_examples
    yield np.where(mask, positions, 0), mask
