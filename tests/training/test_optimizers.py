"""Schedules and optimizers of the paper's recipes."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from etcjax.training import default_config
from etcjax.training import optimizers


def _config(**optim):
  config = default_config.get_default_config()
  config.optim.update(optim)
  return config


def test_warmup_cosine_shape():
  schedule = optimizers.make_schedule(
      _config(schedule="warmup_cosine", learning_rate=0.03, warmup_steps=100),
      1000)
  lrs = np.array([schedule(s) for s in range(0, 1001, 50)])
  assert lrs[0] == 0.0
  np.testing.assert_allclose(schedule(50), 0.015, rtol=1e-6)  # linear warm-up
  np.testing.assert_allclose(schedule(100), 0.03, rtol=1e-6)  # peak
  np.testing.assert_allclose(schedule(550), 0.015, rtol=1e-5)  # cosine midpoint
  assert np.all(np.diff(lrs[2:]) <= 0)  # decays after the peak
  np.testing.assert_allclose(schedule(1000), 0.0, atol=1e-9)


def test_one_cycle_is_triangular():
  schedule = optimizers.make_schedule(
      _config(schedule="one_cycle", learning_rate=0.01), 1000)
  np.testing.assert_allclose(
      [schedule(s) for s in (0, 200, 400, 600, 800, 900, 1000)],
      [0.0, 0.005, 0.01, 0.01 * (1 + 1 / 20) / 2, 0.0005, 0.00025, 0.0],
      rtol=1e-5, atol=1e-9)


def test_schedule_errors():
  with pytest.raises(ValueError, match="unknown optim.schedule 'cyclic'"):
    optimizers.make_schedule(_config(schedule="cyclic"), 10)
  with pytest.raises(ValueError, match="warmup_steps"):
    optimizers.make_schedule(
        _config(schedule="warmup_cosine", warmup_steps=10), 10)
  with pytest.raises(ValueError, match="total_steps must be >= 1"):
    optimizers.make_schedule(_config(), 0)
  with pytest.raises(ValueError, match="unknown optim.name 'lamb'"):
    optimizers.make_optimizer(_config(name="lamb"), 10)


def test_sgd_momentum_and_clipping():
  tx = optimizers.make_optimizer(
      _config(name="sgd", schedule="constant", learning_rate=0.1,
              momentum=0.9, grad_clip_norm=1.0), 10)
  params = {"w": jnp.zeros((2, 2))}
  grads = {"w": jnp.full((2, 2), 10.0)}  # global norm 20 -> clipped to 1
  state = tx.init(params)
  updates, state = tx.update(grads, state, params)
  np.testing.assert_allclose(updates["w"], -0.1 * 0.5, rtol=1e-6)
  updates, state = tx.update(grads, state, params)
  np.testing.assert_allclose(updates["w"], -0.1 * 0.5 * 1.9, rtol=1e-6)


def test_adamw_decays_kernels_only():
  tx = optimizers.make_optimizer(
      _config(name="adamw", schedule="constant", learning_rate=0.1,
              weight_decay=0.5), 10)
  params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))}
  zero = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero, tx.init(params), params)
  np.testing.assert_allclose(updates["kernel"], -0.1 * 0.5, rtol=1e-6)
  np.testing.assert_allclose(updates["bias"], 0.0)


def test_sgd_weight_decay_is_l2_on_kernels():
  tx = optimizers.make_optimizer(
      _config(name="sgd", schedule="constant", learning_rate=0.1, momentum=0.0,
              weight_decay=0.01), 10)
  params = {"kernel": jnp.full((2, 2), 2.0), "bias": jnp.ones((2,))}
  zero = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero, tx.init(params), params)
  np.testing.assert_allclose(updates["kernel"], -0.1 * 0.01 * 2.0, rtol=1e-6)
  np.testing.assert_allclose(updates["bias"], 0.0)
  assert isinstance(tx, optax.GradientTransformation)
