r"""Measures training speed of a config: the jitted step alone, and the input
pipeline alone, in images per second on this machine.

    python benchmarks/train_step.py --config=configs/convmixer_cifar10_etc.py:cpu \
        [--config.data_dir=...] [--steps=20] [--pipeline_steps=50]

Used to size the `cpu` variants (a run must fit in ~30 minutes on 2 cores):
the run's speed is at most the smaller of the two numbers.
"""

import time

from absl import app
from absl import flags
import jax
import numpy as np
from ml_collections import config_flags

from etcjax.data import pipeline
from etcjax.data import sharding
from etcjax.training import train

_CONFIG = config_flags.DEFINE_config_file("config", None, "config file")
_STEPS = flags.DEFINE_integer("steps", 20, "timed train steps")
_PIPELINE_STEPS = flags.DEFINE_integer("pipeline_steps", 50,
                                       "timed pipeline batches (0 = skip)")
flags.mark_flag_as_required("config")


def main(argv):
  del argv
  config = _CONFIG.value
  info = pipeline.dataset_info(config)
  enc = train.setup_encryption(config, info)
  mesh = sharding.make_mesh()
  # The steps exactly as training builds them (options, shardings,
  # donation), with a 1000-step schedule.
  fns = train.step_functions(config, info, enc, mesh, 1000,
                             jax.random.key(0))
  state = fns.init(jax.random.key(0))
  plan = fns.device_plan
  rng = np.random.default_rng(0)
  batch = sharding.global_batch({
      "image": rng.integers(0, 256, (config.batch_size,) + tuple(info.image_shape),
                            dtype=np.uint8),
      "label": rng.integers(0, info.num_classes, config.batch_size,
                            dtype=np.int32)}, mesh)
  start = time.perf_counter()
  state, metrics = fns.train(state, batch, plan=plan)
  jax.block_until_ready(metrics)
  print(f"compile + first step: {time.perf_counter() - start:.1f} s")
  start = time.perf_counter()
  for _ in range(_STEPS.value):
    state, metrics = fns.train(state, batch, plan=plan)
  jax.block_until_ready(metrics)
  elapsed = time.perf_counter() - start
  step_ips = _STEPS.value * config.batch_size / elapsed
  print(f"train step: {elapsed / _STEPS.value * 1000:.0f} ms/step, "
        f"{step_ips:.0f} images/s")
  if _PIPELINE_STEPS.value:
    it = pipeline.train_iterator(config, plan=fns.host_plan)
    next(it)
    start = time.perf_counter()
    for _ in range(_PIPELINE_STEPS.value):
      next(it)
    elapsed = time.perf_counter() - start
    print(f"pipeline: {_PIPELINE_STEPS.value * config.batch_size / elapsed:.0f} "
          "images/s")
  epoch_s = info.num_train / step_ips
  print(f"one epoch of {info.num_train} images: >= {epoch_s / 60:.1f} min "
        f"(train step alone)")


if __name__ == "__main__":
  app.run(main)
