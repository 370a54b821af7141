r"""Measures training speed of a config: the jitted step alone, and the input
pipeline alone, in images per second on this machine.

    python benchmarks/train_step.py --config=configs/convmixer_cifar10_etc.py:cpu \
        [--config.data_dir=...] [--steps=20] [--pipeline_steps=50]

Used to size the `cpu` variants (a run must fit in ~30 minutes on 2 cores):
the run's speed is at most the smaller of the two numbers.
"""

import functools
import time

from absl import app
from absl import flags
import jax
import numpy as np
from ml_collections import config_flags

from etcjax.data import pipeline
from etcjax.training import optimizers
from etcjax.data import sharding
from etcjax.training import steps
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
  tx = optimizers.make_optimizer(config, 1000)
  module, init = train._init_model(config, info.num_classes, enc.input_shape,  # pylint: disable=protected-access
                                   mesh, tx)
  state = init(jax.random.key(0))
  aug = config.augment
  options = steps.StepOptions(
      num_classes=info.num_classes, encrypt=enc.on_device,
      label_smoothing=aug.label_smoothing, mixup_alpha=aug.mixup_alpha,
      cutmix_alpha=aug.cutmix_alpha,
      compute_dtype=steps.resolve_compute_dtype(config.compute_dtype))
  step_fn = jax.jit(functools.partial(
      steps.train_step, rng=jax.random.key(0), model=module, tx=tx,
      schedule=optimizers.make_schedule(config, 1000), options=options),
                    donate_argnums=0)
  plan = sharding.replicate(enc.plan, mesh) if enc.on_device else None
  rng = np.random.default_rng(0)
  batch = sharding.global_batch({
      "image": rng.integers(0, 256, (config.batch_size,) + tuple(info.image_shape),
                            dtype=np.uint8),
      "label": rng.integers(0, info.num_classes, config.batch_size,
                            dtype=np.int32)}, mesh)
  start = time.perf_counter()
  state, metrics = step_fn(state, batch, plan=plan)
  jax.block_until_ready(metrics)
  print(f"compile + first step: {time.perf_counter() - start:.1f} s")
  start = time.perf_counter()
  for _ in range(_STEPS.value):
    state, metrics = step_fn(state, batch, plan=plan)
  jax.block_until_ready(metrics)
  elapsed = time.perf_counter() - start
  step_ips = _STEPS.value * config.batch_size / elapsed
  print(f"train step: {elapsed / _STEPS.value * 1000:.0f} ms/step, "
        f"{step_ips:.0f} images/s")
  if _PIPELINE_STEPS.value:
    it = pipeline.train_iterator(config, plan=None if enc.on_device else enc.plan)
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
