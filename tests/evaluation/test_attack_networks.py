"""The learned attacks' networks: exact reformulations, pixel cells, training."""

import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from etcjax import encryption
from etcjax.evaluation.attacks import fitting
from etcjax.evaluation.attacks import itn_attack
from etcjax.evaluation.attacks import networks
from etcjax.evaluation.attacks import threat_model


def test_upsample_is_the_2x2_stride_2_transposed_convolution():
  x = jax.random.normal(jax.random.key(0), (2, 3, 4, 5))
  conv_t = nn.ConvTranspose(6, (2, 2), strides=(2, 2))
  params = conv_t.init(jax.random.key(1), x)["params"]
  # flax's transposed convolution applies its kernel spatially flipped.
  kernel = jnp.transpose(params["kernel"][::-1, ::-1], (2, 0, 1, 3))
  dense = {"Dense_0": {"kernel": kernel.reshape(5, 4 * 6),
                       "bias": jnp.tile(params["bias"], 4)}}
  got = networks.Upsample2x(6).apply({"params": dense}, x)
  np.testing.assert_allclose(got, conv_t.apply({"params": params}, x),
                             atol=1e-5)


def test_max_pool_2x2_matches_flax():
  x = jax.random.normal(jax.random.key(0), (2, 6, 8, 3))
  np.testing.assert_array_equal(
      networks.max_pool_2x2(x), nn.max_pool(x, (2, 2), strides=(2, 2)))


@pytest.mark.parametrize("cells", [1, 4])
def test_unet_on_pixel_cells_keeps_shape_and_range(cells):
  size = threat_model.TrainingSize(steps=1, batch_size=2, width=4, levels=2,
                                   space_to_depth=cells)
  module = networks.generator(size, (16, 24, 3))
  x = jax.random.uniform(jax.random.key(0), (2, 16, 24, 3), minval=-1)
  y, _ = jax.jit(module.init_with_output)(jax.random.key(1), x)
  assert y.shape == x.shape
  assert float(jnp.max(jnp.abs(y))) <= 1.0
  disc = networks.discriminator(size, (16, 24, 3))
  logits, _ = jax.jit(disc.init_with_output)(jax.random.key(2), x)
  assert logits.shape[0] == 2 and logits.shape[-1] == 1


def test_networks_refuse_images_that_do_not_fit_their_cells_and_levels():
  size = threat_model.TrainingSize(steps=1, batch_size=2, width=4, levels=3,
                                   space_to_depth=2)
  with pytest.raises(ValueError, match="multiples of 8, got 36x36"):
    networks.generator(size, (36, 36, 3))
  with pytest.raises(ValueError, match="multiples of 8"):
    networks.discriminator(size, (32, 20, 3))


def _itn_context(steps, batch_size, images=64):
  # The images differ only by a colour offset, so a network can lower the
  # loss by learning their mean alone.
  rng = np.random.default_rng(0)
  y, x = np.mgrid[0:32, 0:32]
  base = np.stack([y * 8, x * 8, (x + y) * 4], -1)
  plain = np.clip(base[None] + rng.integers(-20, 20, (images, 1, 1, 3)), 0,
                  255).astype(np.uint8)
  size = threat_model.TrainingSize(steps=steps, batch_size=batch_size, width=8,
                                   levels=2, learning_rate=3e-3, num_keys=4)
  plan = encryption.make_plan(bytes(32), "etc", (32, 32, 3))
  return threat_model.AttackContext(
      scheme="etc", block_size=16, steps=None, image_shape=(32, 32, 3),
      encrypted_shape=(32, 32, 3), representation=plan.representation,
      encrypted=np.asarray(encryption.apply(plan, plain[:5])),
      public_plain=plain, public_encrypted=plain[:0], training=size,
      progress=False)


def test_itn_training_lowers_the_loss():
  # Checks that training and its gradients work, not how strong the attack
  # is.
  _, _, losses = itn_attack.train(_itn_context(steps=60, batch_size=8))
  assert len(losses) == 60
  assert np.mean(losses[-10:]) < 0.6 * np.mean(losses[:5])


