r"""Does the input pipeline keep up with the train step? (issue 4 target: 3x)

Measures, on this host, for CIFAR-10 train with on-the-fly EtC (the
ConvMixer recipe: random crop with padding + flip in the pipeline; EtC,
mixup and CutMix on the device inside the jitted step):

1. pipeline: images/s that `pipeline.train_iterator` delivers alone
   (plain uint8 batches after crop and flip; no model running);
2. step: images/s of a jitted ConvMixer train step on a fixed batch
   (`encryption.apply` + mixup/CutMix + forward + backward + SGD update):
   the paper's ConvMixer-256/8 by default, or the `:cpu` configs' model with
   `--model_kwargs=dim=128,depth=6,patch_size=4,kernel_size=5`;
3. both together: the pipeline feeding the step, with every step's time
   split into waiting for data (`next(iterator)`) and compute (step until
   its result is ready).

Prints images/s, the ratio pipeline / step (target >= 3) and the split. A
measurement tool, not a test: it asserts nothing.

    python benchmarks/input_pipeline.py --tfds_data_dir=DIR [--steps 300]
        [--step_steps 5] [--randaugment n2-m9] [--random_erasing 0.25]
        [--model_kwargs dim=128,depth=6,patch_size=4,kernel_size=5]
        [--pipeline_only]

The tfds data_dir defaults to tfds' own default ($TFDS_DATA_DIR or
~/tensorflow_datasets); nothing is downloaded.
"""

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from etcjax import encryption
from etcjax import models
from etcjax.data import mixing
from etcjax.data import pipeline
from etcjax.training import default_config

TARGET_RATIO = 3.0
MODEL = "ConvMixer-256/8"


def make_config(args):
  """The CIFAR-10 / EtC / ConvMixer data config of the benchmark."""
  config = default_config.get_default_config()
  config.dataset = "cifar10"
  config.data_dir = args.tfds_data_dir
  config.train_split = args.split
  config.image_size = 32
  config.batch_size = args.batch_size
  config.seed = 0
  config.encryption.scheme = "etc"
  config.augment.crop = "random_crop_pad"
  config.augment.flip = True
  config.augment.randaugment = args.randaugment
  config.augment.random_erasing = args.random_erasing
  config.augment.mixup_alpha = 0.8
  config.augment.cutmix_alpha = 1.0
  return config


def time_pipeline(config, steps: int, warmup: int):
  """Images/s of the pipeline alone, after `warmup` batches."""
  it = pipeline.train_iterator(config)
  for _ in range(warmup):
    next(it)
  start = time.perf_counter()
  for _ in range(steps):
    batch = next(it)
  elapsed = time.perf_counter() - start
  assert batch["image"].shape == (config.batch_size, 32, 32, 3)
  return steps * config.batch_size / elapsed


def parse_kwargs(text: str):
  """'dim=128,depth=6' -> {'dim': 128, 'depth': 6} (integer values)."""
  kwargs = {}
  for item in filter(None, text.split(",")):
    name, sep, value = item.partition("=")
    if not sep or not value.isdigit():
      raise SystemExit(f"--model_kwargs: expected name=integer items separated "
                       f"by commas, got {item!r}")
    kwargs[name] = int(value)
  return kwargs


def make_train_step(module, config, num_classes: int):
  """Jitted step: encrypt, mix, forward, backward, SGD update."""
  optimizer = optax.sgd(0.01, momentum=0.9)
  aug = config.augment

  def loss_fn(params, other, images, targets, rng):
    variables = dict(other, params=params)
    if other:  # e.g. BatchNorm statistics
      logits, other = module.apply(variables, images, train=True,
                                   mutable=list(other), rngs={"dropout": rng})
    else:
      logits = module.apply(variables, images, train=True,
                            rngs={"dropout": rng})
    loss = optax.softmax_cross_entropy(logits, targets).mean()
    return loss, other

  @jax.jit
  def step(variables, opt_state, plan, batch, rng):
    images = encryption.apply(plan, batch["image"]).astype(jnp.float32)
    targets = mixing.onehot(batch["label"], num_classes, aug.label_smoothing)
    images, targets = mixing.mix(rng, images, targets, aug.mixup_alpha,
                                 aug.cutmix_alpha, aug.mix_prob,
                                 aug.switch_prob)
    images = images / 127.5 - 1.0
    params = variables["params"]
    other = {k: v for k, v in variables.items() if k != "params"}
    (loss, other), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, other, images, targets, jax.random.fold_in(rng, 1))
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return dict(other, params=params), opt_state, loss

  return step, optimizer


