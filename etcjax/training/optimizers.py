"""Learning-rate schedules and optimizers of the paper's experiments."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax

from etcjax.training import default_config

SCHEDULES = ("warmup_cosine", "one_cycle", "constant")
OPTIMIZERS = ("sgd", "adamw")


def one_cycle_schedule(peak_value: float, total_steps: int) -> optax.Schedule:
  """The triangular schedule of the ConvMixer authors' CIFAR-10 script.

  Piecewise linear through (0, 0), (2/5 T, peak), (4/5 T, peak / 20),
  (T, 0): a linear ramp up, a long linear decay, then an annealing tail.

  Args:
    peak_value: the largest learning rate, reached at 2/5 of the run.
    total_steps: T, the run's length in steps (>= 1).

  Returns:
    A schedule mapping an int step to a float32 scalar learning rate.
  """
  xs = jnp.array([0.0, 0.4, 0.8, 1.0]) * total_steps
  ys = jnp.array([0.0, 1.0, 1.0 / 20.0, 0.0]) * peak_value
  return lambda step: jnp.interp(jnp.asarray(step, jnp.float32), xs, ys)


def make_schedule(config: ml_collections.ConfigDict,
                  total_steps: int) -> optax.Schedule:
  """Builds the learning-rate schedule of `config.optim`.

  Args:
    config: the training config (reads `optim.schedule`,
      `optim.learning_rate`, `optim.warmup_steps`).
    total_steps: the run's length in steps (>= 1).

  Returns:
    A schedule: int step -> float learning rate in [0, learning_rate].

  Raises:
    ValueError: unknown schedule or inconsistent lengths.
  """
  optim = config.optim
  if total_steps < 1:
    raise default_config.ConfigError(f"total_steps must be >= 1, got {total_steps}")
  if optim.schedule == "warmup_cosine":
    if not 0 <= optim.warmup_steps < total_steps:
      raise default_config.ConfigError(
          f"optim.warmup_steps must be in [0, total_steps={total_steps}), got "
          f"{optim.warmup_steps}")
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=optim.learning_rate,
        warmup_steps=optim.warmup_steps, decay_steps=total_steps,
        end_value=0.0)
  if optim.schedule == "one_cycle":
    return one_cycle_schedule(optim.learning_rate, total_steps)
  if optim.schedule == "constant":
    return optax.constant_schedule(optim.learning_rate)
  raise default_config.ConfigError(
      f"unknown optim.schedule {optim.schedule!r}; expected one of {SCHEDULES}")


def _kernels_only(params):
  # Decaying biases and normalisation scales (vectors) only hurts; decay
  # the matrices and convolution kernels.
  return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(config: ml_collections.ConfigDict, total_steps: int
                   ) -> optax.GradientTransformation:
  """Builds the optimizer of `config.optim` with its schedule and clipping.

  Args:
    config: the training config (reads `optim.*`).
    total_steps: the run's length in steps.

  Returns:
    An optax transformation over the model's float32 params. With
    `optim.grad_clip_norm` > 0 gradients are first clipped to that global
    norm.

  Raises:
    ValueError: unknown optimizer or schedule, or negative hyperparameters.
  """
  optim = config.optim
  schedule = make_schedule(config, total_steps)
  if optim.learning_rate <= 0:
    raise default_config.ConfigError(f"optim.learning_rate must be > 0, got {optim.learning_rate}")
  if optim.grad_clip_norm < 0:
    raise default_config.ConfigError(
        f"optim.grad_clip_norm must be >= 0 (0 = off), got {optim.grad_clip_norm}")
  if optim.weight_decay < 0:
    raise default_config.ConfigError(f"optim.weight_decay must be >= 0, got {optim.weight_decay}")
  if optim.name == "sgd":
    tx = optax.sgd(schedule, momentum=optim.momentum or None)
    if optim.weight_decay:
      # L2 regularisation folded into the gradient, as in torch.optim.SGD.
      tx = optax.chain(
          optax.add_decayed_weights(optim.weight_decay, mask=_kernels_only), tx)
  elif optim.name == "adamw":
    tx = optax.adamw(schedule, b1=optim.b1, b2=optim.b2,
                     weight_decay=optim.weight_decay, mask=_kernels_only)
  else:
    raise default_config.ConfigError(
        f"unknown optim.name {optim.name!r}; expected one of {OPTIMIZERS}")
  if optim.grad_clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(optim.grad_clip_norm), tx)
  return tx