DATA_PARALLEL_SCRIPT = r"""
import jax
import numpy as np
import pytest
from evaluation import test_attack_networks as t
from etcjax.data import sharding
from etcjax.evaluation.attacks import itn_attack, networks

assert jax.device_count() == 4
all_devices = sharding.make_mesh()
one_device = sharding.make_mesh(jax.devices()[:1])
context = t._itn_context(steps=4, batch_size=8)
module, split, split_losses = itn_attack.train(context, all_devices)
for leaf in jax.tree.leaves(split):
  assert len(leaf.sharding.device_set) == 4 and leaf.sharding.is_fully_replicated
_, single, single_losses = itn_attack.train(context, one_device)
# Same batches, sums in another order.
np.testing.assert_allclose(split_losses, single_losses, rtol=1e-5)
for a, b in zip(jax.tree.leaves(split), jax.tree.leaves(single)):
  a, b = np.asarray(a), np.asarray(b)
  if a.ndim >= 2:
    assert np.abs(a - b).max() <= 1e-4 * np.abs(b).max() + 1e-6
  else:
    # Biases ahead of a GroupNorm get zero gradients up to rounding, which
    # Adam scales up to +-lr: they may differ by up to lr per step.
    assert np.abs(a - b).max() <= 3e-3 * 4
# 5 images over 4 devices: the last chunk is padded, the padding dropped.
images = context.encrypted
out = networks.predict(module, split, images, batch_size=2, mesh=all_devices)
assert out.shape == images.shape and out.dtype == np.uint8
ref = networks.predict(module, split, images, mesh=one_device)
assert np.abs(out.astype(int) - ref).max() <= 1
with pytest.raises(ValueError, match=r"batch size \(6, --train_batch\) must be a positive multiple of the number of devices \(4\)"):
  itn_attack.train(t._itn_context(steps=1, batch_size=6), all_devices)
print("DATA_PARALLEL_OK")
"""


def test_itn_trains_data_parallel_like_on_one_device():
  tests_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu", PYTHONPATH=tests_dir)
  result = subprocess.run([sys.executable, "-c", DATA_PARALLEL_SCRIPT],
                          env=env, capture_output=True, text=True, timeout=300,
                          cwd=os.path.dirname(tests_dir))
  assert result.returncode == 0 and "DATA_PARALLEL_OK" in result.stdout, (
      result.stdout + result.stderr[-3000:])


def _toy_fit(checkpoint_dir, steps, crash_at=None):
  """Least squares by SGD through `fitting.fit`, optionally crashing."""
  target = np.arange(4, dtype=np.float32)
  calls = []

  def next_batch(rng):
    calls.append(1)
    if len(calls) == crash_at:
      raise RuntimeError("preempted")
    return {"x": rng.normal(size=(4, 4)).astype(np.float32)}

  def step(state, batch):
    def loss_fn(w):
      return jnp.mean((batch["x"] @ w - batch["x"] @ target) ** 2)
    loss, grad = jax.value_and_grad(loss_fn)(state["w"])
    return {"w": state["w"] - 0.05 * grad}, {"loss": loss}

  state, history = fitting.fit(step, {"w": np.zeros(4, np.float32)}, next_batch,
                               steps, 4, seed=3, checkpoint_dir=checkpoint_dir,
                               checkpoint_every=3, progress=False)
  return np.asarray(state["w"]), history, len(calls)


def test_fit_resumes_an_interrupted_training_exactly(tmp_path):
  want, want_history, _ = _toy_fit(None, 10)
  folder = str(tmp_path / "ckpt")
  with pytest.raises(RuntimeError, match="preempted"):
    _toy_fit(folder, 10, crash_at=8)  # Saved after steps 3 and 6.
  got, history, batches = _toy_fit(folder, 10)
  assert batches == 4  # Steps 7-10 only.
  np.testing.assert_array_equal(got, want)
  assert history == want_history
  assert want_history[-1]["loss"] < 0.1 * want_history[0]["loss"]