def _say(message: str) -> None:
  print(message, flush=True)  # progress shows also when output is piped


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--tfds_data_dir", default=None,
                      help="tfds data_dir holding cifar10 (default: tfds')")
  parser.add_argument("--split", default="train")
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--steps", type=int, default=300,
                      help="batches timed for the pipeline alone")
  parser.add_argument("--step_steps", type=int, default=5,
                      help="train steps timed (alone, and fed by the pipeline);"
                      " ConvMixer-256/8 (patch 1) takes seconds per step on CPU")
  parser.add_argument("--warmup", type=int, default=20)
  parser.add_argument("--pipeline_only", action="store_true",
                      help="measure the pipeline alone, not the train step")
  parser.add_argument("--randaugment", default="",
                      help="add RandAugment to the pipeline, e.g. n2-m9")
  parser.add_argument("--random_erasing", type=float, default=0.0)
  parser.add_argument("--model_kwargs", default="",
                      help="ConvMixer-256/8 overrides, e.g. the cpu configs' "
                      "dim=128,depth=6,patch_size=4,kernel_size=5")
  args = parser.parse_args()
  model_kwargs = parse_kwargs(args.model_kwargs)
  model_name = models.describe(MODEL, model_kwargs)

  config = make_config(args)
  _say(f"host: {os.cpu_count()} CPUs, jax {jax.__version__} on "
        f"{jax.devices()[0].platform}; CIFAR-10 {args.split}, global batch "
        f"{args.batch_size}, augment crop+flip"
        f"{' + randaugment ' + args.randaugment if args.randaugment else ''}"
        f"{f' + random erasing {args.random_erasing}' if args.random_erasing else ''}"
        "; EtC (B=16), mixup/CutMix on device")
  start = time.perf_counter()
  info = pipeline.dataset_info(config)
  # The first iterator loads the split into memory (cached afterwards).
  next(pipeline.train_iterator(config))
  _say(f"load: {info.num_train} images in {time.perf_counter() - start:.1f} s "
        "(once per process)")
  assert pipeline.device_encrypts(config)

  pipe_rate = time_pipeline(config, args.steps, args.warmup)
  _say(f"pipeline alone: {pipe_rate:9.0f} images/s "
        f"({args.steps} batches of {args.batch_size})")

  if args.pipeline_only:
    _say("train step: not measured (--pipeline_only)")
    return
  module = models.build(MODEL, info.num_classes, **model_kwargs)
  variables = models.init_variables(module, 32, jax.random.key(0))
  plan = encryption.make_plan(encryption.generate_key(), "etc", (32, 32, 3))
  step, optimizer = make_train_step(module, config, info.num_classes)
  opt_state = optimizer.init(variables["params"])
  it = pipeline.train_iterator(config)
  fixed = next(it)
  rng = jax.random.key(1)
  start = time.perf_counter()
  variables, opt_state, loss = step(variables, opt_state, plan, fixed, rng)
  jax.block_until_ready(loss)
  _say(f"train step ({model_name}): compiled in {time.perf_counter() - start:.1f} s")
  variables, opt_state, loss = step(variables, opt_state, plan, fixed, rng)
  jax.block_until_ready(loss)
  start = time.perf_counter()
  for i in range(args.step_steps):
    variables, opt_state, loss = step(variables, opt_state, plan, fixed,
                                      jax.random.fold_in(rng, i))
    jax.block_until_ready(loss)
  step_rate = args.step_steps * args.batch_size / (time.perf_counter() - start)
  _say(f"train step alone ({model_name}, fixed batch): {step_rate:9.1f} images/s")
  ratio = pipe_rate / step_rate
  _say(f"ratio pipeline / step: {ratio:.1f}x (target >= {TARGET_RATIO:g}x: "
        f"{'met' if ratio >= TARGET_RATIO else 'NOT met'})")

  waits, computes = [], []
  for i in range(args.step_steps):
    t0 = time.perf_counter()
    batch = next(it)
    t1 = time.perf_counter()
    variables, opt_state, loss = step(variables, opt_state, plan, batch,
                                      jax.random.fold_in(rng, i))
    jax.block_until_ready(loss)
    t2 = time.perf_counter()
    waits.append(t1 - t0)
    computes.append(t2 - t1)
  wait, compute = np.mean(waits) * 1e3, np.mean(computes) * 1e3
  _say(f"pipeline feeding the step: {args.batch_size / (wait + compute) * 1e3:.1f}"
        f" images/s; per step {wait:.1f} ms data wait + {compute:.1f} ms "
        f"compute ({100 * wait / (wait + compute):.1f}% waiting for data)")


if __name__ == "__main__":
  main()
