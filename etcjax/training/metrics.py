"""Training metrics: log lines, TensorBoard summaries and results.json.

Only process 0 writes; every process may call these (others are no-ops).
TensorBoard event files are written with `tf.summary.write` (no
`tensorboard` package needed to write them).
"""

from __future__ import annotations

import json
import math
import time
from typing import Any, Dict, Mapping, Optional

from absl import logging
from etils import epath
import jax

from etcjax import files

RESULTS_FILE = "results.json"


def write_json(path: epath.PathLike, obj: Any) -> None:
  """Writes a JSON file so that readers never see a partial one.

  Args:
    path: destination, a local path or a gs:// URL (GCS objects appear only
      once fully uploaded).
    obj: a JSON-serialisable value.
  """
  text = json.dumps(obj, indent=2, sort_keys=True) + "\n"
  path = epath.Path(path)
  if "://" in str(path):
    path.write_text(text)
  else:
    files.atomic_write(str(path), text.encode("utf-8"))


def format_duration(seconds: float) -> str:
  """Formats seconds as e.g. '1h02m', '3m05s' or '12s'."""
  if not math.isfinite(seconds):
    return "?"
  seconds = int(round(seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  if h:
    return f"{h}h{m:02d}m"
  if m:
    return f"{m}m{s:02d}s"
  return f"{s}s"


class Throughput:
  """Images per second and ETA, excluding the first (compiling) step."""

  def __init__(self, global_batch: int, total_steps: int):
    self._batch = global_batch
    self._total = total_steps
    self._start_step: Optional[int] = None
    self._start_time = 0.0
    self._last_step = 0
    self._last_time = 0.0

  def update(self, step: int) -> None:
    """Records that `step` steps are done (call after each step finishes)."""
    now = time.perf_counter()
    if self._start_step is None:
      self._start_step, self._start_time = step, now
    self._last_step, self._last_time = step, now

  @property
  def images_per_second(self) -> float:
    """Global training images per second since the first timed step (NaN before)."""
    steps = self._last_step - (self._start_step or 0)
    elapsed = self._last_time - self._start_time
    if self._start_step is None or steps <= 0 or elapsed <= 0:
      return float("nan")
    return steps * self._batch / elapsed

  @property
  def eta_seconds(self) -> float:
    """Seconds until `total_steps` at the measured speed (NaN before)."""
    return (self._total - self._last_step) * self._batch / self.images_per_second


class MetricWriter:
  """Writes log lines and TensorBoard scalars (process 0 only)."""

  def __init__(self, workdir: epath.PathLike, total_steps: int,
               steps_per_epoch: float):
    """Opens the TensorBoard writer in `workdir/tensorboard`.

    Args:
      workdir: the run's directory.
      total_steps: the run's length, for log lines.
      steps_per_epoch: training steps per pass over the training set.
    """
    self._total = total_steps
    self._steps_per_epoch = steps_per_epoch
    self._writer = None
    if jax.process_index() == 0:
      # TensorFlow imports slowly; only the writing process needs it.
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
      from tensorflow.core.framework import summary_pb2  # pylint: disable=g-import-not-at-top
      self._tf = tf
      self._scalar_metadata = summary_pb2.SummaryMetadata(
          plugin_data=summary_pb2.SummaryMetadata.PluginData(
              plugin_name="scalars"))
      self._writer = tf.summary.create_file_writer(
          str(epath.Path(workdir) / "tensorboard"))

  def _scalars(self, step: int, prefix: str, values: Mapping[str, float]):
    if self._writer is None:
      return
    # tf.summary.scalar needs the `tensorboard` package; tf.summary.write
    # with the scalars plugin's metadata writes the same event records.
    tf = self._tf
    with self._writer.as_default():
      for name, value in values.items():
        tf.summary.write(f"{prefix}/{name}", tf.constant(value, tf.float32),
                         step=step, metadata=self._scalar_metadata)
    self._writer.flush()

  def train(self, step: int, values: Mapping[str, float],
            throughput: Throughput) -> None:
    """Logs one line and writes train scalars.

    Args:
      step: steps done.
      values: averaged train metrics ('loss', 'accuracy', ...), floats.
      throughput: the run's throughput tracker.
    """
    ips = throughput.images_per_second
    values = dict(values, images_per_second=ips,
                  epoch=step / self._steps_per_epoch)
    if jax.process_index() == 0:
      logging.info(
          "step %d/%d  epoch %.2f  loss %.4f  accuracy %.4f  lr %.3g  "
          "%.1f images/s  ETA %s", step, self._total, values["epoch"],
          values["loss"], values["accuracy"], values.get("learning_rate", 0.0),
          ips, format_duration(throughput.eta_seconds))
    self._scalars(step, "train", {k: v for k, v in values.items()
                                  if math.isfinite(v)})

  def eval(self, step: int, values: Mapping[str, float]) -> None:
    """Logs one line and writes eval scalars ('accuracy', 'loss', 'count')."""
    if jax.process_index() == 0:
      logging.info("step %d/%d  eval accuracy %.4f  loss %.4f  (%d images)",
                   step, self._total, values["accuracy"], values["loss"],
                   int(values["count"]))
    self._scalars(step, "eval", values)

  def close(self) -> None:
    """Flushes and closes the TensorBoard writer."""
    if self._writer is not None:
      self._writer.close()


def write_results(workdir: epath.PathLike, results: Dict[str, Any]) -> None:
  """Writes `workdir/results.json` (process 0 only).

  Args:
    workdir: the run's directory.
    results: JSON-serialisable final results; must not hold secrets.
  """
  if jax.process_index() == 0:
    write_json(epath.Path(workdir) / RESULTS_FILE, results)
